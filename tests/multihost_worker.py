"""One process of a run of `tests/test_multihost.py` (a script, not a test module).

`python -m tests.multihost_worker OUT PROCESS_ID NUM_PROCESSES PORT PHASE...` trains a
tiny LSTM on the adding problem with `rnnjax.fit` over a mesh of every device of every
process (`jax.make_mesh((jax.device_count(),), ("batch",))`). With NUM_PROCESSES > 1 it
first joins the others with `jax.distributed.initialize` on 127.0.0.1:PORT (gloo CPU
collectives); each process then feeds its own share of every global batch: process `p`
of `n` the examples `[p * B / n, (p + 1) * B / n)` of the global batch (NumPy, the same
global batch in every process). The test runs 2 processes with 2 simulated devices each,
and 1 process with 4 fed the whole batch.

Phases (run in order, in one process):

- `full`: `STEPS` steps into `OUT/full`, with progress lines and a metrics record per step;
- `part`: `STEPS // 2` steps into `OUT/part`, checkpointed at the end;
- `resume`: from another starting state, resumes `OUT/part` up to `STEPS`;
- `stop`: into `OUT/stop`; a callback of process 1 alone asks to stop after step 2.

Each phase writes `OUT/<phase>-p<PROCESS_ID>.json`: the loss of every step as this
process saw it, the final params, and where the first batch's shards lie.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rnnjax

T, B, H, STEPS = 6, 8, 4, 6


def _global_batch(step: int) -> dict[str, np.ndarray]:
  """The adding problem's global batch of `step` (`[T, B, ...]`), drawn with NumPy."""
  rng = np.random.default_rng(step)
  values = rng.random((T, B), dtype=np.float32)
  first, second = rng.integers(0, T // 2, B), rng.integers(T // 2, T, B)
  marker = np.zeros((T, B), np.float32)
  marker[first, np.arange(B)] = marker[second, np.arange(B)] = 1.0
  ys = np.zeros((T, B, 1), np.float32)
  ys[-1, :, 0] = np.sum(values * marker, axis=0)
  mask = np.zeros((T, B), np.float32)
  mask[-1] = 1.0
  return {"xs": np.stack([values, marker], axis=-1), "ys": ys, "mask": mask}


def _share(step: int, process: int, processes: int) -> dict[str, np.ndarray]:
  """This process's share of the global batch: a slice along the batch dimension (1)."""
  each = B // processes
  return {k: v[:, process * each:(process + 1) * each]
          for k, v in _global_batch(step).items()}


def _problem():
  """`(fresh_state(seed), train_step)`: a tiny LSTM and a loss that is a mean over the batch."""
  model = rnnjax.sequence_model(rnnjax.lstm(H), input_size=2, output_size=1)
  opt = optax.adam(1e-2)

  def loss(params, batch, key):
    del key
    preds, _ = model.apply(params, batch["xs"])
    err = jnp.sum((preds - batch["ys"]) ** 2, axis=-1)
    return jnp.sum(err * batch["mask"]) / jnp.sum(batch["mask"])  # A mean over the global batch.

  def state(seed):
    return rnnjax.train_state(model.init(jax.random.key(seed)), opt, jax.random.key(seed + 1))

  return state, rnnjax.make_train_step(loss, opt)


def _shard_facts(x: jax.Array) -> dict:
  """This process's shards of a batch array: which examples (columns) and their values."""
  return {"global_shape": list(x.shape), "shards": [
      {"device": s.device.id, "columns": [s.index[1].start, s.index[1].stop],
       "data": np.asarray(s.data).tolist()} for s in x.addressable_shards]}


def main(out: pathlib.Path, process: int, processes: int, port: int, phases: list[str]) -> None:
  if processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=processes,
                               process_id=process, initialization_timeout=60,
                               heartbeat_timeout_seconds=30)

  assert jax.process_count() == processes and jax.device_count() == 4, jax.devices()
  mesh = jax.make_mesh((jax.device_count(),), ("batch",))
  fresh_state, train_step = _problem()
  for phase in phases:
    facts: dict = {"losses": [], "process_index": jax.process_index()}

    def spied(state, batch, facts=facts):
      if "batch" not in facts:
        facts["batch"] = _shard_facts(batch["xs"])
      new_state, metrics = train_step(state, batch)
      facts["losses"].extend(np.asarray(metrics["loss"]).reshape(-1).tolist())
      return new_state, metrics

    # `stop`: a callback of process 1 alone asks to stop after step 2; every process must.
    kw = {"full": {"num_steps": STEPS, "progress": True},
          "part": {"num_steps": STEPS // 2, "progress": False},
          "resume": {"num_steps": STEPS, "progress": False, "resume": True},
          "stop": {"num_steps": STEPS, "progress": False,
                   "callbacks": [lambda step, state, metrics: process == 1 and step == 2]},
          }[phase]
    result = rnnjax.fit(fresh_state(5 if phase == "resume" else 0), spied,
                        lambda step: _share(step, process, processes), mesh=mesh,
                        out_dir=out / ("part" if phase in ("part", "resume") else phase),
                        log_every=1, **kw)
    assert result.status == ("stopped" if phase == "stop" else "completed"), result.message
    facts["status"], facts["message"] = result.status, result.message
    facts["step"] = int(result.state.step)
    facts["params"] = [np.asarray(x).tolist()
                       for x in jax.tree_util.tree_leaves(result.state.params)]
    (out / f"{phase}-p{process}.json").write_text(json.dumps(facts))
  print(f"worker {process}: done", file=sys.stderr, flush=True)


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
       sys.argv[5:])
