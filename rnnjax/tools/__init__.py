"""Tools that sit on top of the library: the benchmark harness and the run reports.

They are not part of the library itself: the command line (`rnnjax bench`,
`rnnjax train --diagnostics`), the scripts in `benchmarks/` and the examples use
them. Unlike the private library code in `rnnjax._src`, which never imports the
public package, they may `import rnnjax` and build on its public API.

Modules: `bench` (the harness behind `rnnjax bench` and `benchmarks/bench_rnn.py`),
`bench_peers` (the peer implementations it times: Flax, Equinox, Haiku, PyTorch),
`report` (gradient-flow diagnostics of a model, written as JSON and PNG), `plots`
(a run's `loss.png` and `forecast.png`).
"""
