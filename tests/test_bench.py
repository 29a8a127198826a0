"""Tests for the benchmark harness (`rnnjax/tools/bench.py`) and `rnnjax bench`.

Runs are tiny (B,T,I,H = 2,5,3,4, 2 repeats) and in-process, so that they share
JAX's caches; they check what the harness reports and that its same-function
check refuses a contender that computes something else, not the timings.
Compiling is most of a run's time, so the run with every contender times `fwd`
only, and all three modes run for `rnnjax` against `rnnjax_generic` alone.
"""

import contextlib
import functools
import importlib.util
import io
import json
import pathlib
import re
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax
from rnnjax import cli
from rnnjax.tools import bench, bench_peers
from tests import reference

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--sizes", "2,5,3,4", "--repeats", "2", "--threads", "1"]


@pytest.fixture(autouse=True)
def _standard_promotion():
  """The peers (optax, haiku, equinox) need standard dtype promotion, as the CLI runs."""
  with jax.numpy_dtype_promotion("standard"):
    yield


@pytest.fixture(autouse=True)
def _torch_threads():
  """`--threads` sets PyTorch's global thread count; put it back."""
  if importlib.util.find_spec("torch") is None:
    yield
    return
  import torch

  threads = torch.get_num_threads()
  yield
  torch.set_num_threads(threads)


def _main(args: list[str]) -> tuple[int, str, str]:
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.main(args)
  return code, out.getvalue(), err.getvalue()


