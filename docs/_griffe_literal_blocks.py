"""A griffe extension: reST literal blocks (`text::` + an indented block) become code blocks.

rnnjax's docstrings follow JAX's: a type signature, equations or a reference loop follow a
paragraph ending in `::`, indented, as `help()` shows them well. Markdown reads such a block
as a paragraph, so at docs-build time this turns each into a fenced block (```python when it
parses as Python, ```text otherwise) and leaves one ":" at the end of the paragraph.
"""

from __future__ import annotations

import ast
import re
import textwrap

import griffe

_BLOCK = re.compile(r"::\n\n((?:[ \t]+\S.*\n|[ \t]*\n)+)")


def _fence(match: re.Match) -> str:
  body = textwrap.dedent(match.group(1)).strip("\n")
  try:
    ast.parse(body)
    lang = "python"
  except SyntaxError:
    lang = "text"
  return f":\n\n```{lang}\n{body}\n```\n\n"


def literal_blocks_to_fences(text: str) -> str:
  return _BLOCK.sub(_fence, text if text.endswith("\n") else text + "\n").rstrip("\n")


class LiteralBlocks(griffe.Extension):
  def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
    if obj.docstring is not None and "::\n" in obj.docstring.value:
      obj.docstring.value = literal_blocks_to_fences(obj.docstring.value)
