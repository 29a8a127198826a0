"""Private library code: the public names are re-exported by `rnnjax/__init__.py`."""
