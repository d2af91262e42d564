"""Readers of the registered layouts into `RawSplits`: MNIST-style IDX files (mnist,
fashion-mnist, kmnist, ``idx:DIR``), the CIFAR-10 binary batches (the archive, read without
extracting, or its folder) and scikit-learn's bundled digits (split with a fixed seed). Each
file's published checksum is checked as it is read (see actlab.data.download).
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np

from actlab.data import download as dl
from actlab.data import locate
from actlab.data.dataset import RawSplits
from actlab.data.idx import (
    check_idx_pair,
    gunzip_if_needed,
    parse_cifar_batch,
    parse_idx,
    read_bytes,
    read_raw_bytes,
)
from actlab.data.registry import CIFAR_ARCHIVE, CIFAR_TEST_BATCH, CIFAR_TRAIN_BATCHES, IDX_FILES
from actlab.errors import DataError

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def _checked_bytes(dataset: str, canonical: str, path: Path, verify: bool) -> tuple[bytes, str]:
    """The (decompressed) content of `path` and its checksum status (not raised here, so that a
    truncated or malformed file gets its more specific error from the parser first)."""
    file_bytes = read_raw_bytes(path)
    content = gunzip_if_needed(file_bytes, path)
    if content is not file_bytes:
        canonical += ".gz"
    status = dl.checksum_status(dataset, canonical, file_bytes, content) if verify else "unverified"
    return content, status


def checked_bytes_status(dataset: str, canonical: str, path: Path) -> tuple[bytes, str]:
    """Like `_checked_bytes`, but a mismatch or a corrupt file is a status, not an error."""
    try:
        content, status = _checked_bytes(dataset, canonical, path, verify=True)
    except DataError:
        return b"", f"unreadable: {path.name}"
    return content, f"mismatch: {path.name}" if status == "mismatch" else status


def _refuse_mismatches(dataset: str, statuses: dict[str, str], folder: Path) -> None:
    for filename, status in statuses.items():
        if status == "mismatch":
            # A system file (a Debian package's, under /usr/share) is not the user's to
            # delete: the way out is the package manager.
            system = any(
                Path(folder).is_relative_to(d) for d in locate.SYSTEM_DIRS
            ) or not os.access(folder, os.W_OK)
            way_out = (
                "it is a system file: reinstall the package that provides it "
                f"(e.g. apt-get install --reinstall dataset-{dataset})"
                if system
                else "delete it to get it again"
            )
            raise DataError(
                f"{folder / filename}: checksum does not match the published one for {dataset}; "
                f"the file is corrupt or not this dataset: {way_out}, "
                "or set ACTLAB_VERIFY=0 to skip the check"
            )


def read_idx_files(dataset: str, files: dict[str, Path], folder: Path, verify: bool) -> RawSplits:
    arrays = {}
    statuses = {}
    for role, path in files.items():
        content, statuses[path.name] = _checked_bytes(dataset, IDX_FILES[role], path, verify)
        arrays[role] = parse_idx(content, path)
    x_train, y_train = check_idx_pair(
        arrays["train-images"], arrays["train-labels"], files["train-images"], files["train-labels"]
    )
    x_test, y_test = check_idx_pair(
        arrays["t10k-images"], arrays["t10k-labels"], files["t10k-images"], files["t10k-labels"]
    )
    _refuse_mismatches(dataset, statuses, folder)
    return RawSplits(
        x_train[:, None], y_train, x_test[:, None], y_test, source=str(folder), checksums=statuses
    )


def read_cifar(files: dict[str, Path], folder: Path, verify: bool) -> RawSplits:
    if "archive" in files:
        archive = files["archive"]
        content, status = _checked_bytes(
            "cifar10", CIFAR_ARCHIVE.removesuffix(".gz"), archive, verify
        )
        statuses = {archive.name: status}
        batches = _tar_members(archive, content, (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH))
        source = str(archive)
    else:
        batches = {name: read_bytes(path) for name, path in files.items()}
        statuses = {name: "unknown" for name in files}  # no published per-batch sums
        source = str(files[CIFAR_TEST_BATCH].parent)
    train = [
        parse_cifar_batch(batches[b], files.get(b, f"{source}:{b}")) for b in CIFAR_TRAIN_BATCHES
    ]
    x_test, y_test = parse_cifar_batch(
        batches[CIFAR_TEST_BATCH], files.get(CIFAR_TEST_BATCH, f"{source}:{CIFAR_TEST_BATCH}")
    )
    if "archive" in files:
        _refuse_mismatches("cifar10", statuses, files["archive"].parent)
    return RawSplits(
        x_train=np.concatenate([x for x, _ in train]),
        y_train=np.concatenate([y for _, y in train]),
        x_test=x_test,
        y_test=y_test,
        source=source,
        checksums=statuses,
    )


def _tar_members(archive: Path, content: bytes, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """Read the named members (by base name) out of an uncompressed tar, without extracting."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(content), mode="r:") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in found:
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        found[base] = extracted.read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(
            f"{archive}: not a readable tar archive ({error}); delete it and get it again"
        ) from None
    missing = [w for w in wanted if w not in found]
    if missing:
        raise DataError(
            f"{archive}: missing {', '.join(missing)}; is this the CIFAR-10 binary version?"
        )
    return found


def read_digits() -> RawSplits:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "the digits dataset needs scikit-learn; install it with `pip install scikit-learn`"
        ) from None
    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[:, None]  # values 0..16
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    n_test = round(DIGITS_TEST_FRACTION * len(labels))
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
    return RawSplits(
        images[train_idx],
        labels[train_idx],
        images[test_idx],
        labels[test_idx],
        source="sklearn",
        scale=16.0,
    )
