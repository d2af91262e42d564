"""The ``npz:PATH`` reader: a NumPy archive of x_train, y_train, x_test and y_test (no
pickles), each array's header checked before its data is read, images brought to
(N, C, H, W) and labels to int64 class indices.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from actlab.data.dataset import RawSplits
from actlab.data.splits import check_float32_range
from actlab.errors import DataError

# A label beyond this is a mistake (ids, not class indices): the output layer would have
# that many units per member.
MAX_CLASSES = 100_000


def read_npz(path: Path) -> RawSplits:
    """npz with x_train, y_train, x_test, y_test (no pickles).

    Layouts: (N, H, W) -> (N, 1, H, W); (N, H, W, C) with C in {1, 3} -> (N, C, H, W);
    (N, C, H, W) with C in {1, 3} kept; (N, D) -> (N, 1, 1, D). uint8 (or integer 0..255)
    inputs stay uint8 and are scaled by 1/255; float inputs become float32, unscaled.
    """
    if not path.is_file():
        raise DataError(f"npz:{path}: file not found")
    keys = ("x_train", "y_train", "x_test", "y_test")
    if not zipfile.is_zipfile(path):  # a .npy, a pickle or any other file named .npz
        raise DataError(
            f"npz:{path}: not a readable .npz file (not a zip archive); save the arrays with "
            "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise DataError(f"npz:{path}: missing arrays {missing}; it needs {', '.join(keys)}")
            arrays = {k: _npz_array(archive, k, path) for k in keys}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as error:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"npz:{path}: not a readable .npz file ({text})") from None
    x_train, x_test = (_npz_images(arrays[k], path, k) for k in ("x_train", "x_test"))
    y_train, y_test = (_npz_labels(arrays[k], path, k) for k in ("y_train", "y_test"))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"npz:{path}: x_train samples are {x_train.shape[1:]} but x_test samples are {x_test.shape[1:]}"
        )
    if x_train.dtype != x_test.dtype:
        raise DataError(
            f"npz:{path}: x_train is {x_train.dtype} but x_test is {x_test.dtype}; use one dtype"
        )
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(x) != len(y):
            raise DataError(
                f"npz:{path}: x_{split} has {len(x)} samples but y_{split} has {len(y)} labels"
            )
    scale = 255.0 if x_train.dtype == np.uint8 else 1.0
    return RawSplits(x_train, y_train, x_test, y_test, source=str(path), scale=scale)


def _npz_array(archive, key: str, path: Path) -> np.ndarray:
    """One array of an npz, its header checked before the data is read: a header may claim
    a shape the file cannot hold (and numpy would try to allocate it)."""
    member = key + ".npy"
    try:
        with archive.zip.open(member) as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(handle)
        size = archive.zip.getinfo(member).file_size
    except (ValueError, KeyError, OSError, zipfile.BadZipFile, EOFError, SyntaxError) as error:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"npz:{path}: array {key} is not a valid .npy ({text})") from None
    needed = math.prod(shape) * dtype.itemsize
    if needed > size:
        raise DataError(
            f"npz:{path}: array {key} claims shape {shape} ({needed:,} bytes) but holds "
            f"{size:,} bytes; the file is corrupt: write it again with np.savez"
        )
    try:
        return archive[key]
    except MemoryError:
        raise DataError(
            f"npz:{path}: array {key} of shape {shape} does not fit in memory"
        ) from None


def _npz_images(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if x.ndim == 2:
        x = x[:, None, None, :]
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        elif x.shape[1] not in (1, 3):
            raise DataError(
                f"npz:{path}: {key} has shape {x.shape}; 4-D inputs need 1 or 3 channels first or last"
            )
    else:
        raise DataError(
            f"npz:{path}: {key} has shape {x.shape}; expected (N, D), (N, H, W) or (N, H, W, C)"
        )
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(
                f"npz:{path}: {key} is {x.dtype} with values outside 0..255; store uint8 or float"
            )
        return np.ascontiguousarray(x, dtype=np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise DataError(f"npz:{path}: {key} contains NaN or inf")
        check_float32_range(x, f"npz:{path}: {key}")
        return np.ascontiguousarray(x, dtype=np.float32)
    raise DataError(f"npz:{path}: {key} has dtype {x.dtype}; expected uint8 or float")


def _npz_labels(y: np.ndarray, path: Path, key: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"npz:{path}: {key} must be integer class labels of shape (N,), found {y.dtype} {y.shape}"
        )
    if y.size and y.min() < 0:
        raise DataError(f"npz:{path}: {key} has negative label {int(y.min())}; labels are 0..K-1")
    if y.size and int(y.max()) >= MAX_CLASSES:  # also unsigned 64-bit labels beyond int64
        raise DataError(
            f"npz:{path}: {key} has label {int(y.max())}; labels are class indices 0..K-1 "
            f"with K at most {MAX_CLASSES:,}: renumber the classes"
        )
    return y.astype(np.int64)
