"""Tests for data-parallel training: `rnnjax.fit(..., mesh=...)`.

XLA fixes the number of devices when JAX starts, so the multi-device checks run in
one subprocess with 4 simulated CPU devices (`XLA_FLAGS=
--xla_force_host_platform_device_count=4`): `python -m tests.test_sharding OUT` runs
`_child` below, which trains a small LSTM on the adding problem without a mesh, on
all 4 devices (fed JAX arrays) and on 2 of them (fed NumPy arrays, 5 steps per call),
stops and resumes, and writes what the tests here check into OUT. Argument errors
are checked in-process, on a mesh of the one device.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

import rnnjax
from rnnjax.tasks.synthetic import adding_batch

REPO = pathlib.Path(__file__).resolve().parents[1]
T, B, H, STEPS = 10, 8, 8, 20
# Data-parallel runs sum the batch in another order than one device does.
TOL = {"rtol": 1e-5, "atol": 1e-6}


# ---- The problem, shared by the child process and the in-process tests ----

MODEL = rnnjax.sequence_model(rnnjax.lstm(H), input_size=2, output_size=1)
OPT = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
# Time-first arrays split on dimension 1, per-sequence weights on 0; the scalar is copied.
BATCH_DIM = {"seq": 1, "weight": 0, "scale": None}


def _data(step):
  """The adding problem, plus a weight per sequence ([B]) and a scalar."""
  key = jax.random.fold_in(jax.random.key(7), step)
  return {"seq": adding_batch(key, B, T),
          "weight": jax.random.uniform(jax.random.fold_in(key, 1), (B,), jnp.float32, 0.5, 1.5),
          "scale": jnp.float32(2.0)}


DATA = jax.jit(_data)


def _host_data(step):
  """The same batches as NumPy arrays, as a data loader gives them (placed another way)."""
  return jax.tree_util.tree_map(np.asarray, DATA(step))


def _loss(params, batch, key):
  del key
  seq = batch["seq"]
  preds, _ = MODEL.apply(params, seq["xs"])
  w = seq["mask"] * batch["weight"]  # [T, B]
  err = jnp.sum((preds - seq["ys"]) ** 2, axis=-1)
  return batch["scale"] * jnp.sum(err * w) / jnp.sum(w)


STEP1 = rnnjax.make_train_step(_loss, OPT)
STEP5 = rnnjax.make_train_step(_loss, OPT, steps_per_call=5)


def _fresh_state(seed=0):
  return rnnjax.train_state(MODEL.init(jax.random.key(seed)), OPT, jax.random.key(seed + 1))


# ---- The child: 4 simulated devices ----

def _shards(x):
  return {"shapes": sorted(list(s.data.shape) for s in x.addressable_shards),
          "devices": len(x.sharding.device_set), "replicated": x.sharding.is_fully_replicated}


def _kernel_facts(mesh):
  """Whether the fast path's C++ kernel is in the compiled gradient: on one device, with the
  batch split over `mesh` by XLA (it cannot split a custom call: the kernel must stay out),
  and inside `shard_map` (each device runs its own rows: the kernel stays)."""
  from jax.sharding import NamedSharding, PartitionSpec

  from rnnjax._src import cpu_kernels
  cell = rnnjax.lstm(H)
  params = cell.init(jax.random.key(0), 2)
  xs = jnp.ones((T, B, 2))
  split = jax.device_put(xs, NamedSharding(mesh, PartitionSpec(None, "batch")))
  loss = lambda p, x: jnp.sum(rnnjax.unroll(cell, p, x)[0] ** 2)
  mapped = jax.shard_map(lambda p, x: rnnjax.unroll(cell, p, x)[0], mesh=mesh,
                         in_specs=(PartitionSpec(), PartitionSpec(None, "batch")),
                         out_specs=PartitionSpec(None, "batch"))
  hlo = {"one": jax.jit(jax.grad(loss)).lower(params, xs),
         "split": jax.jit(jax.grad(loss)).lower(params, split),
         "shard_map": jax.jit(mapped).lower(params, split)}
  return {"built": cpu_kernels.available(),
          **{k: "rnnjax_lstm" in v.compile().as_text() for k, v in hlo.items()}}


def _child(out):
  assert jax.device_count() == 4, jax.devices()
  mesh4 = jax.make_mesh((4,), ("batch",))  # Explicit axes: fit uses them as Auto.
  mesh2 = Mesh(np.array(jax.devices()[:2]), ("batch",))  # Auto axes, 2 of the 4 devices.
  facts, params = {}, {}

  def run(name, step_fn, *, mesh=None, spc=1, seed=0, data=DATA, **kw):
    """`fit`, recording each step's loss and where the first call's state and batch lie."""
    seen = facts.setdefault(name, {"losses": []})

    def spied(state, batch):
      if "batch" not in seen:
        seen["batch"] = jax.tree_util.tree_map(_shards, batch)
        seen["state_in"] = [_shards(x) for x in jax.tree_util.tree_leaves(state)]
      new_state, metrics = step_fn(state, batch)
      seen["losses"].extend(np.asarray(metrics["loss"]).reshape(-1).tolist())
      return new_state, metrics

    result = rnnjax.fit(_fresh_state(seed), spied, data, num_steps=kw.pop("num_steps", STEPS),
                        steps_per_call=spc, progress=False, mesh=mesh,
                        batch_dim=BATCH_DIM if mesh is not None else 1, **kw)
    assert result.status == "completed", result.message
    seen["state_out"] = [_shards(x) for x in jax.tree_util.tree_leaves(result.state)]
    params[name] = [np.asarray(x) for x in jax.tree_util.tree_leaves(result.state.params)]

  run("one", STEP1)
  run("four", STEP1, mesh=mesh4)
  run("two", STEP5, mesh=mesh2, spc=5, data=_host_data)
  # Stop at step 10, then resume from another state, on the 4 devices and on 2 of them
  # (the latter 5 steps per call: the compiled step of "two" serves).
  ckpt = {"checkpoint_every": 10, "log_every": 1}
  run("part", STEP1, mesh=mesh4, num_steps=10, out_dir=out / "part", **ckpt)
  shutil.copytree(out / "part", out / "part_on_2")
  run("part", STEP1, mesh=mesh4, out_dir=out / "part", resume=True, seed=5, **ckpt)
  run("part_on_2", STEP5, mesh=mesh2, spc=5, out_dir=out / "part_on_2", resume=True, seed=5,
      **ckpt)

  six = jax.tree_util.tree_map(np.asarray, DATA(0))  # NumPy: nothing to compile.
  six = {**six, "seq": {k: v[:, :6] for k, v in six["seq"].items()}, "weight": np.ones(6)}
  try:
    rnnjax.fit(_fresh_state(), STEP1, lambda step: six, num_steps=1, mesh=mesh4,
               batch_dim=BATCH_DIM, progress=False)
  except ValueError as err:
    facts["indivisible"] = str(err)

  facts["kernel"] = _kernel_facts(mesh2)
  np.savez(out / "params.npz", **{f"{name}/{i:03d}": x for name, leaves in params.items()
                                  for i, x in enumerate(leaves)})
  (out / "facts.json").write_text(json.dumps(facts))


@pytest.fixture(scope="module")
def child(tmp_path_factory):
  """Runs `_child` in a subprocess with 4 simulated devices: `(out_dir, facts, params)`."""
  out = tmp_path_factory.mktemp("sharding")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-m", "tests.test_sharding", str(out)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  params = {}
  with np.load(out / "params.npz") as f:
    for key in sorted(f.files):
      params.setdefault(key.split("/")[0], []).append(f[key])
  return out, json.loads((out / "facts.json").read_text()), params


def _assert_close(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_allclose(x, y, **TOL)


def test_four_devices_train_like_one(child):
  _, facts, params = child
  one, four = facts["one"]["losses"], facts["four"]["losses"]
  assert len(one) == STEPS and one[-1] < one[0] / 2
  np.testing.assert_allclose(four, one, **TOL)
  _assert_close(params["four"], params["one"])


def test_two_of_four_devices_with_several_steps_per_call(child):
  _, facts, params = child
  np.testing.assert_allclose(facts["two"]["losses"], facts["one"]["losses"], **TOL)
  _assert_close(params["two"], params["one"])
  batch = facts["two"]["batch"]  # Batches of 5 steps, [5, T, B, ...], split on B.
  assert batch["seq"]["xs"] == {"shapes": [[5, T, B // 2, 2]] * 2, "devices": 2,
                                "replicated": False}
  assert batch["weight"]["shapes"] == [[5, B // 2]] * 2
  assert all(x["replicated"] and x["devices"] == 2 for x in facts["two"]["state_out"])


def test_state_is_replicated_and_the_batch_split(child):
  _, facts, _ = child
  four = facts["four"]
  for where in ("state_in", "state_out"):
    for leaf in four[where]:
      assert leaf["replicated"] and leaf["devices"] == 4, (where, leaf)
  batch = four["batch"]
  assert batch["seq"]["xs"] == {"shapes": [[T, B // 4, 2]] * 4, "devices": 4,
                                "replicated": False}
  assert batch["seq"]["mask"]["shapes"] == [[T, B // 4]] * 4
  assert batch["weight"]["shapes"] == [[B // 4]] * 4
  assert batch["scale"] == {"shapes": [[]] * 4, "devices": 4, "replicated": True}
  assert all(x["devices"] == 1 for x in facts["one"]["state_out"])


def test_kernels_stay_out_of_programs_xla_partitions(child):
  kernel = child[1]["kernel"]
  if not kernel["built"]:
    pytest.skip("the C++ kernel is not built here")
  assert kernel == {"built": True, "one": True, "split": False, "shard_map": True}


def test_resume_under_a_mesh_is_exact(child):
  out, facts, params = child
  for a, b in zip(params["part"], params["four"], strict=True):
    np.testing.assert_array_equal(a, b)
  assert facts["part"]["losses"] == facts["four"]["losses"]
  records = [json.loads(line) for line in (out / "part" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == list(range(1, STEPS + 1))
  assert [r["train/loss"] for r in records] == facts["four"]["losses"]


def test_resume_on_another_number_of_devices(child):
  _, facts, params = child
  _assert_close(params["part_on_2"], params["one"])
  np.testing.assert_allclose(facts["part_on_2"]["losses"], facts["one"]["losses"][10:], **TOL)
  for leaf in facts["part_on_2"]["state_in"]:  # Restored from 4 devices onto 2.
    assert leaf["replicated"] and leaf["devices"] == 2, leaf


def test_batch_size_not_divisible_by_the_devices(child):
  _, facts, _ = child
  message = facts["indivisible"]
  assert message.startswith(
      "rnnjax.fit: the batch size must be divisible by the 4 devices on mesh axis 'batch'; "
      "got 6 examples in batch['seq']['mask'] (shape (10, 6), batch_dim=1)"), message
  assert "multiple of 4" in message


# ---- In-process: one device ----

@pytest.fixture
def _standard_promotion():
  """Optax's own code mixes Python floats and int32 counts, which strict promotion refuses."""
  with jax.numpy_dtype_promotion("standard"):
    yield


