"""Diagnostics of a `sequence_model` on a task batch, written as JSON and PNG (`--diagnostics`).

Used by `rnnjax train --diagnostics` before and after training, and by
`examples/vanishing_gradients.py`. matplotlib is imported only to draw.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax.numpy as jnp
import numpy as np

from rnnjax._src import cell as cell_lib
from rnnjax._src import diagnostics
from rnnjax._src.files import write_json_atomic


def model_diagnostics(core: Any, params: Any, task: Any, batch: dict[str, Any], *,
                      spectrum_steps: int = 64) -> dict[str, Any]:
  """Gradient norms of the task loss over time, and (for cells) the Jacobian spectrum.

  Args:
    core: the model's recurrent core, a `Cell` (a stack of cells included).
    params: the `SequenceModelParams`.
    task: the task (its `loss(preds, batch)`).
    batch: a training batch (`{"xs": ..., ...}`).
    spectrum_steps: the Jacobian spectrum is taken over the first sequence's first
      `spectrum_steps` steps (each step costs one Jacobian and one SVD).

  Returns:
    A JSON-ready dict: `grad_norms` (mean over the batch, per step), its
    `summary`, `max_singular_value` per step and `lyapunov`.
  """
  if not isinstance(core, cell_lib.Cell):
    raise TypeError("--diagnostics needs a Cell core (a cell or a stack of cells), got a "
                    f"{type(core).__name__}.")
  xs = batch["xs"]
  if params.embed is not None:
    xs = jnp.take(params.embed, xs, axis=0)

  def loss_fn(hs):
    return task.loss(hs @ params.w_out + params.b_out, batch)

  grads = diagnostics.gradient_norms(core, params.core, xs, loss_fn)
  curve = jnp.mean(grads.norms.reshape(grads.norms.shape[0], -1), axis=1)
  out = {"grad_norms": np.asarray(curve, np.float64).tolist(),
         "summary": diagnostics.summary(grads.norms), "loss": float(grads.loss)}
  spec = diagnostics.jacobian_spectrum(core, params.core, xs[:spectrum_steps, 0])
  out["max_singular_value"] = np.asarray(spec.singular_values[:, 0], np.float64).tolist()
  out["lyapunov"] = np.asarray(spec.lyapunov, np.float64).tolist()
  return out


def write(out_dir: pathlib.Path, name: str, reports: dict[str, dict[str, Any]],
          plots: bool = True) -> list[pathlib.Path]:
  """Writes `{name}.json` and, with `plots`, `{name}.png` (one curve per report)."""
  out_dir = pathlib.Path(out_dir)
  written = [out_dir / f"{name}.json"]
  write_json_atomic(written[0], reports)
  if plots:
    written.append(plot(out_dir / f"{name}.png", reports))
  return written


def plot(path: pathlib.Path, reports: dict[str, dict[str, Any]],
         title: str = "gradient flow through time") -> pathlib.Path:
  """Gradient norm `||dL/dh_t||` against `t` (log scale), and the step Jacobians' largest
  singular value, one line per report."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  has_spec = any("max_singular_value" in r for r in reports.values())
  fig, axes = plt.subplots(1, 2 if has_spec else 1, figsize=(11 if has_spec else 6, 4))
  axes = np.atleast_1d(axes)
  for label, rep in reports.items():
    norms = np.asarray(rep["grad_norms"])
    steps = np.arange(len(norms))
    keep = norms > 0
    axes[0].semilogy(steps[keep], norms[keep], label=label)
    if has_spec and "max_singular_value" in rep:
      sv = np.asarray(rep["max_singular_value"])
      lyap = max(rep["lyapunov"]) if rep.get("lyapunov") else float("nan")
      axes[1].plot(np.arange(len(sv)), sv, label=f"{label} (top Lyapunov {lyap:.3f})")
  axes[0].set_xlabel("step t")
  axes[0].set_ylabel("||dL/dh_t|| (mean over batch)")
  axes[0].set_title(title)
  axes[0].legend()
  if has_spec:
    axes[1].set_xlabel("step t")
    axes[1].set_ylabel("largest singular value of dh_t/dh_{t-1}")
    axes[1].axhline(1.0, color="gray", lw=0.5)
    axes[1].set_title("step Jacobians (first sequence)")
    axes[1].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return pathlib.Path(path)
