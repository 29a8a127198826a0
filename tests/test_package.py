"""The package as a whole: its import, its lazy submodules, `py.typed`, and the size rules.

The size rules are the house's (../shared/STYLE.md, issue 13): no module of the package over
400 lines, no function over 80 lines of code (from `def` to its end, nested functions
included; the docstring, blank lines and comment-only lines not counted). Private library
code (`rnnjax/_src`) never imports the public package.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rnnjax"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _run(code: str) -> str:
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False, cwd=ROOT)
  assert result.returncode == 0, result.stderr
  return result.stdout.strip()


def test_submodules_are_lazy_attributes():
  out = _run(
      "import sys, rnnjax\n"
      "names = ('rnnjax.tasks', 'rnnjax.interop', 'rnnjax.diagnostics', 'rnnjax.interop.pytorch',\n"
      "         'orbax.checkpoint', 'flax', 'torch', 'matplotlib')\n"
      "print(sorted(n for n in names if n in sys.modules))\n"
      "print(rnnjax.tasks.get_task('adding').name, rnnjax.diagnostics.record.__name__,\n"
      "      rnnjax.interop.pytorch.from_torch.__name__, rnnjax.interop.flax.RNN.__name__)\n"
      "print('tasks' in dir(rnnjax), 'pytorch' in dir(rnnjax.interop))\n")
  assert out.splitlines() == ["[]", "adding record from_torch RNN", "True True"]


def test_unknown_attribute_is_an_attribute_error():
  import rnnjax

  with pytest.raises(AttributeError, match="has no attribute 'engines'"):
    rnnjax.engines  # noqa: B018
  with pytest.raises(AttributeError, match="has no attribute 'haiku'"):
    rnnjax.interop.haiku  # noqa: B018


def test_every_public_name_is_exported_and_exists():
  import rnnjax

  for name in rnnjax.__all__:
    assert getattr(rnnjax, name) is not None, name
  assert rnnjax.__version__.count(".") == 2


def test_py_typed_is_shipped():
  assert (PACKAGE / "py.typed").exists()
  assert '"rnnjax" = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()


def _code_lines(node: ast.AST, lines: list[str]) -> int:
  skip: set[int] = set()
  body = node.body
  if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
      and isinstance(body[0].value.value, str)):
    skip = set(range(body[0].lineno, body[0].end_lineno + 1))
  return sum(1 for i in range(node.lineno, node.end_lineno + 1)
             if i not in skip and lines[i - 1].strip()
             and not lines[i - 1].strip().startswith("#"))


def test_modules_and_functions_stay_small():
  too_big = []
  for path in MODULES:
    text = path.read_text()
    lines = text.splitlines()
    rel = path.relative_to(ROOT)
    if len(lines) > MAX_MODULE_LINES:
      too_big.append(f"{rel}: {len(lines)} lines (limit {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        n = _code_lines(node, lines)
        if n > MAX_FUNCTION_LINES:
          too_big.append(f"{rel}:{node.lineno} {node.name}: {n} lines of code "
                         f"(limit {MAX_FUNCTION_LINES})")
  assert not too_big, "\n".join(too_big)


def test_the_size_rule_counts_nested_functions_and_skips_docstrings():
  body = "\n".join(f"    x{i} = {i}" for i in range(79))
  source = f'def outer():\n  """Doc.\n\n  More doc.\n  """\n  # note\n\n  def inner():\n{body}\n'
  node = ast.parse(source).body[0]
  assert _code_lines(node, source.splitlines()) == 81  # def outer, def inner, 79 statements.


def test_private_code_never_imports_the_public_package():
  offenders = []
  for path in sorted((PACKAGE / "_src").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        names = [node.module] if node.module != "rnnjax" else [
            f"rnnjax.{a.name}" for a in node.names]
      else:
        continue
      for name in names:
        if name == "rnnjax" or (name.startswith("rnnjax.") and not name.startswith("rnnjax._src")):
          offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
  assert not offenders, "\n".join(offenders)


def test_every_package_directory_has_an_init_so_a_wheel_ships_it():
  # setuptools' find_packages (pyproject.toml) skips a directory without __init__.py, so a
  # non-editable install would lack it: rnnjax/_src once had none.
  dirs = {p.parent for p in MODULES}
  assert sorted(d.relative_to(ROOT).as_posix() for d in dirs
                if not (d / "__init__.py").exists()) == []
