"""One-step-ahead forecasting of real series: monthly CO2 at Mauna Loa and yearly sunspots.

The series ship with the package as small CSV files in `rnnjax/tasks/data/` (their
header comments give the source and the processing) and are read with NumPy only.

Each series is split in time: the last `n_test` values are the test range, the
`n_val` values just before it the validation range, and the rest the training
range. The model sees a signal, the values themselves (sunspots) or their
month-to-month changes (CO2, whose rising trend takes most held-out values above
every training value), normalised with the mean and standard deviation of its
training part only. Training batches are random windows of the training range,
`xs[t]` the signal at `t` and `ys[t]` the signal at `t + 1`. Evaluation runs the
model over the series up to the end of the split as one sequence (teacher forcing:
the true signal is fed at every step) and scores its one-step-ahead forecasts of
the split's values, in original units.
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


def forecasting_task(name: str, series: Series, *, n_test: int, n_val: int, window: int,
                     season: int, warmup: int = 0, differences: bool = False) -> base.Task:
  """A one-step-ahead forecasting `Task` on `series` (see the module docstring).

  The series is split in time into training, validation and test ranges::

    values:  [0 ............ n_train)[n_train ... n_train + n_val)[N - n_test ... N)
                   train                         val                      test

  The model sees a signal `s` and forecasts its next value: the values themselves
  (`s[j] = x[j]`), or with `differences=True` their changes (`s[j] = x[j + 1] - x[j]`,
  as in an ARIMA model with `d = 1`), which suits a trending series whose held-out
  values lie above everything seen in training. Either way `s` is normalised with
  the mean and standard deviation of its training part, and the forecast of `x[t + 1]`
  is `x[t]` plus the forecast change in the second case.

  Args:
    name: the task's name.
    series: the data.
    n_test: how many values at the end are held out for testing.
    n_val: how many values just before the test range are held out for validation.
    window: `T`, the length of the training windows.
    season: the period of the seasonal naive baseline (the baseline is the better, on
      the validation values, of it and persistence).
    warmup: the first `warmup` steps of each training window are not scored (`mask` 0).
    differences: model the changes of the series instead of its values.

  Returns:
    The task. `train_batch(key, B)` gives `xs, ys: [T, B, 1]` float32, `ys[t] = xs[t + 1]`
    (the normalised signal; windows of the training range only), and `mask: [T, B]`.
    `evaluate(predict, split)` calls `predict` once, on the normalised signal known
    before the end `E` of the split (`E = N - n_test` for "val", `N` for "test"),
    `[M, 1, 1]` (`M = E`, or `E - 1` for differences), expects `[M, 1, 1]` (the forecast
    of the next entry at every step) and returns `{"rmse"}` on the split's values, in the
    series' units, and details `time`, `truth`, `forecast` and `baseline_forecast`
    (`[E]` each; `forecast[t]` is made at step `t - 1`, NaN where there is none), `start`
    and `end` (the scored range is `[start, end)`) and `units`. `info` holds the split
    sizes and ranges, the source and the signal's normalisation (`mean`, `std`).
  """
  fn = f"rnnjax.tasks.{name}_task"
  window = _common.int_at_least(fn, "window", window)
  n_test = _common.int_at_least(fn, "n_test", n_test)
  n_val = _common.int_at_least(fn, "n_val", n_val)
  warmup = _common.int_at_least(fn, "warmup", warmup, minimum=0)
  if not isinstance(differences, (bool, np.bool_)):
    raise TypeError(f"{fn}: `differences` must be a bool, got {differences!r}.")
  values = series.values
  n = len(values)
  test_start = n - n_test
  val_start = test_start - n_val
  offset = int(differences)  # signal[j] is known at series index j + offset
  signal = np.diff(values) if differences else values  # [M]
  n_known = val_start - offset  # entries of the signal known before the held-out values
  if n_known < window + 1:
    raise ValueError(
        f"{fn}: the series has {n} values; with n_test={n_test} held out for testing and "
        f"n_val={n_val} for validation, {n_known} are left for training, but a training "
        f"window needs window + 1 = {window + 1}. Use a smaller `window`, `n_val` or `n_test`.")
  if warmup >= window:
    raise ValueError(f"{fn}: `warmup` (={warmup}) must be smaller than `window` (={window}).")

  mean = float(np.mean(signal[:n_known]))
  std = float(np.std(signal[:n_known]))
  normalised = (signal - mean) / std
  train_data = jnp.asarray(normalised[:n_known], jnp.float32)
  mask = jnp.ones((window,), jnp.float32).at[:warmup].set(0.0)
  ranges = {"val": (val_start, test_start), "test": (test_start, n)}
  naive = naive_forecasts(values, season)
  naive_rmse = {split: {k: _rmse(f[a:b], values[a:b]) for k, f in naive.items()}
                for split, (a, b) in ranges.items()}
  baseline_name = min(naive, key=lambda k: np.nan_to_num(naive_rmse["val"][k], nan=np.inf))

  def train_batch(key: jax.Array, batch_size: int) -> base.Batch:
    batch_size = _common.int_at_least(f"{fn}.train_batch", "batch_size", batch_size)
    seg = _common.random_windows(key, train_data, batch_size, window + 1)  # [T + 1, B]
    return {"xs": seg[:-1, :, None], "ys": seg[1:, :, None],
            "mask": jnp.broadcast_to(mask[:, None], (window, batch_size))}

  forecasts = _forecaster(f"{fn}.evaluate", values, normalised, offset, mean, std)

  def evaluate(predict: base.Predict, split: str):
    start, end = ranges[_common.split(f"{fn}.evaluate", split)]
    forecast = forecasts(predict, end)
    details = {"time": series.time[:end], "truth": values[:end], "forecast": forecast,
               "baseline_forecast": naive[baseline_name][:end], "start": start, "end": end,
               "units": series.units}
    return {"rmse": _rmse(forecast[start:], values[start:end])}, details

  def period(a: int, b: int) -> str:
    return f"{series.time[a]:.2f} to {series.time[b - 1]:.2f}"

  info = {
      "source": series.source,
      "units": series.units,
      "n_values": n,
      "n_train": val_start,
      "n_val": n_val,
      "n_test": n_test,
      "splits": {"train": [0, val_start], "val": [val_start, test_start],
                 "test": [test_start, n]},  # [start, end) indices of the series
      "train_period": period(0, val_start),
      "val_period": period(val_start, test_start),
      "test_period": period(test_start, n),
      "window": window,
      "warmup": warmup,
      "signal": "changes" if differences else "values",
      "differences": bool(differences),
      "mean": mean,  # of the signal's training part, used to normalise it
      "std": std,
      "naive_rmse": naive_rmse,  # {split: {baseline: rmse}}
  }
  return base.Task(
      name=name, input_size=1, output_size=1, vocab_size=None,
      train_batch=jax.jit(train_batch, static_argnums=1), loss=base.masked_mse,
      evaluate=evaluate, metric="rmse",
      baselines={split: rmse[baseline_name] for split, rmse in naive_rmse.items()},
      baseline_name=baseline_name, units=series.units,
      loss_units="squared normalised units", info=info)


def _forecaster(fn: str, values: np.ndarray, normalised: np.ndarray, offset: int, mean: float,
                std: float):
  """`forecasts(predict, end) -> [end]`: one-step-ahead forecasts of `values[:end]`.

  `predict` sees only the signal known before `end` (`normalised[:end - offset]`), so a
  split's score never depends on values after it; `forecast[t]` is made at step `t - 1`
  (NaN for the first `offset + 1` values).
  """
  level = values[offset:-1] if offset else np.zeros(len(values) - 1)  # + forecast of x[t + 1]

  def forecasts(predict: base.Predict, end: int) -> np.ndarray:
    xs = jnp.asarray(normalised[:end - offset], jnp.float32)[:, None, None]  # [M, 1, 1]
    preds = _common.predictions(fn, predict(xs), xs.shape)
    forecast = np.full(end, np.nan)
    forecast[offset + 1:] = level[:end - offset - 1] + preds[:-1, 0, 0] * std + mean
    return forecast

  return forecasts


def co2_task(*, window: int = 48, n_test: int = 48, n_val: int = 48, warmup: int = 0,
             differences: bool = True) -> base.Task:
  """Forecast next month's CO2 at Mauna Loa (ppm); 1994-1997 validate, 1998-2001 test.

  526 monthly values from March 1958 to December 2001 (`load_co2`): the last `n_test`
  = 48 (1998-2001, about 9%) are the test range, the `n_val` = 48 before them
  (1994-1997) the validation range, and the first 430 the training range. The model
  sees and forecasts the monthly changes (`differences=True`): 38 of the 48 test values
  lie above the highest value before them, which a network fed the levels fails to
  extrapolate to. The baseline is the better, on the validation months, of persistence
  (`x[t+1] = x[t]`) and the seasonal naive forecast (`x[t+1] = x[t+1-12]`). Metric:
  `rmse` in ppm. See `forecasting_task` for the batches.

  Args:
    window: `T`, months per training window.
    n_test: months held out at the end for testing.
    n_val: months before them held out for validation.
    warmup: steps at the start of each window that are not scored.
    differences: model the monthly changes (True) or the levels (False).

  Examples:
    >>> import jax
    >>> task = co2_task()
    >>> task.train_batch(jax.random.key(0), 8)["xs"].shape
    (48, 8, 1)
    >>> task.baseline_name, round(task.baselines["val"], 3), round(task.baselines["test"], 3)
    ('persistence', 1.301, 1.215)
  """
  return forecasting_task("co2", load_co2(), n_test=n_test, n_val=n_val, window=window,
                          season=12, warmup=warmup, differences=differences)


def sunspots_task(*, window: int = 40, n_test: int = 30, n_val: int = 30, warmup: int = 0,
                  differences: bool = False) -> base.Task:
  """Forecast next year's sunspot number; 1949-1978 validate, 1979-2008 test.

  309 yearly values from 1700 to 2008 (`load_sunspots`): the last `n_test` = 30
  (1979-2008, about 10%, nearly three solar cycles) are the test range, the `n_val` =
  30 before them (1949-1978) the validation range, and the first 249 the training
  range. The baseline is the better, on the validation years, of persistence and the
  11-year seasonal naive forecast. Metric: `rmse` in sunspot numbers. See
  `forecasting_task` for the batches.

  Args:
    window: `T`, years per training window.
    n_test: years held out at the end for testing.
    n_val: years before them held out for validation.
    warmup: steps at the start of each window that are not scored.
    differences: model the yearly changes (True) or the levels (False).

  Examples:
    >>> import jax
    >>> task = sunspots_task()
    >>> task.train_batch(jax.random.key(0), 8)["ys"].shape
    (40, 8, 1)
    >>> task.info["val_period"], task.info["test_period"]
    ('1949.00 to 1978.00', '1979.00 to 2008.00')
  """
  return forecasting_task("sunspots", load_sunspots(), n_test=n_test, n_val=n_val,
                          window=window, season=11, warmup=warmup, differences=differences)
