"""One-step-ahead forecasting of real series: monthly CO2 at Mauna Loa and yearly sunspots.

The series ship with the package as small CSV files in `rnnjax/tasks/data/` (their
header comments give the source and the processing) and are read with NumPy only.

Each series is split in time: the last `n_test` values are held out. The model
sees a signal, the values themselves (sunspots) or their month-to-month changes
(CO2, whose rising trend takes most held-out values above every training value),
normalised with the mean and standard deviation of its training part only.
Training batches are random windows of the training part, `xs[t]` the signal at
`t` and `ys[t]` the signal at `t + 1`. Evaluation runs the model over the whole
series as one sequence (teacher forcing: the true signal is fed at every step) and
scores its one-step-ahead forecasts of the held-out values, in original units.
"""

from __future__ import annotations

import importlib.resources
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.tasks import _common, base


class Series(NamedTuple):
  """A series read from one of the packaged CSV files.

  Attributes:
    time: `[N]` float64, in years (monthly data: `year + (month - 1) / 12`).
    values: `[N]` float64, in `units`.
    units: the unit of `values`.
    source: where the data come from, in one line.
    header: the file's comment lines (source, licence, processing), without the `#`.
  """

  time: np.ndarray  # [N] float64
  values: np.ndarray  # [N] float64
  units: str
  source: str
  header: str


def read_csv(filename: str) -> tuple[list[str], np.ndarray, str]:
  """Reads a packaged data file: `(column names, data [rows, columns] float64, header)`."""
  text = importlib.resources.files("rnnjax.tasks").joinpath("data", filename).read_text("utf-8")
  lines = text.splitlines()
  header = "\n".join(line[1:].strip() for line in lines if line.startswith("#"))
  rows = [line for line in lines if line.strip() and not line.startswith("#")]
  columns = rows[0].split(",")
  data = np.loadtxt(rows[1:], delimiter=",", dtype=np.float64, ndmin=2)
  return columns, data, header


def load_co2() -> Series:
  """Monthly mean CO2 at Mauna Loa, March 1958 to December 2001 (526 values, ppm).

  Examples:
    >>> s = load_co2()
    >>> len(s.values), float(s.time[0]), s.units
    (526, 1958.166..., 'ppm')
  """
  _, data, header = read_csv("co2.csv")
  source = ("Mauna Loa CO2, Keeling & Whorf 2004 (SIO flask data, CDIAC), monthly means of "
            "statsmodels.datasets.co2; public domain")
  return Series(data[:, 0] + (data[:, 1] - 1) / 12, data[:, 2], "ppm", source, header)


def load_sunspots() -> Series:
  """Yearly mean sunspot numbers, 1700 to 2008 (309 values).

  Examples:
    >>> s = load_sunspots()
    >>> len(s.values), float(s.time[-1])
    (309, 2008.0)
  """
  _, data, header = read_csv("sunspots.csv")
  source = "yearly sunspot numbers, NOAA NGDC, via statsmodels.datasets.sunspots; public domain"
  return Series(data[:, 0], data[:, 1], "sunspot number", source, header)


def _rmse(forecast: np.ndarray, truth: np.ndarray) -> float:
  return float(np.sqrt(np.mean((forecast - truth) ** 2)))


def naive_forecasts(values: np.ndarray, season: int) -> dict[str, np.ndarray]:
  """Persistence and seasonal naive forecasts of every value from the values before it.

  Args:
    values: `[N]` the series.
    season: the period `P` of the seasonal naive forecast.

  Returns:
    `{"persistence": f, "seasonal naive (P)": g}`, each `[N]` float64 with `f[t] =
    values[t - 1]` and `g[t] = values[t - P]`, NaN where there is no earlier value.
  """
  n = len(values)
  persistence = np.full(n, np.nan)
  persistence[1:] = values[:-1]
  seasonal = np.full(n, np.nan)
  seasonal[season:] = values[:n - season]
  return {"persistence": persistence, f"seasonal naive ({season})": seasonal}


