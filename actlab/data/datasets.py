"""Datasets as whole tensors: a registry, offline-first file lookup, verified loading, splits.

Names: ``mnist``, ``fashion-mnist``, ``kmnist`` (28x28 IDX files, raw or .gz), ``digits``
(scikit-learn's bundled 8x8 set), ``cifar10`` (the binary version only), ``npz:PATH`` and
``idx:DIR``. Each split is one uint8 tensor (N, C, H, W) plus int64 labels (N,); there is
no per-sample Dataset and no PIL. `Dataset.float_inputs` gives float32 x/255 (x/16 for
digits), standardised with the train split's mean and std when asked.

Files are looked for, in order, in: ``data_dir`` (and ``data_dir/<name>``, and torchvision's
``data_dir/<Name>/raw``); ``$ACTLAB_DATA``; ``$XDG_CACHE_HOME/actlab/<name>`` (default
``~/.cache/actlab``); ``/usr/share/datasets/<name>`` (Debian's dataset-fashion-mnist). If
none has them, they are downloaded from the official mirrors into the cache (see
`actlab.data.download`) unless ``download=False``. Files with a known published checksum are
verified every time they are read; a mismatch is an error naming the file (set
``$ACTLAB_VERIFY=0`` or pass ``verify=False`` to skip verification).

Splits, in this order: ``val_size`` samples are held out from train for validation with a
fixed seed (`VAL_SPLIT_SEED`, independent of the experiment seeds); then ``limit_train``
keeps the first N of the remaining train samples and ``limit_test`` the first N test
samples (a limit larger than the split keeps it whole). The test split is never used for
validation.

This module is the public face (`load_dataset`, `list_datasets`, `dataset_info`); the parts
live in: actlab.data.registry (names and specs), actlab.data.locate (the search path and
the download), actlab.data.readers and actlab.data.npz (file formats), actlab.data.splits
(validation split, limits, checks; `from_tensors`) and actlab.data.dataset (`Dataset`).
"""

from __future__ import annotations

import os
from pathlib import Path

from actlab.data.dataset import Dataset, RawSplits
from actlab.data.locate import fetch, find_on_disk, how_to_get, idx_files_any, not_found
from actlab.data.npz import read_npz
from actlab.data.readers import checked_bytes_status, read_cifar, read_digits, read_idx_files
from actlab.data.registry import CIFAR_ARCHIVE, IDX_FILES, REGISTRY, DatasetSpec, resolve_name
from actlab.data.regression import load_regression
from actlab.data.splits import make_dataset
from actlab.data.text import SCHEME as TEXT_SCHEME
from actlab.data.text import STDLIB, split_bytes, stdlib_corpus
from actlab.errors import DataError
from actlab.tasks import REGRESSION_DATASETS as REGRESSION_NAMES


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    download: bool = True,
    val_size: float = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    standardize: bool = False,
    progress: bool = True,
    verify: bool | None = None,
) -> Dataset:
    """Load a dataset whole, split it, and return it as tensors (see the module docstring).

    ``verify=None`` means: verify unless ``$ACTLAB_VERIFY=0``.
    """
    if verify is None:
        verify = os.environ.get("ACTLAB_VERIFY", "1") != "0"
    splits, canonical, num_classes, input_shape = _read(name, data_dir, download, progress, verify)
    return make_dataset(
        canonical, splits, num_classes, input_shape, val_size, limit_train, limit_test, standardize
    )


def list_datasets(data_dir: str | None = None) -> list[dict]:
    """One row per dataset, for `actlab datasets`: the image classifiers of the registry,
    then the regression datasets (actlab.data.regression) and the text corpus every
    machine has (``text:stdlib``, actlab.data.text)."""
    rows = [dataset_info(name, data_dir) for name in REGISTRY]
    return rows + [_regression_row(name) for name in REGRESSION_NAMES] + [_stdlib_row()]


def _regression_row(name: str) -> dict:
    try:
        dataset = load_regression(name)
    except (DataError, ImportError) as error:
        return {**_info_row(name, False, str(error), "-", "-", (), "-", "-"), "task": "regress"}
    return {
        **_info_row(
            name, True, "sklearn (bundled)", dataset.train_size, dataset.test_size, dataset.input_shape,
            "-", "unknown",
        ),
        "task": "regress",
    }  # fmt: skip


def _stdlib_row() -> dict:
    """``text:stdlib``: sizes are bytes of the train and test splits (tokens are bytes)."""
    name = TEXT_SCHEME + STDLIB
    try:
        data, source = stdlib_corpus()
    except DataError as error:
        return {**_info_row(name, False, str(error), "-", "-", (), 256, "-"), "task": "lm"}
    train, _, test = split_bytes(len(data))
    return {
        **_info_row(
            name, True, source, train.stop - train.start, test.stop - test.start, (), 256,
            "fingerprinted",
        ),
        "task": "lm",
    }  # fmt: skip