def _installed(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


def _expected_contenders() -> list[str]:
  optional = {"equinox": "equinox", "haiku": "haiku", "torch": "torch"}
  names = ["rnnjax", "rnnjax_generic", "rnnjax_scan", "rnnjax_bf16", "flax", "equinox", "haiku",
           "jax_cudnn", "matmul_floor", "torch"]
  return [n for n in names if (n not in optional or _installed(optional[n]))
          and (n != "jax_cudnn" or jax.default_backend() == "gpu")]


def _bench(tmp_path_factory, args: list[str], modes: tuple[str, ...]):
  """`rnnjax bench TINY ARGS` timing `modes`: (stdout, stderr, JSON rows, JSON path)."""
  path = tmp_path_factory.mktemp("bench") / "rows.jsonl"
  with pytest.MonkeyPatch.context() as patch, jax.numpy_dtype_promotion("standard"):
    patch.setattr(bench, "MODES", modes)
    code, stdout, stderr = _main(["bench", *TINY, *args, "--json-out", str(path)])
  assert code == 0, stderr
  return stdout, stderr, [json.loads(line) for line in path.read_text().splitlines()], path


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
  """`rnnjax bench` with every installed contender, `fwd` only."""
  return _bench(tmp_path_factory, [], ("fwd",))


@pytest.fixture(scope="module")
def generic_run(tmp_path_factory):
  """`rnnjax bench --contenders rnnjax_generic` in all three modes."""
  return _bench(tmp_path_factory, ["--contenders", "rnnjax_generic"], bench.MODES)


def test_bench_reports_every_installed_contender(default_run):
  stdout, stderr, rows, _ = default_run
  expected = _expected_contenders()
  assert [r["contender"] for r in rows] == expected
  assert {(r["size"], r["mode"], r["cell"]) for r in rows} == {("2,5,3,4", "fwd", "lstm")}
  assert "### lstm B,T,I,H=2,5,3,4, fwd" in stdout
  assert all(r["repeats"] == 2 and r["median_ms"] > 0 and r["p25"] <= r["p75"] for r in rows)
  for r in rows:
    is_jax = r["contender"] != "torch"
    assert (r["compile_s"] is not None) == is_jax and (r["temp_MiB"] is not None) == is_jax
    assert r["baseline"] == "rnnjax"  # For the LSTM, every ratio is relative to rnnjax.
    assert re.search(rf"^\| {r['contender']} \| {r['median_ms']:.3f} \| ", stdout, re.M)
  assert stdout.count("1.00 (ref)") == 1
  for module in ("equinox", "haiku", "torch"):
    assert _installed(module) or f"# skip {module}" in stderr


def test_bench_times_rnnjax_against_its_generic_path_in_every_mode(generic_run):
  stdout, _, rows, _ = generic_run
  for mode in bench.MODES:
    group = {r["contender"]: r for r in rows if r["mode"] == mode}
    assert list(group) == ["rnnjax", "rnnjax_generic"], mode
    assert f"### lstm B,T,I,H=2,5,3,4, {mode}" in stdout
    ratio = f"{group['rnnjax']['median_ms'] / group['rnnjax_generic']['median_ms']:.2f}"
    g = group["rnnjax_generic"]
    assert (f"| rnnjax_generic | {g['median_ms']:.3f} | {g['p25']:.3f}-{g['p75']:.3f} | "
            f"{g['compile_s']} | {g['temp_MiB']} | {ratio} |") in stdout
  assert stdout.count("| rnnjax | ") == 3 and stdout.count("1.00 (ref)") == 3


def test_plot_results_draws_the_rows_of_a_run(default_run, tmp_path):
  pytest.importorskip("matplotlib")
  *_, path = default_run
  main = runpy.run_path(str(REPO / "benchmarks" / "plot_results.py"))["main"]
  out = tmp_path / "chart.png"
  with contextlib.redirect_stdout(io.StringIO()):
    assert main([str(path), "--out", str(out)]) == 0
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with contextlib.redirect_stderr(io.StringIO()) as err:
    assert main([str(path), "--relative-to", "nobody", "--out", str(out)]) == 2
  assert "'nobody' is not a contender" in err.getvalue()


def _off_by(delta: float):
  """A builder for a "flax" contender that computes rnnjax's outputs plus `delta`."""
  def build(cell_name, hidden, params):
    cell = rnnjax.lstm(hidden) if cell_name == "lstm" else rnnjax.gru(hidden)
    return bench_peers.JaxContender(
        "flax", params, lambda p, xs: rnnjax.unroll(cell, p, xs)[0] + delta)
  return build


def test_bench_refuses_a_contender_whose_outputs_differ(monkeypatch):
  monkeypatch.setitem(bench_peers.JAX_PEERS, "flax", _off_by(1e-3))
  timed = []
  monkeypatch.setattr(bench, "jax_calls", lambda *a: timed.append(a))
  code, stdout, stderr = _main(["bench", *TINY, "--contenders", "flax"])
  assert code == 1
  assert "flax's outputs differ from rnnjax's by 1.00e-03 (> 0.0001)" in stderr
  assert "bench_peers.py" in stderr and "B,T,I,H=2,5,3,4" in stderr
  assert "###" not in stdout and not timed  # Refused before anything was timed.


def test_bench_accepts_a_contender_within_the_tolerance(monkeypatch):
  monkeypatch.setitem(bench_peers.JAX_PEERS, "flax", _off_by(1e-5))
  contenders, torch_c, xs = bench.build("lstm", (2, 5, 3, 4), threads=1, seed=0,
                                        names=["flax"], note=lambda line: None)
  assert [c.name for c in contenders] == ["rnnjax", "flax"] and torch_c is None
  assert xs.shape == (5, 2, 3)


def test_the_same_function_check_names_shapes_nans_and_rnnjax_bugs():
  ys = np.zeros((5, 2, 4), np.float32)
  check = lambda outputs: bench.check_same_function(outputs, size=(2, 5, 3, 4), cell_name="lstm")
  check({"rnnjax": ("rnnjax", ys), "haiku": ("rnnjax", ys + 5e-5)})  # Within 1e-4.
  with pytest.raises(bench.MismatchError, match=r"haiku's outputs have shape \(5, 4, 2\)"):
    check({"rnnjax": ("rnnjax", ys), "haiku": ("rnnjax", ys.transpose(0, 2, 1))})
  with pytest.raises(bench.MismatchError, match="differ from rnnjax's by nan"):
    check({"rnnjax": ("rnnjax", ys), "equinox": ("rnnjax", ys * np.nan)})
  with pytest.raises(bench.MismatchError, match="rnnjax's own paths disagree"):
    check({"rnnjax": ("rnnjax", ys), "rnnjax_generic": ("rnnjax", ys + 1.0)})


def test_each_peer_is_compared_with_the_rnnjax_form_it_computes():
  assert bench._wanted("lstm", None) == [n for n in bench.CONTENDERS
                                         if n != "rnnjax_reset_before"]
  assert bench._wanted("lstm", ["torch"]) == ["rnnjax", "torch"]
  # Haiku's GRU is the "reset before" form, so its baseline is built with it.
  assert bench._wanted("gru", ["haiku"]) == ["rnnjax", "rnnjax_reset_before", "haiku"]
  params = rnnjax.gru(4).init(jax.random.key(0), 3)
  generic = bench_peers.JAX_PEERS["rnnjax_generic"]("gru", 4, params)
  before = bench_peers.JAX_PEERS["rnnjax_reset_before"]("gru", 4, params)
  assert (generic.name, generic.baseline) == ("rnnjax_generic", "rnnjax")
  assert (before.name, before.baseline) == ("rnnjax_reset_before", "rnnjax_reset_before")


def test_bfloat16_contenders_have_their_own_tolerance():
  ys = np.zeros((5, 2, 4), np.float32)
  check = lambda outputs: bench.check_same_function(outputs, size=(2, 5, 3, 4), cell_name="gru")
  near, far = (ys + 2e-2).astype(jnp.bfloat16), (ys + 5e-2).astype(jnp.bfloat16)
  check({"rnnjax": ("rnnjax", ys), "rnnjax_bf16": ("rnnjax", near)})  # Within 3e-2.
  with pytest.raises(bench.MismatchError, match=r"rnnjax_bf16's outputs differ from rnnjax's by "
                     r"5.00e-02 \(> 0.03\) at B,T,I,H=2,5,3,4, cell=gru.*precision.py"):
    check({"rnnjax": ("rnnjax", ys), "rnnjax_bf16": ("rnnjax", far)})
  with pytest.raises(bench.MismatchError, match=r"flax's outputs differ .* \(> 0.0001\)"):
    check({"rnnjax": ("rnnjax", ys), "flax": ("rnnjax", near)})  # Float32 peers keep 1e-4.


def test_the_bfloat16_contender_is_rnnjax_in_mixed_precision():
  assert bench.parse_contenders("rnnjax_bf16, torch") == ("rnnjax_bf16", "torch")
  assert bench._wanted("gru", ["rnnjax_bf16"]) == ["rnnjax", "rnnjax_bf16"]
  params = rnnjax.lstm(4).init(jax.random.key(0), 3)
  c = bench_peers.JAX_PEERS["rnnjax_bf16"]("lstm", 4, params)
  assert (c.name, c.baseline) == ("rnnjax_bf16", "rnnjax") and c.params is params
  xs = jax.random.normal(jax.random.key(1), (5, 2, 3))
  ys = c.forward(params, xs)
  zeros = np.zeros((2, 4))
  want, _ = reference.run_batch(functools.partial(reference.lstm_step, params), (zeros, zeros), xs)
  err = np.max(np.abs(np.asarray(ys, np.float64) - want))
  assert ys.dtype == jnp.bfloat16 and 0 < err < bench.TOLERANCES["rnnjax_bf16"]


def test_bench_times_bfloat16_against_float32_in_the_modes_asked(monkeypatch):
  rows = bench.run("gru", [(2, 5, 3, 4)], repeats=2, threads=1, names=["rnnjax_bf16"],
                   modes=("fwd",), note=lambda line: None)
  assert [(r["contender"], r["mode"], r["baseline"]) for r in rows] == [
      ("rnnjax", "fwd", "rnnjax"), ("rnnjax_bf16", "fwd", "rnnjax")]
  assert "| rnnjax_bf16 | " in bench.table(rows)
  # A bfloat16 contender that computes another function is refused before any timing.
  build = lambda cell_name, hidden, params: bench_peers.JaxContender(
      "rnnjax_bf16", params, lambda p, xs: rnnjax.unroll(
          rnnjax.gru(hidden, dtype=jnp.bfloat16), p, xs)[0] + 0.1)
  monkeypatch.setitem(bench_peers.JAX_PEERS, "rnnjax_bf16", build)
  code, stdout, stderr = _main(["bench", *TINY, "--cell", "gru", "--contenders", "rnnjax_bf16"])
  assert code == 1 and "###" not in stdout
  assert re.search(r"rnnjax_bf16's outputs differ from rnnjax's by (9\.\d\de-02|1\.\d\de-01) "
                   r"\(> 0\.03\)", stderr), stderr


@pytest.mark.parametrize("args, expected", [
    (["--sizes", "8,128,64"], "a size is B,T,I,H (four positive integers), got '8,128,64'"),
    (["--sizes", "8,0,64,128"], "got '8,0,64,128'"),
    (["--contenders", "flax,pytorch"], "unknown: pytorch"),
    (["--repeats", "0"], "must be positive, got 0"),
    (["--cell", "elman"], "invalid choice: 'elman'"),
])
def test_bad_bench_options_are_refused_by_the_parser(args, expected, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["bench", *args])
  assert exit_info.value.code == 2
  assert expected in capsys.readouterr().err


def test_an_unwritable_json_out_is_refused_before_any_compute(tmp_path, monkeypatch):
  monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("the benchmark started"))
  path = tmp_path / "missing" / "rows.jsonl"
  code, _, stderr = _main(["bench", "--json-out", str(path)])
  assert code == 2
  assert f"rnnjax bench: error: --json-out '{path}' cannot be written" in stderr


def test_full_means_the_five_sizes_and_twenty_repeats(monkeypatch):
  calls = []
  monkeypatch.setattr(bench, "run", lambda cell, sizes, **kw: calls.append((sizes, kw)) or [])
  assert _main(["bench", "--full"])[0] == 0
  assert _main(["bench"])[0] == 0
  assert _main(["bench", "--full", "--sizes", "1,2,3,4", "--repeats", "3"])[0] == 0
  (full, full_kw), (quick, quick_kw), (mixed, mixed_kw) = calls
  assert full == [bench.parse_size(s) for s in bench.SIZES] and full_kw["repeats"] == 20
  assert quick == [bench.parse_size(bench.CLI_SIZE)] and quick_kw["repeats"] == 5
  assert mixed == [(1, 2, 3, 4)] and mixed_kw["repeats"] == 3