def forecasting_task(name: str, series: Series, *, n_test: int, window: int, season: int,
                     warmup: int = 0, differences: bool = False) -> base.Task:
  """A one-step-ahead forecasting `Task` on `series` (see the module docstring).

  The model sees a signal `s` and forecasts its next value: the values themselves
  (`s[j] = x[j]`), or with `differences=True` their changes (`s[j] = x[j + 1] - x[j]`,
  as in an ARIMA model with `d = 1`), which suits a trending series whose held-out
  values lie above everything seen in training. Either way `s` is normalised with
  the mean and standard deviation of its training part, and the forecast of `x[t + 1]`
  is `x[t]` plus the forecast change in the second case.

  Args:
    name: the task's name.
    series: the data.
    n_test: how many values at the end are held out.
    window: `T`, the length of the training windows.
    season: the period of the seasonal naive baseline (the baseline is the better, on
      the held-out values, of it and persistence).
    warmup: the first `warmup` steps of each training window are not scored (`mask` 0).
    differences: model the changes of the series instead of its values.

  Returns:
    The task. `train_batch(key, B)` gives `xs, ys: [T, B, 1]` float32, `ys[t] = xs[t + 1]`
    (the normalised signal), and `mask: [T, B]`. `evaluate(predict)` calls `predict`
    once on the whole normalised signal, `[M, 1, 1]` (`M = N`, or `N - 1` for
    differences), expects `[M, 1, 1]` (the forecast of the next entry at every step) and
    returns `{"test_rmse", "train_rmse"}` in the series' units, and details `time`,
    `truth`, `forecast` (`[N]`; `forecast[t]` is made at step `t - 1`, NaN where there is
    none), `baseline_forecast` (`[N]`) and `test_start` (index of the first held-out value).
    `info` holds the sizes, the source and the signal's normalisation (`mean`, `std`).
  """
  fn = f"rnnjax.tasks.{name}_task"
  window = _common.int_at_least(fn, "window", window)
  n_test = _common.int_at_least(fn, "n_test", n_test)
  warmup = _common.int_at_least(fn, "warmup", warmup, minimum=0)
  if not isinstance(differences, (bool, np.bool_)):
    raise TypeError(f"{fn}: `differences` must be a bool, got {differences!r}.")
  values = series.values
  n = len(values)
  test_start = n - n_test
  offset = int(differences)  # signal[j] is known at series index j + offset
  signal = np.diff(values) if differences else values  # [M]
  n_known = test_start - offset  # entries of the signal known before the held-out values
  if n_known < window + 1:
    raise ValueError(
        f"{fn}: the series has {n} values; with n_test={n_test} held out, {n_known} are "
        f"left for training, but a training window needs window + 1 = {window + 1}. Use a "
        "smaller `window` or `n_test`.")
  if warmup >= window:
    raise ValueError(f"{fn}: `warmup` (={warmup}) must be smaller than `window` (={window}).")

  mean = float(np.mean(signal[:n_known]))
  std = float(np.std(signal[:n_known]))
  normalised = (signal - mean) / std
  train_data = jnp.asarray(normalised[:n_known], jnp.float32)
  signal_xs = jnp.asarray(normalised, jnp.float32)[:, None, None]  # [M, 1, 1]
  mask = jnp.ones((window,), jnp.float32).at[:warmup].set(0.0)
  level = values[offset:-1] if differences else 0.0  # added to the forecasts of x[offset + 1:]

  naive = naive_forecasts(values, season)
  naive_rmse = {k: _rmse(f[test_start:], values[test_start:]) for k, f in naive.items()}
  baseline_name = min(naive_rmse, key=naive_rmse.__getitem__)

  def train_batch(key: jax.Array, batch_size: int) -> base.Batch:
    batch_size = _common.int_at_least(f"{fn}.train_batch", "batch_size", batch_size)
    seg = _common.random_windows(key, train_data, batch_size, window + 1)  # [T + 1, B]
    return {"xs": seg[:-1, :, None], "ys": seg[1:, :, None],
            "mask": jnp.broadcast_to(mask[:, None], (window, batch_size))}

  def evaluate(predict: base.Predict):
    preds = _common.predictions(f"{fn}.evaluate", predict(signal_xs), signal_xs.shape)
    forecast = np.full(n, np.nan)
    forecast[offset + 1:] = level + preds[:-1, 0, 0] * std + mean
    metrics = {"test_rmse": _rmse(forecast[test_start:], values[test_start:]),
               "train_rmse": _rmse(forecast[offset + 1:test_start],
                                   values[offset + 1:test_start])}
    details = {"time": series.time, "truth": values, "forecast": forecast,
               "baseline_forecast": naive[baseline_name], "test_start": test_start}
    return metrics, details

  info = {
      "source": series.source,
      "units": series.units,
      "n_values": n,
      "n_train": test_start,
      "n_test": n_test,
      "test_period": f"{series.time[test_start]:.2f} to {series.time[-1]:.2f}",
      "window": window,
      "warmup": warmup,
      "signal": "changes" if differences else "values",
      "differences": bool(differences),
      "mean": mean,  # of the signal's training part, used to normalise it
      "std": std,
      "baselines_test_rmse": naive_rmse,
  }
  return base.Task(
      name=name, input_size=1, output_size=1, vocab_size=None,
      train_batch=jax.jit(train_batch, static_argnums=1), loss=base.masked_mse,
      evaluate=evaluate, metric="test_rmse", baseline=naive_rmse[baseline_name],
      baseline_name=baseline_name, info=info)


