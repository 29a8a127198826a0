"""Tests for `rnnjax.fit` over several processes (JAX's multi-host path), on one machine.

Two processes on 127.0.0.1, 2 simulated CPU devices each, joined by
`jax.distributed.initialize` with gloo CPU collectives, train a tiny LSTM over a
mesh of all 4 devices, each process feeding its half of every global batch
(`tests/multihost_worker.py` is one such process). They are compared, step for
step, with one process on 4 simulated devices fed the whole batch; then two fresh
processes resume from the checkpoint both wrote into a shared `out_dir`. The
batches are drawn with NumPy, so the test checks each device's shard against the
global batch itself.

Three launches in all (the pair, the single process beside it, then the pair that
resumes), about 30 s on 2 cores. Skipped only if this jaxlib has no CPU
collectives.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import multihost_worker as worker

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 180  # per launch; a healthy one takes 5-10 s
# Four devices sum the batch in another grouping than two processes of two devices do.
TOL = {"rtol": 1e-5, "atol": 1e-6}
HALF = worker.STEPS // 2


def _has_cpu_collectives() -> bool:
  """Whether this jaxlib can run collectives between CPU processes (gloo over TCP)."""
  try:
    from jax._src.lib import _jax
  except ImportError:  # jaxlib before 0.6 named it xla_extension.
    from jax._src.lib import xla_extension as _jax
  return hasattr(_jax, "make_gloo_tcp_collectives")


pytestmark = pytest.mark.skipif(
    not _has_cpu_collectives(),
    reason="this jaxlib has no CPU collectives (gloo), which several CPU processes need")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  """The test's environment, with `devices` simulated CPU devices per process."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])}


