"""Properties of an activation, measured numerically from the function (never typed by
hand), and cached: in memory per process and, for the catalog's own entries, on disk
(:mod:`actlab.catalog.cache`: keyed by the versions and the catalog's source, so that a
cached value is always the one a fresh measurement gives).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from actlab.catalog import cache, lookup
from actlab.catalog.activation import ActivationSpec
from actlab.catalog.registry import get_fn
from actlab.catalog.spec import canonical_label, resolve

# Smoothness is judged on a grid shifted off the round numbers where kinks sit (0, +-1, 6);
# range and slopes also use the round grid, which hits extremes such as hard_swish(-1.5).
_GRID = np.linspace(-20.0, 20.0, 40001) + 0.000371
_ROUND_GRID = np.linspace(-20.0, 20.0, 4001)
_PROBES = np.array([-1e12, -1e6, -1e4, -1e3, -1e2, 1e2, 1e3, 1e4, 1e6, 1e12])
KEYS = (
    "range",
    "monotonic",
    "mean_normal",
    "saturating_left",
    "saturating_right",
    "continuous",
    "smooth",
    "max_slope",
    "f0",
    "df0",
)
_MEMORY: dict[str, tuple[ActivationSpec, dict]] = {}  # label -> (entry measured, result)
_DISK: dict[str, dict] | None = None  # the disk cache's records, read at first use


def scalar_view(spec: Any, **params: Any) -> Callable[[Tensor], Tensor]:
    """A function of one variable for any entry. Elementwise entries are themselves; entries
    that mix units are read on a two-unit input: softmax-like ones as unit 0 of [x, 0]
    (softmax -> sigmoid(x)), gated ones (GLU) as [x, x] (-> x * sigmoid(x))."""
    fn = get_fn(spec, **params)
    if not callable(spec) or isinstance(spec, (str, Mapping, ActivationSpec)):
        entry, resolved = resolve(spec, **params)
        if not entry.elementwise:
            if entry.gated:
                return lambda x: entry.fn(torch.stack([x, x], -1), dim=-1)[..., 0]
            extra = {k: v for k, v in resolved.items() if k != "dim"}
            return lambda x: entry.fn(torch.stack([x, torch.zeros_like(x)], -1), dim=-1, **extra)[
                ..., 0
            ]
    return fn


def properties(spec: Any, **params: Any) -> dict:
    """Properties measured numerically from the function, in float64 (see :func:`measure`),
    cached per label: in memory, and on disk for the catalog's own entries."""
    cacheable = isinstance(spec, (str, Mapping)) and not callable(spec)
    if not cacheable:
        return measure(spec, **params)
    entry, _ = resolve(spec, **params)
    label = canonical_label(spec, **params)
    remembered = _MEMORY.get(label)
    if remembered is not None and remembered[0] is entry:
        return dict(remembered[1])
    builtin = lookup.is_builtin(entry)
    result = _disk_records().get(label) if builtin else None
    if result is None:
        result = measure(spec, **params)
        if builtin:
            _save(label, result)
    _MEMORY[label] = (entry, result)
    return dict(result)


@np.errstate(all="ignore")  # extreme parameters overflow the probes: measured, not warned
def measure(spec: Any, **params: Any) -> dict:
    """Properties measured numerically from the function, in float64, uncached.

    On a grid of step 1e-3 over [-20, 20] plus probes at |x| = 1e2..1e6, with f' by autograd:

    - ``range``: (lo, hi) over the grids and probes up to |x| = 1e12; +-inf when f still
      grows by more than 1 from |x| = 1e4 to 1e6;
    - ``monotonic``: f never decreases (or never increases) on the grid and probes;
    - ``mean_normal``: E[f(z)] for z ~ N(0, 1), the mean output for a standard-normal input
      (0 when the output is zero-centred in LeCun et al.'s sense, 'Efficient BackProp'
      1998), by the trapezoidal rule on the grid (error ~1e-7; rounded to 6 decimals);
    - ``saturating_left`` / ``saturating_right``: |f'(-+1e6)| < 1e-5;
    - ``continuous`` / ``smooth``: no jump in f / in f' (a step between neighbouring grid
      points that is 10x the steps beside it);
    - ``max_slope``: max |f'|; ``f0``, ``df0``: f(0) and the autograd f'(0).
    Entries that mix units are measured on :func:`scalar_view`.
    """
    fn = scalar_view(spec, **params)
    y, dy = _value_and_slope(fn, _GRID)
    ry, _ = _value_and_slope(fn, _ROUND_GRID)
    py, pdy = _value_and_slope(fn, _PROBES)
    (f0,), (df0,) = _value_and_slope(fn, np.array([0.0]))
    every = np.concatenate([py[:5], y, py[5:]])  # in x order
    lo, hi = _range(every, ry, py)
    ordered = every[np.isfinite(every)]
    steps = np.diff(ordered)
    tol = 1e-12 * (1.0 + np.abs(ordered[1:]) + np.abs(ordered[:-1]))  # rounding, not a trend
    monotonic = bool(np.all(steps >= -tol) or np.all(steps <= tol))
    # Not the round grid: there autograd sits on kinks, where its value is a convention.
    slopes = np.concatenate([dy, pdy[1:-1], [df0]])
    finite_slopes = np.abs(slopes[np.isfinite(slopes)])
    max_slope = float(finite_slopes.max()) if finite_slopes.size else math.nan
    if not np.all(np.isfinite(slopes)):
        max_slope = math.inf
    scale = float(np.nanmax(np.abs(y[np.isfinite(y)]))) if np.isfinite(y).any() else 0.0
    continuous = not _spikes(y, scale)
    return {
        "range": (_tidy(lo), _tidy(hi)),
        "monotonic": monotonic,
        "mean_normal": normal_mean(y),
        "saturating_left": bool(np.isfinite(pdy[1]) and abs(pdy[1]) < 1e-5),
        "saturating_right": bool(np.isfinite(pdy[-2]) and abs(pdy[-2]) < 1e-5),
        "continuous": continuous,
        "smooth": continuous and not _spikes(dy, max_slope if math.isfinite(max_slope) else 1.0),
        "max_slope": _tidy(max_slope),
        "f0": _tidy(float(f0)),
        "df0": _tidy(float(df0)),
    }


