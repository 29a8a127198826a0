"""Bridges to other frameworks: `rnnjax.interop.pytorch` (PyTorch weights) and `.flax`.

Import the submodules directly; `rnnjax.interop.pytorch` does not need torch.
"""