def _launch(out: pathlib.Path, processes: int, phases: list[str],
            work: pathlib.Path | None = None) -> dict[str, subprocess.Popen]:
  """Starts `processes` workers (4 devices in all) writing into `work` (default `out`).

  Returns `{name: process}`; each one's stdout and stderr go to `out/<name>.out` and
  `out/<name>.err`.
  """
  port, procs = _free_port(), {}
  for p in range(processes):
    name = f"{'-'.join(phases)}-{processes}x-p{p}"
    with open(out / f"{name}.out", "w") as stdout, open(out / f"{name}.err", "w") as stderr:
      procs[name] = subprocess.Popen(
          [sys.executable, "-m", "tests.multihost_worker", str(work or out), str(p), str(processes),
           str(port), *phases], cwd=REPO, env=_env(4 // processes), stdout=stdout,
          stderr=stderr)
  return procs


def _wait(out: pathlib.Path, procs: dict[str, subprocess.Popen]) -> None:
  """Waits for every process; at the first failure or the timeout, kills the rest and fails."""
  deadline, failed, how = time.monotonic() + TIMEOUT_S, None, None
  try:
    while failed is None and any(p.poll() is None for p in procs.values()):
      failed = next((name for name, p in procs.items() if p.poll()), None)
      if failed is None and time.monotonic() > deadline:
        failed = next(name for name, p in procs.items() if p.poll() is None)
        how = f"did not finish within {TIMEOUT_S} s"
      time.sleep(0.05)
    failed = failed or next((name for name, p in procs.items() if p.returncode), None)
  finally:
    for p in procs.values():  # Only the processes started here, by their handles.
      if p.poll() is None:
        p.kill()
      p.wait()
  if failed is not None:
    how = how or f"exited with {procs[failed].returncode}"
    err = (out / f"{failed}.err").read_text()[-4000:]
    pytest.fail(f"worker {failed} {how}; its stderr ends with:\n{err}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs the workers: `(out, facts)`, facts[phase, processes, process] as each wrote them."""
  out = tmp_path_factory.mktemp("multihost")
  single = out / "single"
  single.mkdir()
  _wait(out, {**_launch(out, 2, ["full", "part"]), **_launch(out, 1, ["full"], single)})
  # Fresh processes: all they have is the checkpoint. Then a stop decided by process 1 alone.
  _wait(out, _launch(out, 2, ["resume", "stop"]))
  facts = {(phase, 2, p): json.loads((out / f"{phase}-p{p}.json").read_text())
           for phase in ("full", "part", "resume", "stop") for p in (0, 1)}
  facts["full", 1, 0] = json.loads((single / "full-p0.json").read_text())
  return out, facts


def _records(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def _loss(record: dict) -> float:
  return record["train/loss"]


def test_each_process_feeds_its_half_of_the_global_batch(runs):
  _, facts = runs
  xs = worker._global_batch(0)["xs"]  # The first step's global batch, [T, B, 2].
  q = worker.B // 4  # Examples per device.
  for p in (0, 1):  # Process p holds examples [4p, 4p + 4) on its two devices.
    batch = facts["full", 2, p]["batch"]
    assert batch["global_shape"] == list(xs.shape)
    shards = batch["shards"]
    assert [s["columns"] for s in shards] == [[2 * p * q, (2 * p + 1) * q],
                                             [(2 * p + 1) * q, (2 * p + 2) * q]]
    for s in shards:  # Each device holds its columns of the global batch.
      np.testing.assert_array_equal(np.array(s["data"], np.float32),
                                    xs[:, slice(*s["columns"])])
  devices = [s["device"] for p in (0, 1) for s in facts["full", 2, p]["batch"]["shards"]]
  assert len(set(devices)) == 4  # Each process's shards lie on its own two devices.


def test_two_processes_train_like_one_process_on_four_devices(runs):
  _, facts = runs
  one, p0, p1 = facts["full", 1, 0], facts["full", 2, 0], facts["full", 2, 1]
  assert len(one["losses"]) == worker.STEPS
  assert p0["losses"] == p1["losses"]  # Both processes see the same (replicated) loss.
  np.testing.assert_allclose(p0["losses"], one["losses"], **TOL)
  assert p0["params"] == p1["params"]  # The state stays replicated across processes.
  assert len(p0["params"]) == len(one["params"])
  for a, b in zip(p0["params"], one["params"], strict=True):
    np.testing.assert_allclose(np.array(a), np.array(b), **TOL)
  assert p0["step"] == one["step"] == worker.STEPS


def test_a_checkpoint_of_both_processes_resumes_exactly(runs):
  out, facts = runs
  full, part = facts["full", 2, 0], facts["part", 2, 0]
  # Both processes wrote into the step's directory (orbax names files by process).
  written = {p.name for p in (out / "part" / "checkpoint" / str(HALF)).rglob("*")}
  assert any("process_0" in name for name in written), sorted(written)
  assert any("process_1" in name for name in written), sorted(written)
  assert part["losses"] == full["losses"][:HALF]
  for p in (0, 1):
    resumed = facts["resume", 2, p]
    assert resumed["losses"] == full["losses"][HALF:]  # Bit for bit: it continues exactly.
    assert resumed["params"] == full["params"] and resumed["step"] == worker.STEPS
  records = _records(out / "part" / "metrics.jsonl")
  assert [r["step"] for r in records] == list(range(1, worker.STEPS + 1))
  assert [_loss(r) for r in records] == full["losses"]


def test_only_process_0_writes_metrics_and_progress(runs):
  out, facts = runs
  records = _records(out / "full" / "metrics.jsonl")  # Written by the pair into one out_dir.
  assert [r["step"] for r in records] == list(range(1, worker.STEPS + 1))  # Once each.
  assert [_loss(r) for r in records] == facts["full", 2, 0]["losses"]
  err0 = (out / "full-part-2x-p0.err").read_text()
  err1 = (out / "full-part-2x-p1.err").read_text()
  assert len([line for line in err0.splitlines() if "loss" in line]) >= 1, err0
  assert "loss" not in err1 and f"/{worker.STEPS}" not in err1, err1


def test_a_stop_asked_by_one_process_stops_every_process_at_the_same_step(runs):
  # Without the stop being shared, process 0 would wait forever in step 3's collectives.
  _, facts = runs
  for p in (0, 1):
    assert facts["stop", 2, p]["status"] == "stopped", facts["stop", 2, p]["message"]
    assert facts["stop", 2, p]["step"] == 2
    assert len(facts["stop", 2, p]["losses"]) == 2
  assert "another process" in facts["stop", 2, 0]["message"]
  assert "callbacks[0]" in facts["stop", 2, 1]["message"]