def co2_task(*, window: int = 48, n_test: int = 48, warmup: int = 0,
             differences: bool = True) -> base.Task:
  """Forecast next month's CO2 at Mauna Loa (ppm); the last 4 years (1998-2001) are held out.

  526 monthly values from March 1958 to December 2001 (`load_co2`); 478 for training,
  the last `n_test` = 48 (about 9%) held out. The model sees and forecasts the monthly
  changes (`differences=True`): 38 of the 48 held-out values lie above the highest
  training value, which a network fed the levels fails to extrapolate to. The baseline
  is the better of persistence (`x[t+1] = x[t]`) and the seasonal naive forecast
  (`x[t+1] = x[t+1-12]`) on the held-out months. Metric: `test_rmse` in ppm. See
  `forecasting_task` for the batches.

  Args:
    window: `T`, months per training window.
    n_test: months held out at the end.
    warmup: steps at the start of each window that are not scored.
    differences: model the monthly changes (True) or the levels (False).

  Examples:
    >>> import jax
    >>> task = co2_task()
    >>> task.train_batch(jax.random.key(0), 8)["xs"].shape
    (48, 8, 1)
    >>> task.baseline_name, round(task.baseline, 3)
    ('persistence', 1.215)
  """
  return forecasting_task("co2", load_co2(), n_test=n_test, window=window, season=12,
                          warmup=warmup, differences=differences)


def sunspots_task(*, window: int = 40, n_test: int = 30, warmup: int = 0,
                  differences: bool = False) -> base.Task:
  """Forecast next year's sunspot number; the last 30 years (1979-2008) are held out.

  309 yearly values from 1700 to 2008 (`load_sunspots`); 279 for training, the last
  `n_test` = 30 (about 10%, nearly three solar cycles) held out. The baseline is the
  better of persistence and the 11-year seasonal naive forecast on the held-out years.
  Metric: `test_rmse` in sunspot numbers. See `forecasting_task` for the batches.

  Args:
    window: `T`, years per training window.
    n_test: years held out at the end.
    warmup: steps at the start of each window that are not scored.
    differences: model the yearly changes (True) or the levels (False).

  Examples:
    >>> import jax
    >>> task = sunspots_task()
    >>> task.train_batch(jax.random.key(0), 8)["ys"].shape
    (40, 8, 1)
  """
  return forecasting_task("sunspots", load_sunspots(), n_test=n_test, window=window, season=11,
                          warmup=warmup, differences=differences)
