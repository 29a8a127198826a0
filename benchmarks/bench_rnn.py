"""Training-workload speed of a one-layer LSTM/GRU: rnnjax against Flax, Equinox, Haiku, PyTorch.

Every contender is loaded with the same weights and checked against rnnjax's
outputs (to 1e-4; 3e-2 for bfloat16) before anything is timed. Three modes per contender: `fwd`
(outputs), `fwd_bwd` (gradient of `mean(ys**2)` w.r.t. params and xs) and `train`
(one Adam step; torch.optim.Adam for PyTorch). JAX functions are jitted, warmed
up and timed after `block_until_ready`; contenders are interleaved round-robin
within each repeat. `rnnjax` is the default (fused fast path; on a GPU with the
Pallas kernels where they fit), `rnnjax_scan` the fast path's pure-JAX loops, `rnnjax_generic`
the same with `fused=False` (plain autodiff through `lax.scan`), `rnnjax_bf16` the
fast path in mixed precision (`dtype=jnp.bfloat16`, float32 params), and
`matmul_floor` the same matrix products with nothing else.

  python benchmarks/bench_rnn.py --quick                       # smoke run, one small size
  python benchmarks/bench_rnn.py --cell gru --sizes 8,512,64,128 --repeats 20
  python benchmarks/bench_rnn.py --contenders rnnjax_bf16 --modes fwd train  # bf16 vs float32
  python benchmarks/bench_rnn.py --json-out bench.jsonl         # all sizes, rows also to a file
  python benchmarks/plot_results.py bench.jsonl                 # then a bar chart of the file

Sizes are `B,T,I,H`; `16,150,256,256` is DeepBench's H256/B16/T150. On CPU, XLA
uses every core; `--threads` (default: the cores this process may use) sets
PyTorch's. On a GPU, JAX runs at `highest` matmul precision and PyTorch with TF32
off, so that all contenders compute in full float32; `jax.experimental.rnn`'s
cuDNN LSTM joins as `jax_cudnn`. Prints one JSON line per measurement, then a
Markdown table per size and mode; `ratio` is rnnjax's time over the peer's.

The harness lives in the package (`rnnjax/tools/bench.py`, peers in
`rnnjax/tools/bench_peers.py`); `rnnjax bench` runs a quick version of this script.
"""

from __future__ import annotations

import argparse
import json

from rnnjax.tools import bench


def _arg(parse):
  def wrapped(text: str):
    try:
      return parse(text)
    except ValueError as e:
      raise argparse.ArgumentTypeError(str(e)) from None
  wrapped.__name__ = parse.__name__
  return wrapped


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
  parser.add_argument("--sizes", nargs="+", type=_arg(bench.parse_size),
                      default=[bench.parse_size(s) for s in bench.SIZES], metavar="B,T,I,H")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--threads", type=int, default=None,
                      help="PyTorch threads (default: the cores this process may use)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--contenders", type=_arg(bench.parse_contenders), default=None,
                      metavar="NAME,...",
                      help=f"a subset of {','.join(bench.CONTENDERS)} (default: all installed; "
                      "rnnjax always runs)")
  parser.add_argument("--modes", nargs="+", choices=bench.MODES, default=None,
                      help="the modes to time (default: all)")
  parser.add_argument("--quick", action="store_true",
                      help=f"smoke run: size {bench.QUICK_SIZE}, 5 repeats")
  parser.add_argument("--json-out", default=None, metavar="PATH")
  args = parser.parse_args()
  if args.quick:
    sizes, repeats = [bench.parse_size(bench.QUICK_SIZE)], 5
  else:
    sizes, repeats = args.sizes, args.repeats
  if repeats < 1:
    parser.error(f"--repeats must be positive, got {repeats}")
  threads = args.threads or bench.default_threads()
  header = bench.header(threads)
  print(f"# {header}", flush=True)
  try:
    rows = bench.run(args.cell, sizes, repeats=repeats, threads=threads, seed=args.seed,
                     names=args.contenders, json_out=args.json_out, modes=args.modes,
                     note=lambda line: print(line, flush=True),
                     on_row=lambda row: print(json.dumps(row), flush=True))
  except bench.MismatchError as e:
    raise SystemExit(f"bench_rnn: {e}") from None
  print(f"\n{header}")
  print(bench.table(rows))


if __name__ == "__main__":
  main()
