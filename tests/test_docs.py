"""The documentation: every ```python block of docs/*.md runs, and the site builds strictly.

The blocks of one page run in order in one namespace, as a reader would run them in a
notebook; each page starts from an empty namespace. `mkdocs build --strict` fails on a
broken link, a missing anchor, an unresolved API reference or a docstring mkdocstrings
cannot parse.
"""

import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md"))


def python_blocks(page: pathlib.Path) -> list[str]:
  return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)],
                         ids=lambda p: p.relative_to(DOCS).as_posix())
def test_page_code_runs(page, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # Blocks that write files write them here.
  namespace = {"__name__": "__docs__"}
  with jax.numpy_dtype_promotion("standard"):
    for i, block in enumerate(python_blocks(page)):
      exec(compile(block, f"{page.relative_to(ROOT)} block {i}", "exec"), namespace)


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
  nav = re.findall(r"([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M)
  assert nav, "mkdocs.yml has no nav"
  pages = {p.relative_to(DOCS).as_posix() for p in PAGES}
  published = {n for n in nav if n.startswith("benchmarks/")}  # Added by docs/_hooks.py.
  assert set(nav) - published <= pages, sorted(set(nav) - published - pages)
  assert pages <= set(nav), sorted(pages - set(nav))


def test_site_builds_strictly(tmp_path):
  pytest.importorskip("mkdocstrings_handlers.python", reason="needs the `docs` extra")
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
  result = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False, env=env)
  assert result.returncode == 0, result.stdout + result.stderr
  assert (tmp_path / "site" / "api" / "index.html").exists()


def test_the_api_reference_documents_every_public_name():
  import importlib

  documented = set(re.findall(r"^::: ([\w.]+)\s*$",
                              "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md")),
                              flags=re.M))
  missing = []
  for module_name in ("rnnjax", "rnnjax.tasks", "rnnjax.interop.flax", "rnnjax.interop.pytorch",
                      "rnnjax.interop.equinox", "rnnjax.diagnostics"):
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    missing += [f"{module_name}.{n}" for n in names if f"{module_name}.{n}" not in documented]
  assert not missing, missing


def test_literal_blocks_become_fenced_code_in_the_api_reference():
  pytest.importorskip("griffe", reason="needs the `docs` extra")
  import importlib.util

  spec = importlib.util.spec_from_file_location("ext", DOCS / "_griffe_literal_blocks.py")
  ext = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(ext)
  doc = ("Loop::\n\n  for x in xs:\n    y = f(x)\n\nEquations::\n\n  h' = tanh(x)\n\n"
         "Args:\n  x: an input.")
  assert ext.literal_blocks_to_fences(doc) == (
      "Loop:\n\n```python\nfor x in xs:\n  y = f(x)\n```\n\n"
      "Equations:\n\n```text\nh' = tanh(x)\n```\n\nArgs:\n  x: an input.")