def normal_mean(values: np.ndarray, grid: np.ndarray = _GRID) -> float:
    """E[f(z)], z ~ N(0, 1), from f's ``values`` on ``grid`` (uniform, covering [-20, 20]):
    the trapezoidal rule on f(x) phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi); the tails
    beyond |x| = 20 weigh less than 1e-80. NaN when f is not finite on the grid."""
    with np.errstate(all="ignore"):
        weighted = values * np.exp(-(grid**2) / 2) / math.sqrt(2 * math.pi)
    if not np.all(np.isfinite(weighted)):
        return math.nan
    step = float(grid[1] - grid[0])
    total = step * (float(weighted.sum()) - (weighted[0] + weighted[-1]) / 2)
    return float(round(total, 6)) + 0.0  # + 0.0 turns -0.0 into 0.0


def _range(every: np.ndarray, round_values: np.ndarray, probes: np.ndarray) -> tuple[float, float]:
    """(lo, hi) of f over the grids and probes; +-inf where f still grows far out."""
    finite = np.concatenate([every, round_values])
    finite = finite[np.isfinite(finite)]
    lo = float(finite.min()) if finite.size else math.nan
    hi = float(finite.max()) if finite.size else math.nan
    for near, far in ((probes[2], probes[1]), (probes[7], probes[8])):  # f(+-1e4), f(+-1e6)
        if far == math.inf or (np.isfinite(far) and far > near + 1):
            hi = math.inf
        if far == -math.inf or (np.isfinite(far) and far < near - 1):
            lo = -math.inf
    return lo, hi


def _value_and_slope(
    fn: Callable[[Tensor], Tensor], xs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    x = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        y = fn(x)
        (slope,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
    if slope is None:
        slope = torch.zeros_like(x)
    return y.detach().numpy(), slope.numpy()


def _spikes(values: np.ndarray, scale: float) -> bool:
    """True when some step between neighbours jumps out of line with the steps beside it:
    a jump in a sampled function that does not shrink with the grid."""
    steps = np.abs(np.diff(values))
    steps = np.where(np.isfinite(steps), steps, 0.0)
    if steps.size < 3:
        return False
    inner = steps[1:-1]
    around = np.maximum(steps[:-2], steps[2:])
    return bool(np.any((inner > 1e-6 * (1.0 + scale)) & (inner > 10.0 * around)))


def _tidy(value: float) -> float:
    """Round away grid noise (1e-9) so that tables and tests see stable numbers."""
    if not math.isfinite(value):
        return value
    return float(round(value, 9)) + 0.0  # + 0.0 turns -0.0 into 0.0


# === the disk cache =======================================================================


def cache_path() -> Path:
    """The disk cache's file of measured properties for this installation."""
    return cache.path("properties")


def _disk_records() -> dict[str, dict]:
    """The cached records (label -> properties); empty when there is no readable cache."""
    global _DISK
    if _DISK is None:
        _DISK = {}
        records = cache.read("properties")
        if isinstance(records, dict):
            for label, record in records.items():
                if isinstance(record, dict) and set(record) == set(KEYS):
                    _DISK[label] = {**record, "range": tuple(record["range"])}
    return _DISK


def _save(label: str, result: dict) -> None:
    """Add one record to the disk cache (the file is written whole, atomically)."""
    records = _disk_records()
    records[label] = result
    cache.write("properties", records)


def clear_memory() -> None:
    """Forget what this process measured or read (the next call reads the disk again)."""
    global _DISK
    _MEMORY.clear()
    _DISK = None
