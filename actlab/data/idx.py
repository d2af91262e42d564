"""Readers for the IDX format (MNIST family) and the CIFAR-10 binary format, and writers
for tests.

IDX (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header
``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the data in
C order. Files may be raw or gzip-compressed (detected by the gzip magic ``1f 8b``, not by
the file name).

CIFAR-10 binary (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html): records
of 1 label byte + 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each a row-major
32x32 plane), 10000 records per batch file. The pickled Python version is never read:
unpickling a download can run arbitrary code.

Every problem raises `DataError` with one line naming the file; no reader ever returns a
tensor built from a file it could not fully validate.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from actlab.errors import DataError

# IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"

CIFAR_IMAGE_SHAPE = (3, 32, 32)
CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32


def read_raw_bytes(path: str | os.PathLike) -> bytes:
    """The file's content as stored; a file that cannot be read is a DataError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic."""
    return gunzip_if_needed(read_raw_bytes(path), path)


def gunzip_if_needed(data: bytes, path: str | os.PathLike) -> bytes:
    """Decompress `data` when it is gzip; zlib with wbits=31 is the fast path (no Python loop)."""
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        decompressor = zlib.decompressobj(wbits=31)
        out = decompressor.decompress(data)
        if not decompressor.eof:
            raise DataError(
                f"{path}: truncated gzip file (the stream ends early); delete it and get it again"
            )
        return out
    except zlib.error as error:
        raise DataError(
            f"{path}: corrupt gzip file ({error}); delete it and get it again"
        ) from None


def parse_idx(data: bytes, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into a read-only array of native byte order.

    Raises DataError for a wrong magic number, an unknown dtype code, or a data section
    whose length does not match the header (truncated or with trailing bytes).
    """
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES or data[3] == 0:
        magic = int.from_bytes(data[:4], "big")
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x} for an IDX file "
            "(expected 0x0000TTNN: 0x00000801 for labels, 0x00000803 for images)"
        )
    dtype = IDX_DTYPES[data[2]]
    ndim = data[3]
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise DataError(
            f"{path}: truncated IDX file (header needs {header_bytes} bytes, file has {len(data)})"
        )
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a header cannot overflow it
    found = len(data) - header_bytes
    if found < expected:
        raise DataError(
            f"{path}: truncated IDX file (header says shape {shape}: {expected} data bytes, found {found})"
        )
    if found > expected:
        raise DataError(
            f"{path}: IDX file has {found - expected} trailing bytes after shape {shape}; the file is corrupt"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_bytes).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (raw or gzip) into an array (see `parse_idx`)."""
    return parse_idx(read_bytes(path), path)


def read_idx_pair(
    images_path: str | os.PathLike, labels_path: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) int64 from two IDX files, checked against each other."""
    return check_idx_pair(read_idx(images_path), read_idx(labels_path), images_path, labels_path)


def check_idx_pair(
    images: np.ndarray,
    labels: np.ndarray,
    images_path: str | os.PathLike,
    labels_path: str | os.PathLike,
) -> tuple[np.ndarray, np.ndarray]:
    """Refuse an image/label pair that does not belong together; labels come back int64."""
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(
            f"{images_path}: expected uint8 images of 3 dimensions (N, H, W), "
            f"found {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(
            f"{labels_path}: expected uint8 labels of 1 dimension (N,), "
            f"found {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path}: {len(images)} images but {Path(labels_path).name} has "
            f"{len(labels)} labels; the two files do not belong together"
        )
    return images, labels.astype(np.int64)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write `array` as an IDX file; gzip-compressed when the name ends in .gz (for tests)."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise DataError(f"{path}: dtype {array.dtype} cannot be written as IDX")
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(IDX_DTYPES[code], copy=False).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path


def parse_cifar_batch(
    data: bytes, path: str | os.PathLike = "<bytes>"
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 from one CIFAR-10 binary batch."""
    if len(data) == 0 or len(data) % CIFAR_RECORD_BYTES != 0:
        raise DataError(
            f"{path}: {len(data)} bytes is not a whole number of CIFAR-10 records "
            f"({CIFAR_RECORD_BYTES} bytes each); the file is truncated or not the binary version"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= 10:
        raise DataError(
            f"{path}: label {int(labels.max())} out of range 0..9; not a CIFAR-10 binary batch"
        )
    images = records[:, 1:].reshape(-1, *CIFAR_IMAGE_SHAPE)
    return images, labels


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch file (data_batch_N.bin or test_batch.bin)."""
    return parse_cifar_batch(read_bytes(path), path)


def write_cifar_batch(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write (N, 3, 32, 32) uint8 images and labels as a CIFAR-10 binary batch (for tests)."""
    path = Path(path)
    images = np.asarray(images, dtype=np.uint8).reshape(len(images), -1)
    records = np.concatenate([np.asarray(labels, dtype=np.uint8)[:, None], images], axis=1)
    path.write_bytes(records.tobytes())
    return path
