"""Bar charts of benchmark rows: median time per contender, one panel per size and mode.

Reads the JSON lines that `bench_rnn.py --json-out` and `rnnjax bench --json-out`
write (or the stdout of `bench_rnn.py`: lines that are not JSON objects are
skipped) and writes one PNG. Each panel is one (cell, size) row and mode column;
bars are the median, whiskers the p25-p75 range, and rnnjax is drawn darker.

  python benchmarks/bench_rnn.py --quick --json-out quick.jsonl
  python benchmarks/plot_results.py quick.jsonl                  # -> quick.png
  python benchmarks/plot_results.py bench.jsonl --relative-to torch --out vs_torch.png

`--relative-to NAME` plots each contender's median over NAME's instead (below 1:
faster than NAME). Needs matplotlib (`pip install -e ".[plots]"`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

REFERENCE = "rnnjax"


def read_rows(paths: list[pathlib.Path]) -> list[dict]:
  """The benchmark rows in `paths`, in order; raises ValueError if there are none."""
  rows = []
  for path in paths:
    for line in path.read_text().splitlines():
      line = line.strip()
      if not line.startswith("{"):
        continue
      row = json.loads(line)
      if {"size", "mode", "contender", "median_ms"} <= row.keys():
        rows.append(row)
  if not rows:
    raise ValueError(f"no benchmark rows (JSON lines with size, mode, contender and median_ms) "
                     f"in {', '.join(map(str, paths))}")
  return rows


def plot(rows: list[dict], out: pathlib.Path, *, relative_to: str | None = None) -> None:
  """Writes the chart of `rows` to `out` (a PNG)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = list(dict.fromkeys((r.get("cell", "?"), r["size"]) for r in rows))
  modes = list(dict.fromkeys(r["mode"] for r in rows))
  fig, axes = plt.subplots(len(panels), len(modes), squeeze=False,
                           figsize=(4.2 * len(modes), 0.45 * 9 * len(panels) + 0.6))
  for i, (cell, size) in enumerate(panels):
    for j, mode in enumerate(modes):
      ax = axes[i][j]
      group = [r for r in rows if r.get("cell", "?") == cell and r["size"] == size
               and r["mode"] == mode]
      if not group:
        ax.set_axis_off()
        continue
      names = [r["contender"] for r in group]
      med = [r["median_ms"] for r in group]
      lo = [r["median_ms"] - r.get("p25", r["median_ms"]) for r in group]
      hi = [r.get("p75", r["median_ms"]) - r["median_ms"] for r in group]
      xlabel = "median ms (p25-p75)"
      if relative_to is not None:
        ref = next((r["median_ms"] for r in group if r["contender"] == relative_to), None)
        if ref is None:
          ax.set_title(f"{cell} {size} {mode}: no {relative_to}", fontsize=9)
          ax.set_axis_off()
          continue
        med, lo, hi = ([v / ref for v in vs] for vs in (med, lo, hi))
        xlabel = f"median / {relative_to}'s median"
        ax.axvline(1.0, color="gray", lw=0.8, ls="--")
      colors = ["tab:blue" if n == REFERENCE else "tab:cyan" if n.startswith("rnnjax")
                else "tab:gray" for n in names]
      ypos = range(len(names))
      ax.barh(ypos, med, xerr=[lo, hi], color=colors, capsize=2)
      ax.set_yticks(list(ypos), names, fontsize=8)
      ax.invert_yaxis()
      for y, v, h in zip(ypos, med, hi, strict=True):
        ax.text(v + h, y, f" {v:.3g}", va="center", fontsize=7)
      ax.set_xlabel(xlabel, fontsize=8)
      ax.margins(x=0.2)
      ax.set_title(f"{cell} B,T,I,H={size}, {mode}", fontsize=9)
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("inputs", nargs="+", type=pathlib.Path, metavar="JSONL",
                      help="files of benchmark rows")
  parser.add_argument("--out", type=pathlib.Path, default=None,
                      help="the PNG to write (default: the first input with suffix .png)")
  parser.add_argument("--relative-to", default=None, metavar="CONTENDER",
                      help="plot medians over this contender's (e.g. torch) instead of ms")
  args = parser.parse_args(argv)
  try:
    rows = read_rows(args.inputs)
  except (OSError, ValueError) as err:
    print(f"plot_results: error: {err}", file=sys.stderr)
    return 2
  names = {r["contender"] for r in rows}
  if args.relative_to is not None and args.relative_to not in names:
    print(f"plot_results: error: --relative-to {args.relative_to!r} is not a contender in the "
          f"rows; they hold {', '.join(sorted(names))}", file=sys.stderr)
    return 2
  out = args.out or args.inputs[0].with_suffix(".png")
  plot(rows, out, relative_to=args.relative_to)
  print(f"plot_results: {len(rows)} rows -> {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