MESH1 = Mesh(np.array(jax.devices()[:1]), ("batch",))


@pytest.mark.usefixtures("_standard_promotion")
@pytest.mark.parametrize("data", [DATA, _host_data], ids=["jax", "numpy"])
def test_a_mesh_of_one_device_changes_nothing(data):
  step = rnnjax.make_train_step(_loss, OPT, donate=False)
  plain = rnnjax.fit(_fresh_state(), step, DATA, num_steps=3, progress=False)
  meshed = rnnjax.fit(_fresh_state(), step, data, num_steps=3, progress=False, mesh=MESH1,
                      batch_dim=BATCH_DIM)
  for a, b in zip(jax.tree_util.tree_leaves(plain.state), jax.tree_util.tree_leaves(meshed.state),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  for leaf in jax.tree_util.tree_leaves(meshed.state):
    assert leaf.sharding.mesh.axis_names == ("batch",) and leaf.sharding.is_fully_replicated


@pytest.mark.usefixtures("_standard_promotion")
@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"mesh": "cpu"}, TypeError, r"rnnjax\.fit: `mesh` must be a jax\.sharding\.Mesh or None, "
     r"got str"),
    ({"mesh": MESH1, "batch_axis": "data"}, ValueError,
     r"`batch_axis` must name an axis of `mesh`, one of \('batch',\); got batch_axis='data'"),
    ({"mesh": MESH1}, ValueError,
     r"batch\['weight'\] has shape \(8,\), which has no dimension batch_dim=1\. Pass"),
    ({"mesh": MESH1, "batch_dim": {"seq": 1}}, ValueError,
     r"`batch_dim` must be an int, None, or a pytree with the structure of the batch"),
    ({"mesh": MESH1, "batch_dim": {"seq": 1, "weight": 0.0, "scale": None}}, TypeError,
     r"`batch_dim` for batch\['weight'\] must be an int or None, got 0\.0 of type float"),
])
def test_argument_errors(kwargs, error, match):
  with pytest.raises(error, match=match):
    rnnjax.fit(_fresh_state(), STEP1, DATA, num_steps=1, progress=False, **kwargs)


if __name__ == "__main__":
  _child(pathlib.Path(sys.argv[1]))