def dataset_info(name: str, data_dir: str | None = None) -> dict:
    """Where `name` is found (or how to get it), its sizes, shape, classes and checksum status.

    Keys: name, found (bool), where, train_size, test_size, input_shape, num_classes,
    checksum ('ok', 'mismatch: FILE', 'unknown', or '-' when not found).
    """
    name = resolve_name(name)
    if name.startswith(("npz:", "idx:")):
        dataset = load_dataset(
            name, data_dir=data_dir, download=False, progress=False, verify=False
        )
        return _info_row(
            name,
            True,
            dataset.source,
            dataset.train_size,
            dataset.test_size,
            dataset.input_shape,
            dataset.num_classes,
            _combine(dataset.checksums),
        )
    spec = REGISTRY[name]
    row = _info_row(
        name,
        False,
        how_to_get(spec),
        spec.train_size,
        spec.test_size,
        spec.input_shape,
        spec.num_classes,
        "-",
    )
    if spec.kind == "digits":
        try:
            import sklearn  # noqa: F401
        except ImportError:
            return row
        return {**row, "found": True, "where": "sklearn (bundled)", "checksum": "unknown"}
    found = find_on_disk(spec, data_dir)
    if found is None:
        return row
    folder, files = found
    sizes, statuses = _peek(spec, files)
    return {
        **row,
        "found": True,
        "where": str(folder),
        "train_size": sizes[0],
        "test_size": sizes[1],
        "checksum": _combine(statuses),
    }


def _read(name: str, data_dir: str | None, download: bool, progress: bool, verify: bool):
    name = resolve_name(name)
    if name.startswith("npz:"):
        splits = read_npz(Path(name[4:]).expanduser())
        return splits, name, _count_classes(splits), tuple(splits.x_train.shape[1:])
    if name.startswith("idx:"):
        folder = Path(name[4:]).expanduser()
        splits = read_idx_files(name, idx_files_any(folder), folder, verify=False)
        return splits, name, _count_classes(splits), tuple(splits.x_train.shape[1:])
    spec = REGISTRY[name]
    if spec.kind == "digits":
        return read_digits(), name, spec.num_classes, spec.input_shape
    found = find_on_disk(spec, data_dir)
    if found is None:
        if not download:
            raise not_found(spec, data_dir, " and downloads are off (--no-download)")
        found = fetch(spec, data_dir, progress)
    folder, files = found
    if spec.kind == "idx":
        splits = read_idx_files(name, files, folder, verify)
    else:
        splits = read_cifar(files, folder, verify)
    got_shape = tuple(splits.x_train.shape[1:])
    if got_shape != spec.input_shape:
        raise DataError(
            f"{folder}: {name} images have shape {got_shape}, expected {spec.input_shape}"
        )
    for labels, role in ((splits.y_train, "train"), (splits.y_test, "test")):
        if len(labels) and labels.max() >= spec.num_classes:
            raise DataError(
                f"{folder}: {role} label {int(labels.max())} out of range 0..{spec.num_classes - 1} for {name}"
            )
    return splits, name, spec.num_classes, spec.input_shape


def _count_classes(splits: RawSplits) -> int:
    top = max((int(y.max()) for y in (splits.y_train, splits.y_test) if y.size), default=-1)
    return top + 1


def _peek(spec: DatasetSpec, files: dict[str, Path]) -> tuple[tuple[int, int], dict[str, str]]:
    """Train/test sizes and checksum status of found files, without building tensors."""
    statuses = {}
    if spec.kind == "cifar10":
        for name, path in files.items():
            if name == "archive":
                _, statuses[path.name] = checked_bytes_status(
                    spec.name, CIFAR_ARCHIVE.removesuffix(".gz"), path
                )
            else:
                statuses[path.name] = "unknown"
        return (spec.train_size, spec.test_size), statuses
    sizes = {}
    for role, path in files.items():
        content, statuses[path.name] = checked_bytes_status(spec.name, IDX_FILES[role], path)
        if role.endswith("labels") and len(content) >= 8:
            sizes[role] = int.from_bytes(content[4:8], "big")
    return (sizes.get("train-labels", 0), sizes.get("t10k-labels", 0)), statuses


def _combine(statuses: dict[str, str]) -> str:
    values = list(statuses.values())
    for value in values:
        if value.startswith(("mismatch", "unreadable")):
            return value
    if not values or any(v != "ok" for v in values):
        return "unknown"
    return "ok"


def _info_row(
    name, found, where, train_size, test_size, input_shape, num_classes, checksum
) -> dict:
    return {
        "name": name,
        "task": "classify",
        "found": found,
        "where": where,
        "train_size": train_size,
        "test_size": test_size,
        "input_shape": tuple(input_shape),
        "num_classes": num_classes,
        "checksum": checksum,
    }


def format_dataset_table(rows: list[dict]) -> str:
    """A plain-text table of `list_datasets` rows (the `actlab datasets` output)."""
    header = (
        "dataset",
        "task",
        "status",
        "train",
        "test",
        "shape",
        "classes",
        "checksum",
        "where / how to get it",
    )
    lines = [header]
    for row in rows:
        lines.append(
            (
                row["name"],
                row["task"],
                "found" if row["found"] else "missing",
                str(row["train_size"]),
                str(row["test_size"]),
                "x".join(str(s) for s in row["input_shape"]) or "bytes",
                str(row["num_classes"]),
                row["checksum"],
                row["where"],
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True))
        + "  "
        + line[-1]
        for line in lines
    )
