"""`rnnjax bench`: times rnnjax against Flax and the other installed peers."""

from __future__ import annotations

import argparse
import pathlib
import sys

from rnnjax.cli.errors import UsageError
from rnnjax.tools import bench


def run_bench(args: argparse.Namespace) -> int:
  """`rnnjax bench`: prints a header line and a Markdown table per size and mode."""
  if args.json_out:  # Refused before any compute; `bench.run` writes it row by row.
    try:
      pathlib.Path(args.json_out).write_text("")
    except OSError as err:
      raise UsageError(f"--json-out {args.json_out!r} cannot be written: "
                       f"{err.strerror or err}") from None
  sizes = args.sizes or [bench.parse_size(s) for s in (bench.SIZES if args.full
                                                       else (bench.CLI_SIZE,))]
  repeats = args.repeats or (20 if args.full else 5)
  threads = args.threads or bench.default_threads()
  header = bench.header(threads)
  print(f"# {header}", flush=True)
  names = ("all installed contenders" if args.contenders is None
           else ", ".join(dict.fromkeys(("rnnjax", *args.contenders))))
  print(f"rnnjax bench: {args.cell} at B,T,I,H={' '.join(','.join(map(str, s)) for s in sizes)}"
        f", {repeats} repeats, {names}", file=sys.stderr, flush=True)
  progress = lambda row: print(f"  {row['size']} {row['mode']} {row['contender']}: "
                               f"{row['median_ms']:.3f} ms", file=sys.stderr, flush=True)
  try:
    rows = bench.run(args.cell, sizes, repeats=repeats, threads=threads, seed=args.seed,
                     names=args.contenders, json_out=args.json_out,
                     note=lambda line: print(line, file=sys.stderr, flush=True), on_row=progress)
  except bench.MismatchError as err:
    print(f"rnnjax bench: error: {err}", file=sys.stderr)
    return 1
  print(bench.table(rows))
  if args.json_out:
    print(f"\nrnnjax bench: {len(rows)} rows written to {args.json_out}", file=sys.stderr)
  return 0
