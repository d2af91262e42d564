"""Making a `Dataset` of a reader's `RawSplits`: the validation split (a fixed seed,
`VAL_SPLIT_SEED`, independent of the experiment seeds), the ``limit_train``/``limit_test``
prefixes, the checks a study needs of its labels and values, and the train split's mean and
std for ``standardize``; `from_tensors` does the same for tensors given in Python.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from actlab.data.dataset import Dataset, RawSplits
from actlab.errors import DataError

VAL_SPLIT_SEED = 20240611  # fixed: the validation split must not move with experiment seeds
FLOAT32_MAX = float(np.finfo(np.float32).max)


def make_dataset(
    name,
    splits: RawSplits,
    num_classes,
    input_shape,
    val_size,
    limit_train,
    limit_test,
    standardize,
) -> Dataset:
    n_train = len(splits.y_train)
    features = math.prod(splits.x_train.shape[1:])
    if features == 0:
        raise DataError(
            f"{name}: the inputs have shape {tuple(splits.x_train.shape[1:])}, with no values; "
            "give inputs of at least one value per sample"
        )
    for split, labels in (("train", splits.y_train), ("test", splits.y_test)):
        if len(labels) == 0:
            raise DataError(
                f"{name}: the {split} split is empty; a study needs samples in both train and "
                "test (an accuracy of an empty split would be made up)"
            )
    if isinstance(val_size, float) and 0 < val_size < 1:  # a fraction of the train split
        val_size = max(1, round(val_size * n_train))
    elif isinstance(val_size, float) and val_size.is_integer():
        val_size = int(val_size)
    if not isinstance(val_size, int) or val_size < 0:
        raise DataError(
            f"--val-size must be a count or a fraction in (0, 1) of train, got {val_size!r}"
        )
    if val_size >= n_train:
        raise DataError(
            f"--val-size {val_size} leaves no training data: {name} has {n_train} train samples"
        )
    for flag, value in (("--limit-train", limit_train), ("--limit-test", limit_test)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise DataError(f"{flag} must be a positive integer, got {value!r}")

    x_train, y_train = splits.x_train, splits.y_train
    x_val, y_val = x_train[:0], y_train[:0]
    if val_size:
        order = np.random.default_rng(VAL_SPLIT_SEED).permutation(n_train)
        val_idx, train_idx = np.sort(order[:val_size]), np.sort(order[val_size:])
        x_val, y_val = x_train[val_idx], y_train[val_idx]
        x_train, y_train = x_train[train_idx], y_train[train_idx]
    if limit_train is not None:
        x_train, y_train = x_train[:limit_train], y_train[:limit_train]
    x_test, y_test = splits.x_test, splits.y_test
    if limit_test is not None:
        x_test, y_test = x_test[:limit_test], y_test[:limit_test]

    # Classes missing from a --limit-train prefix alone are the user's choice (a smoke
    # run); a class missing from the whole training data is a data error.
    _check_labels(name, y_train, {})
    _check_labels(name, splits.y_train, {"validation": y_val, "test": y_test})
    mean = std = None
    if standardize:
        mean, std = _mean_std(x_train, splits.scale)
    return Dataset(
        name=name,
        x_train=_tensor(x_train),
        y_train=_tensor(y_train),
        x_val=_tensor(x_val),
        y_val=_tensor(y_val),
        x_test=_tensor(x_test),
        y_test=_tensor(y_test),
        num_classes=int(num_classes),
        input_shape=tuple(int(s) for s in input_shape),
        source=splits.source,
        mean=mean,
        std=std,
        scale=splits.scale,
        checksums=dict(splits.checksums),
    )


def _check_labels(name: str, y_train: np.ndarray, others: dict[str, np.ndarray]) -> None:
    """A classifier needs two classes to learn, and a split whose every sample is of a
    class the training split lacks measures nothing (every member scores 0%, and a
    verdict of "equivalent" would be made up). A split with *some* such samples is kept:
    every member is scored on the same samples."""
    trained = np.unique(y_train)
    if len(trained) < 2:
        raise DataError(
            f"{name}: the training split holds only class {trained.tolist()}; a classifier "
            "needs at least two classes (check the labels, --val-size and --limit-train)"
        )
    for split, labels in others.items():
        if labels.size and not np.isin(labels, trained).any():
            unseen = np.unique(labels).tolist()
            shown = ", ".join(map(str, unseen[:10])) + (", ..." if len(unseen) > 10 else "")
            raise DataError(
                f"{name}: every {split} label ({shown}) is a class the training data never "
                "holds; a model cannot learn a class it never sees: check the labels"
            )


def check_float32_range(x: np.ndarray, where: str) -> None:
    """Values must survive the cast to float32 (beyond 3.4e38 they become inf, and every
    member then diverges with no word about the data)."""
    if x.size and x.dtype.itemsize > 4 and float(np.abs(x).max()) > FLOAT32_MAX:
        raise DataError(
            f"{where} holds values up to {float(np.abs(x).max()):.3g}, beyond float32 "
            "(3.4e38), the dtype the networks train in; rescale the data"
        )


def _mean_std(x: np.ndarray, scale: float) -> tuple[float, float]:
    """Population mean and std of x / scale; exact via a histogram for uint8 (no float copy)."""
    if x.size == 0:
        raise DataError("--standardize needs training data, but the train split is empty")
    if x.dtype == np.uint8:
        counts = np.bincount(x.reshape(-1), minlength=256).astype(np.float64)
        values = np.arange(256, dtype=np.float64) / scale
        mean = float((counts * values).sum() / counts.sum())
        var = float((counts * (values - mean) ** 2).sum() / counts.sum())
    else:
        scaled = x.astype(np.float64) / scale
        mean, var = float(scaled.mean()), float(scaled.var())
    std = var**0.5
    if std == 0.0:
        raise DataError("--standardize: the train inputs are constant (std 0); drop --standardize")
    return mean, std


def _tensor(array: np.ndarray) -> Tensor:
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, copy=True, order="C")
    return torch.from_numpy(array)


def from_tensors(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    val_size: float = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    standardize: bool = False,
    name: str = "tensors",
    images: bool = False,
) -> Dataset:
    """A Dataset from tensors given in Python (``actlab.compare(dataset=(x, y, xt, yt))``).

    Inputs keep their per-sample shape (a user model gets batches exactly as given); uint8
    inputs are scaled by 1/255, float ones are used as they are. Labels: integer class
    indices 0..C-1. Validation split and limits as for the other datasets. `images`: shape
    them (N, C, H, W) for the built-in models ((N, D) -> (N, 1, 1, D), (N, H, W) -> (N, 1, H, W))."""
    arrays = []
    for label, value in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test), ("y_test", y_test)):  # fmt: skip
        if not isinstance(value, Tensor | np.ndarray):
            raise DataError(
                f"dataset {label} must be a tensor or array, got {type(value).__name__}"
            )
        arrays.append(value.detach().cpu().numpy() if isinstance(value, Tensor) else value)
    x_tr, y_tr, x_te, y_te = arrays
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise DataError(
            f"dataset tensors disagree: {len(x_tr)} x_train for {len(y_tr)} y_train, "
            f"{len(x_te)} x_test for {len(y_te)} y_test"
        )
    if x_tr.shape[1:] != x_te.shape[1:] or x_tr.ndim < 2:
        raise DataError(
            f"x_train samples {x_tr.shape[1:]} and x_test samples {x_te.shape[1:]} must have one "
            "shape, with the batch first"
        )
    labels = np.concatenate([y_tr.reshape(-1), y_te.reshape(-1)])
    if labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0):
        raise DataError("dataset labels must be integer class indices 0..C-1 (not one-hot)")
    if images and x_tr.ndim in (2, 3):
        x_tr, x_te = (
            x.reshape(len(x), 1, *([1] * (3 - x.ndim)), *x.shape[1:]) for x in (x_tr, x_te)
        )
    scale = 255.0 if x_tr.dtype == np.uint8 else 1.0
    if scale == 1.0:
        for label, x in (("x_train", x_tr), ("x_test", x_te)):
            if x.dtype.kind == "f":
                check_float32_range(x, f"dataset {label}")
        x_tr, x_te = x_tr.astype(np.float32), x_te.astype(np.float32)
    splits = RawSplits(x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64), "python", scale)
    num_classes = int(labels.max()) + 1 if labels.size else 0
    return make_dataset(
        name, splits, num_classes, x_tr.shape[1:], val_size, limit_train, limit_test, standardize
    )
