"""Regression datasets: real-valued targets, scored by mean squared error (the ``regress``
task, actlab.tasks).

``diabetes``: scikit-learn's bundled diabetes data (Efron, Hastie, Johnstone, Tibshirani,
"Least Angle Regression", Annals of Statistics 32 (2004)): 442 patients, 10 baseline
variables (age, sex, body mass index, blood pressure, six blood serum measurements), and
the target, a quantitative measure of disease progression one year later. It ships with
scikit-learn, so it is read offline.

- Split: a fixed permutation (``numpy.random.default_rng(DIABETES_SPLIT_SEED)``) puts 20%
  (88 samples) in test and the rest (354) in train; ``--val-size`` then holds out
  validation samples from train with actlab.data.splits.VAL_SPLIT_SEED, as for every
  dataset, and ``--limit-train`` / ``--limit-test`` keep prefixes.
- Features: the raw values (``load_diabetes(scaled=False)``) standardised per feature with
  the mean and std of the train split only (after the validation hold-out), so no test or
  validation statistic leaks into training. They are shaped (N, 1, 1, 10) for the built-in
  MLP (``--net mlp``); ``--standardize`` is implied and changes nothing.
- Target: standardised with the train split's mean and std (recorded in config.json's
  dataset block as ``target_mean`` and ``target_std``). A test MSE of 1.0 is about what
  predicting the train mean scores; an MSE in the target's own units is MSE * target_std².
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from actlab.data.dataset import Dataset
from actlab.data.splits import VAL_SPLIT_SEED
from actlab.errors import DataError
from actlab.tasks import REGRESSION_DATASETS as REGRESSION_NAMES

DIABETES_SPLIT_SEED = 0
DIABETES_TEST_FRACTION = 0.2


def is_regression(name: str) -> bool:
    """Whether `name` is a built-in regression dataset."""
    return str(name).strip().lower() in REGRESSION_NAMES


@dataclass(frozen=True)
class RegressionDataset(Dataset):
    """A Dataset whose targets are float32 values (N,), standardised; `num_classes` is the
    output width (1)."""

    target_mean: float = 0.0
    target_std: float = 1.0
    task: str = "regress"

    def summary(self) -> dict:
        return {
            **super().summary(),
            "task": self.task,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
        }


def load_regression(
    name: str,
    *,
    val_size: float = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> RegressionDataset:
    """The regression dataset `name` (see the module docstring for its split and scaling)."""
    if not is_regression(name):
        raise DataError(
            f"unknown regression dataset {name!r}; known: {', '.join(REGRESSION_NAMES)}"
        )
    x, y = _read_diabetes()
    order = np.random.default_rng(DIABETES_SPLIT_SEED).permutation(len(y))
    n_test = round(DIABETES_TEST_FRACTION * len(y))
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
    x_train, y_train, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    val_count = _val_count(val_size, len(y_train))
    x_val, y_val = x_train[:0], y_train[:0]
    if val_count:
        order = np.random.default_rng(VAL_SPLIT_SEED).permutation(len(y_train))
        val_idx, keep = np.sort(order[:val_count]), np.sort(order[val_count:])
        x_val, y_val = x_train[val_idx], y_train[val_idx]
        x_train, y_train = x_train[keep], y_train[keep]
    for flag, value in (("--limit-train", limit_train), ("--limit-test", limit_test)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise DataError(f"{flag} must be a positive integer, got {value!r}")
    if limit_train is not None:
        x_train, y_train = x_train[:limit_train], y_train[:limit_train]
    if limit_test is not None:
        x_test, y_test = x_test[:limit_test], y_test[:limit_test]
    if len(y_train) < 2:
        raise DataError(f"{name}: standardising needs at least 2 train samples, got {len(y_train)}")
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    t_mean, t_std = float(y_train.mean()), float(y_train.std())
    if (std == 0).any() or t_std == 0:
        raise DataError(f"{name}: a feature or the target is constant on the train split")

    def features(a: np.ndarray) -> torch.Tensor:
        scaled = ((a - mean) / std).astype(np.float32)
        return torch.from_numpy(scaled.reshape(len(a), 1, 1, a.shape[1]).copy())

    def targets(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((a - t_mean) / t_std).astype(np.float32))

    return RegressionDataset(
        name=name.strip().lower(),
        x_train=features(x_train),
        y_train=targets(y_train),
        x_val=features(x_val),
        y_val=targets(y_val),
        x_test=features(x_test),
        y_test=targets(y_test),
        num_classes=1,
        input_shape=(1, 1, x.shape[1]),
        source="sklearn",
        scale=1.0,
        target_mean=t_mean,
        target_std=t_std,
    )


def _val_count(val_size: float, n_train: int) -> int:
    if isinstance(val_size, float) and 0 < val_size < 1:
        val_size = max(1, round(val_size * n_train))
    elif isinstance(val_size, float) and val_size.is_integer():
        val_size = int(val_size)
    if not isinstance(val_size, int) or val_size < 0 or val_size >= n_train:
        raise DataError(
            f"--val-size must be a count below {n_train} or a fraction in (0, 1) of train, "
            f"got {val_size!r}"
        )
    return val_size


def _read_diabetes() -> tuple[np.ndarray, np.ndarray]:
    """The raw features (442, 10) and targets (442,) as float64."""
    try:
        from sklearn.datasets import load_diabetes
    except ImportError:
        raise DataError(
            "the diabetes dataset needs scikit-learn; install it with `pip install scikit-learn`"
        ) from None
    bunch = load_diabetes(scaled=False)
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.float64)
