"""mkdocs hook: publishes `benchmarks/RESULTS.md` and its plots as pages of the site.

The benchmark record lives beside the scripts that produce it (`benchmarks/`), outside
`docs/`; this hook adds it to the site as `benchmarks/RESULTS.md`, with the images it links
(`benchmarks/results/*.png`), so the docs link to the one record instead of a copy.
"""

from __future__ import annotations

import pathlib

from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[1]
PUBLISHED = ("benchmarks/RESULTS.md", "benchmarks/results/*.png")


def on_files(files, config):
  for pattern in PUBLISHED:
    for path in sorted(ROOT.glob(pattern)):
      rel = path.relative_to(ROOT).as_posix()
      files.append(File.generated(config, rel, abs_src_path=str(path)))
  return files
