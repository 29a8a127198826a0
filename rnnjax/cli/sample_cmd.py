"""`rnnjax sample`: generates text from the text model trained in a run directory."""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp

import rnnjax
from rnnjax._src.checkpoint import Checkpointer, CheckpointError
from rnnjax.cli.errors import UsageError, _reason
from rnnjax.cli.factories import make_model, make_optimizer
from rnnjax.cli.outdir import _holds_checkpoint


def sample_text(out: str | pathlib.Path, *, length: int, prompt: str, temperature: float,
                seed: int) -> str:
  """Generates `length` characters from the text model trained in `out` (`rnnjax.generate`).

  The newest checkpoint continues `prompt`; generated character `i` is drawn with the key
  `jax.random.fold_in(jax.random.PRNGKey(seed), i)`.
  """
  out = pathlib.Path(out)
  if not (out / "config.json").is_file():
    raise UsageError(f"--out {out} holds no run (no config.json); train one with --task text "
                     "first.")
  config = _read_json(out, "config.json", dict)
  if config.get("task") not in ("text", "shakespeare"):
    raise UsageError(f"--out {out} holds a {config.get('task')!r} run; sampling needs a run of "
                     "--task text or shakespeare.")
  vocab = _read_json(out, "vocab.json", list)
  if not vocab or not all(isinstance(c, str) and len(c) == 1 for c in vocab):
    raise UsageError(f"--out {out}: vocab.json is not a list of characters; the run is damaged")
  index = {c: i for i, c in enumerate(vocab)}
  unknown = sorted(set(prompt) - set(index))
  if unknown or not prompt:
    raise UsageError(f"--prompt must be non-empty and use only characters of the training "
                     f"text; these are not in its vocabulary: {unknown}")
  ids = [index[c] for c in prompt]
  if not _holds_checkpoint(out):
    raise UsageError(f"--out {out} holds no checkpoint yet; train the run first (rnnjax train "
                     f"--out {out} --resume continues it)")
  task_like = argparse.Namespace(input_size=len(vocab), output_size=len(vocab),
                                 vocab_size=len(vocab))
  try:
    model = make_model(config, task_like)
    optimizer = make_optimizer(config)
  except (KeyError, TypeError, ValueError) as err:
    raise UsageError(f"--out {out}: config.json does not describe a model ({_reason(err)}); "
                     "the run is damaged") from None
  template = rnnjax.train_state(model.init(jax.random.PRNGKey(0)), optimizer,
                                jax.random.PRNGKey(0))
  ckpt = Checkpointer(out / "checkpoint")
  try:
    params = ckpt.restore(template).params
  except CheckpointError as err:
    raise UsageError(f"--out {out}: {err.detail} in {err.path}; nothing to sample from" if
                     err.kind != "mismatch" else f"the checkpoint {err.path} holds another "
                     f"model than {out / 'config.json'} describes ({err.detail})") from None
  finally:
    ckpt.close()

  tokens = rnnjax.generate(model, params, jnp.asarray(ids, jnp.int32), length,
                           key=jax.random.PRNGKey(seed), temperature=temperature)
  return prompt + "".join(vocab[int(i)] for i in tokens)


def _read_json(out: pathlib.Path, name: str, kind: type) -> Any:
  try:
    value = json.loads((out / name).read_text())
  except (OSError, ValueError) as err:
    raise UsageError(f"--out {out}: {name} cannot be read ({_reason(err)}); the run is "
                     "damaged or not one of rnnjax train") from None
  if not isinstance(value, kind):
    raise UsageError(f"--out {out}: {name} holds a {type(value).__name__}, not a "
                     f"{kind.__name__}; the run is damaged or not one of rnnjax train")
  return value
