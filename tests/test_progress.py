"""Tests for `rnnjax.ProgressBar`: a bar on a (pseudo-)terminal, plain lines elsewhere.

The reference is `metrics.jsonl` of the same run: the loss, the validation metric and
the steps the display shows must be those the run recorded.
"""

import fcntl
import io
import json
import os
import pty
import re
import struct
import termios
import threading

import jax
import jax.numpy as jnp
import optax
import pytest

import rnnjax

OPT = optax.sgd(0.1)
STEP = rnnjax.make_train_step(lambda p, b, k: jnp.mean((b * p["w"] - 1.0) ** 2), OPT)
UNITS = {"loss": "nats", "val/w0": "metres"}


def _fit(tmp_path, bar, **kw):
  state = rnnjax.train_state({"w": jnp.zeros(3)}, OPT, jax.random.key(0))
  kw = {"num_steps": 12, "log_every": 2, "eval_fn": lambda p: {"w0": p["w"][0]},
        "eval_every": 3, "out_dir": tmp_path, "progress": bar, **kw}
  return rnnjax.fit(state, STEP, lambda step: jnp.ones(3) * (1 + step % 3), **kw)


def _records(tmp_path):
  return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_off_a_terminal_it_prints_one_plain_line_per_step_with_records(tmp_path):
  stream = io.StringIO()
  _fit(tmp_path, rnnjax.ProgressBar(UNITS, stream=stream))
  lines = stream.getvalue().splitlines()
  records = _records(tmp_path)
  steps = sorted({r["step"] for r in records})
  assert [int(re.match(r"step +(\d+)/12  ", line)[1]) for line in lines] == steps
  loss = w0 = None
  for step, line in zip(steps, lines, strict=True):
    for r in records:
      if r["step"] == step:
        loss = r.get("train/loss", loss)
        w0 = r.get("val/w0", w0)
    expected = f"loss {loss:.5g} nats" if loss is not None else None
    assert expected is None or f"  {expected}  " in line, line
    assert re.search(r"  (\?|\d+\.\d) steps/s  ETA (\?|\d+s)", line), line
    assert (w0 is None) == ("val/w0" not in line)
    if w0 is not None:
      assert line.endswith(f"  val/w0 {w0:.5g} metres"), line
  assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


def test_on_a_pseudo_terminal_it_draws_a_bar_with_percentage_eta_rate_loss_and_val(tmp_path):
  master, slave = pty.openpty()
  fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 columns
  chunks = []

  def read():
    while True:
      try:
        chunk = os.read(master, 65536)
      except OSError:
        return
      if not chunk:
        return
      chunks.append(chunk)

  reader = threading.Thread(target=read)
  reader.start()
  with os.fdopen(slave, "w") as stream:
    _fit(tmp_path, rnnjax.ProgressBar(UNITS, stream=stream), log_every=1)
  reader.join(timeout=30)
  os.close(master)
  # Rich redraws its lines in place (carriage returns, cursor moves): the last drawn of each.
  text = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode())  # colours
  lines = re.split(r"\r|\n|\x1b\[[0-9;?]*[A-Za-z]", text)
  bar = [line for line in lines if line.startswith("step ")][-1]
  metrics = [line for line in lines if line.startswith("loss ")][-1]
  records = _records(tmp_path)
  loss = [r["train/loss"] for r in records if "train/loss" in r][-1]
  w0 = [r["val/w0"] for r in records if "val/w0" in r][-1]
  rate = [r["train/steps_per_s"] for r in records if "train/steps_per_s" in r][-1]
  assert bar.startswith("step 12/12 ━━━━") and " 100% " in bar, bar
  assert re.search(r" \d+:\d\d:\d\d ETA 0s ", bar), bar  # Elapsed, then the time left.
  assert bar.endswith(f" {rate:.1f} steps/s") and len(bar) <= 80, bar
  assert metrics == f"loss {loss:.5g} nats  val/w0 {w0:.5g} metres", metrics


def test_units_are_found_by_full_or_short_name_and_progress_false_prints_nothing(
    tmp_path, capsys):
  stream = io.StringIO()
  bar = rnnjax.ProgressBar({"train/loss": "bits", "w0": "m"}, stream=stream)
  bar.start(10, 0)
  bar.update(5, {"train/loss": 1.0, "train/steps_per_s": 2.5, "val/w0": 0.5})
  bar.update(6, {})  # Nothing recorded: no line.
  bar.close()
  assert stream.getvalue() == "step  5/10  loss 1 bits  2.5 steps/s  ETA 2s  val/w0 0.5 m\n"
  _fit(tmp_path, False, num_steps=2)
  assert capsys.readouterr().err == ""


def test_a_run_that_fails_closes_its_bar(tmp_path):
  closed = []

  class Bar(rnnjax.ProgressBar):
    def close(self):
      closed.append(True)
      super().close()

  with pytest.raises(ZeroDivisionError):
    _fit(tmp_path, Bar(stream=io.StringIO()), eval_fn=lambda p: {"x": 1 / 0})
  assert closed == [True]
