"""Tests for the metric writers: `JsonlWriter`, `TensorBoardWriter`, and `fit` feeding them.

The references are the files as read back independently: JSON lines with `json`, and
TensorBoard's event files record by record (the TFRecord framing, parsed by hand, and
tensorboardX's `Event` protocol buffer).
"""

import json
import math
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnnjax


def test_jsonl_writer_appends_one_flat_record_a_line(tmp_path):
  path = tmp_path / "sub" / "metrics.jsonl"
  writer = rnnjax.JsonlWriter(path)
  writer.write_scalars(1, {"train/loss": np.float32(0.5), "train/grad_norm": jnp.array(2.0)})
  writer.write_hparams({"lr": 0.1})  # Not a record of a step: not written.
  writer.write_scalars(2, {"val/rmse": float("nan")})
  assert path.read_text().count("\n") == 2  # Flushed as written, before close.
  writer.flush()
  writer.close()
  writer = rnnjax.JsonlWriter(path)  # Appends.
  writer.write_scalars(3, {"val/rmse": 1})
  writer.close()
  records = [json.loads(line) for line in path.read_text().splitlines()]
  assert records[0] == {"step": 1, "train/loss": 0.5, "train/grad_norm": 2.0}
  assert records[1]["step"] == 2 and math.isnan(records[1]["val/rmse"])
  assert records[2] == {"step": 3, "val/rmse": 1.0}


def _events(logdir):
  """Every `Event` of the event files under `logdir`, read frame by frame."""
  from tensorboardX.proto import event_pb2

  events = []
  for path in sorted(logdir.rglob("events.out.tfevents.*")):
    data, i = path.read_bytes(), 0
    while i < len(data):
      (length,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[i + 12:i + 12 + length])
      events.append(event)
      i += 12 + length + 4
  return events


def _scalars(logdir):
  """`[(step, tag, value)]` of the scalar summaries, in order."""
  return [(e.step, v.tag, v.simple_value) for e in _events(logdir) if e.HasField("summary")
          for v in e.summary.value if v.HasField("simple_value")]


def test_tensorboard_writer_writes_scalars_and_hparams(tmp_path):
  pytest.importorskip("tensorboardX")
  writer = rnnjax.TensorBoardWriter(tmp_path)
  writer.write_hparams({"lr": 0.1, "cell": "lstm", "hidden": 8, "dims": (1, 2)})
  writer.write_scalars(10, {"train/loss": 0.25, "train/grad_norm": 1.5})
  writer.write_scalars(20, {"val/rmse": 3.0})
  writer.close()
  assert _scalars(tmp_path) == [(10, "train/loss", 0.25), (10, "train/grad_norm", 1.5),
                                (20, "val/rmse", 3.0)]
  plugins = {v.metadata.plugin_data.plugin_name for e in _events(tmp_path)
             if e.HasField("summary") for v in e.summary.value}
  assert "hparams" in plugins
  hparams = b"".join(v.metadata.plugin_data.content for e in _events(tmp_path)
                     if e.HasField("summary") for v in e.summary.value
                     if v.metadata.plugin_data.plugin_name == "hparams")
  for name in (b"lr", b"cell", b"lstm", b"hidden", b"dims", b"(1, 2)"):
    assert name in hparams


def test_tensorboard_writer_without_tensorboardx_names_the_extra(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` now fails.
  with pytest.raises(ImportError, match=(
      r"rnnjax\.TensorBoardWriter needs tensorboardX, which is not installed\. Install the "
      r"optional extra: pip install 'rnnjax\[tensorboard\]'")):
    rnnjax.TensorBoardWriter(tmp_path)


def test_fit_writes_to_tensorboard_what_it_writes_to_metrics_jsonl(tmp_path):
  pytest.importorskip("tensorboardX")
  loss = lambda p, batch, key: jnp.mean((batch * p["w"] - 1.0) ** 2)
  opt = optax.sgd(0.1)
  state = rnnjax.train_state({"w": jnp.zeros(3)}, opt, jax.random.key(0))
  writer = rnnjax.TensorBoardWriter(tmp_path / "tb")
  rnnjax.fit(state, rnnjax.make_train_step(loss, opt), lambda step: jnp.ones(3) * (1 + step % 3),
             num_steps=12, log_every=4, eval_fn=lambda p: {"w0": p["w"][0]}, eval_every=6,
             out_dir=tmp_path / "run", writers=[writer], progress=False)
  writer.close()  # fit flushes the writers it is given, and never closes them.
  records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
             .splitlines()]
  expected = [(r["step"], k, np.float32(v)) for r in records for k, v in r.items() if k != "step"]
  assert [(s, k, np.float32(v)) for s, k, v in _scalars(tmp_path / "tb")] == expected
  assert {k for _, k, _ in expected} >= {"train/loss", "train/grad_norm", "val/w0"}
