"""Every ```python block of the README runs as written."""

import pathlib
import re

import jax
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
  with jax.numpy_dtype_promotion("standard"):
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})


def test_readme_has_code():
  assert BLOCKS
