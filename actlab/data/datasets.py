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
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import math
import os
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from actlab.data import download as dl
from actlab.data.idx import (
    check_idx_pair,
    gunzip_if_needed,
    parse_cifar_batch,
    parse_idx,
    read_bytes,
)
from actlab.errors import DataError

# A label beyond this is a mistake (ids, not class indices): the output layer would have
# that many units per member.
MAX_CLASSES = 100_000
VAL_SPLIT_SEED = 20240611  # fixed: the validation split must not move with experiment seeds
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2

# Searched after data_dir, $ACTLAB_DATA and the user cache; a module-level list so tests can
# hide the machine's own datasets.
SYSTEM_DIRS: list[str] = ["/usr/share/datasets"]

IDX_ROLES = ("train-images", "train-labels", "t10k-images", "t10k-labels")
IDX_FILES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "t10k-images": "t10k-images-idx3-ubyte",
    "t10k-labels": "t10k-labels-idx1-ubyte",
}
CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch.bin"


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: what it looks like and how to get it."""

    name: str
    kind: str  # "idx", "cifar10" or "digits"
    input_shape: tuple[int, int, int]
    num_classes: int
    train_size: int
    test_size: int
    files: tuple[str, ...] = ()  # names as published (what is downloaded)
    install_hint: str = ""  # a system package or other way to get the files
    torchvision_dir: str | None = None  # torchvision's folder name, to reuse its downloads


_IDX_GZ = tuple(f + ".gz" for f in IDX_FILES.values())
_IMAGE_28 = {"kind": "idx", "input_shape": (1, 28, 28), "num_classes": 10, "files": _IDX_GZ}
REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "mnist", **_IMAGE_28, train_size=60000, test_size=10000, torchvision_dir="MNIST"
        ),
        DatasetSpec(
            "fashion-mnist",
            **_IMAGE_28,
            train_size=60000,
            test_size=10000,
            install_hint="install it with `apt-get install dataset-fashion-mnist`",
            torchvision_dir="FashionMNIST",
        ),
        DatasetSpec(
            "kmnist", **_IMAGE_28, train_size=60000, test_size=10000, torchvision_dir="KMNIST"
        ),
        DatasetSpec(
            "digits",
            kind="digits",
            input_shape=(1, 8, 8),
            num_classes=10,
            train_size=1438,
            test_size=359,
            install_hint="install scikit-learn (`pip install scikit-learn`)",
        ),
        DatasetSpec(
            "cifar10",
            kind="cifar10",
            input_shape=(3, 32, 32),
            num_classes=10,
            train_size=50000,
            test_size=10000,
            files=(CIFAR_ARCHIVE,),
        ),
    )
}
ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "k-mnist": "kmnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}
PATH_SCHEMES = ("npz:PATH", "idx:DIR")


@dataclass(frozen=True)
class Dataset:
    """Whole splits as tensors. Images are uint8 (N, C, H, W); npz data may be float32."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    source: str  # the folder or file the data came from, or "sklearn"
    mean: float | None = None  # of the scaled train split, when standardize=True
    std: float | None = None
    scale: float = 255.0  # x / scale maps stored values to [0, 1] (16 for digits, 1 for float npz)
    checksums: dict[str, str] = field(default_factory=dict, compare=False)  # file -> ok/unknown

    def float_inputs(self, x: Tensor) -> Tensor:
        """float32 x / scale, then (x - mean) / std when standardised."""
        out = x.to(torch.float32) / self.scale
        if self.mean is not None and self.std is not None:
            out = (out - self.mean) / self.std
        return out

    @property
    def train_size(self) -> int:
        return len(self.y_train)

    @property
    def val_size(self) -> int:
        return len(self.y_val)

    @property
    def test_size(self) -> int:
        return len(self.y_test)

    def summary(self) -> dict:
        """The "dataset" block of a run directory's config.json."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "train_size": self.train_size,
            "val_size": self.val_size,
            "test_size": self.test_size,
            "source": self.source,
            "mean": self.mean,
            "std": self.std,
            "fingerprint": self.fingerprint(),
        }

    def fingerprint(self) -> str:
        """SHA-256 over the splits as trained on (shapes, dtypes and bytes of x and y of train,
        val and test), so that a study is never resumed on other data (see actlab.study.store)."""
        digest = hashlib.sha256()
        for tensor in (
            self.x_train,
            self.y_train,
            self.x_val,
            self.y_val,
            self.x_test,
            self.y_test,
        ):
            array = tensor.detach().cpu().contiguous().numpy()
            digest.update(f"{array.dtype.str}{array.shape};".encode())
            digest.update(array.reshape(-1).view(np.uint8))
        return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class _Splits:
    """What a reader returns before the val/limit splits (numpy arrays)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    scale: float = 255.0
    checksums: dict[str, str] = field(default_factory=dict)


# --- public API ----------------------------------------------------------------------------


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
    return _make_dataset(
        canonical, splits, num_classes, input_shape, val_size, limit_train, limit_test, standardize
    )


def resolve_name(name: str) -> str:
    """The registered name for `name` (case and aliases folded), or DataError with the nearest."""
    if name.startswith(("npz:", "idx:")):
        return name
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in REGISTRY:
        return key
    choices = [*REGISTRY, *ALIASES]
    close = difflib.get_close_matches(key, choices, n=3, cutoff=0.5)
    close = list(dict.fromkeys(ALIASES.get(c, c) for c in close))
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise DataError(
        f"unknown dataset {name!r}; {hint}known: {', '.join(REGISTRY)}, {', '.join(PATH_SCHEMES)}"
    )


def cache_dir() -> Path:
    """Where downloads go: $XDG_CACHE_HOME/actlab, default ~/.cache/actlab."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "actlab"


def search_dirs(name: str, data_dir: str | None = None) -> list[Path]:
    """Folders searched for a registered dataset's files, in order."""
    spec = REGISTRY[name]
    dirs: list[Path] = []
    roots = [data_dir, os.environ.get("ACTLAB_DATA") or None]
    for root in roots:
        if root:
            root_path = Path(root).expanduser()
            dirs += [root_path / name, root_path]
            if spec.torchvision_dir:
                dirs.append(root_path / spec.torchvision_dir / "raw")
    dirs.append(cache_dir() / name)
    dirs += [Path(system) / name for system in SYSTEM_DIRS]
    return list(dict.fromkeys(dirs))


def list_datasets(data_dir: str | None = None) -> list[dict]:
    """One row per registered dataset, for `actlab datasets`."""
    return [dataset_info(name, data_dir) for name in REGISTRY]


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
        _how_to_get(spec),
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
    found = _locate(spec, data_dir)
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


# --- lookup --------------------------------------------------------------------------------


def _locate(spec: DatasetSpec, data_dir: str | None) -> tuple[Path, dict[str, Path]] | None:
    """The first folder holding the whole dataset, and its files by role."""
    for folder in search_dirs(spec.name, data_dir):
        files = _files_in(spec, folder)
        if files is not None:
            return folder, files
    return None


def _files_in(spec: DatasetSpec, folder: Path) -> dict[str, Path] | None:
    if not folder.is_dir():
        return None
    if spec.kind == "idx":
        return _idx_files_exact(folder)
    if spec.kind == "cifar10":
        return _cifar_files(folder)
    return None


def _idx_files_exact(folder: Path) -> dict[str, Path] | None:
    """The four MNIST-layout files by role (name, name.gz, or Kaggle's train-images.idx3-ubyte)."""
    files = {}
    for role, stem in IDX_FILES.items():
        dotted = stem.replace("-idx", ".idx")
        for candidate in (stem + ".gz", stem, dotted, dotted + ".gz"):
            if (folder / candidate).is_file():
                files[role] = folder / candidate
                break
        else:
            return None
    return files


def _idx_files_any(folder: Path) -> dict[str, Path]:
    """For idx:DIR: the file starting with each role (t10k- or test-), .gz preferred."""
    if not folder.is_dir():
        raise DataError(
            f"idx:{folder}: not a folder; give a folder with train/t10k images/labels IDX files"
        )
    files = {}
    for role in IDX_ROLES:
        prefixes = (role, role.replace("t10k", "test"))
        matches = sorted(
            p
            for p in folder.iterdir()
            if p.is_file()
            and p.name.startswith(prefixes)
            and not p.name.startswith(".")
            and not p.name.endswith(".part")
        )
        if not matches:
            raise DataError(
                f"idx:{folder}: no {role}* file; expected {', '.join(r + '*' for r in IDX_ROLES)}"
            )
        names = {p.name.removesuffix(".gz") for p in matches}
        if len(names) > 1:
            raise DataError(
                f"idx:{folder}: several {role}* files ({', '.join(p.name for p in matches)}); keep one"
            )
        gz = [p for p in matches if p.name.endswith(".gz")]
        files[role] = gz[0] if gz else matches[0]
    return files


def _cifar_files(folder: Path) -> dict[str, Path] | None:
    if (folder / CIFAR_ARCHIVE).is_file():
        return {"archive": folder / CIFAR_ARCHIVE}
    for sub in (folder / "cifar-10-batches-bin", folder):
        wanted = (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH)
        if all((sub / f).is_file() for f in wanted):
            return {f: sub / f for f in wanted}
    return None


def _how_to_get(spec: DatasetSpec, download_failed: bool = False) -> str:
    ways = [spec.install_hint] if spec.install_hint else []
    if spec.kind != "digits":
        ways.append("pass --data-dir")
        urls = dl.file_urls(spec.name, spec.files[0]) if spec.files else []
        if urls:
            url = urls[0] if len(spec.files) == 1 else urls[0].rsplit("/", 1)[0] + "/"
            if download_failed:
                ways.append(f"or fetch {url} by hand into {cache_dir() / spec.name}")
            else:
                ways.append(f"or allow the download from {url}")
    return ", ".join(ways)


def _not_found(
    spec: DatasetSpec, data_dir: str | None, why: str, download_failed: bool = False
) -> DataError:
    searched = ", ".join(str(d) for d in search_dirs(spec.name, data_dir))
    return DataError(
        f"{spec.name} not found in [{searched}]{why}; {_how_to_get(spec, download_failed)}"
        + _offline_alternative(spec, data_dir)
    )


def _offline_alternative(spec: DatasetSpec, data_dir: str | None) -> str:
    """ "; fashion-mnist is here (/usr/share/...): --dataset fashion-mnist" when a dataset of
    the same kind and shape is on disk (offline, the nearest study that can run now)."""
    for name, other in REGISTRY.items():
        if name == spec.name or other.kind != spec.kind or other.input_shape != spec.input_shape:
            continue
        found = _locate(other, data_dir)
        if found is not None:
            return f"; {name} is on this machine ({found[0]}): --dataset {name} runs offline"
    return ""


def _fetch(spec: DatasetSpec, data_dir: str | None, progress: bool) -> tuple[Path, dict[str, Path]]:
    """Download the missing files into the cache; return the folder and its files."""
    target = cache_dir() / spec.name
    # Folders this attempt creates, removed again if it fails empty-handed (no empty
    # ~/.cache/actlab/mnist left behind by an offline machine).
    created = [folder for folder in (target.parent, target) if not folder.exists()]
    try:
        for filename in spec.files:
            if not (target / filename).is_file():
                md5 = dl.CHECKSUMS.get(spec.name, {}).get(filename)
                dl.download(
                    dl.file_urls(spec.name, filename), target / filename, md5=md5, progress=progress
                )
    except DataError as error:
        for folder in reversed(created):
            with contextlib.suppress(OSError):  # not empty, or not ours to remove
                folder.rmdir()
        raise _not_found(
            spec, data_dir, f" and the download failed ({error})", download_failed=True
        ) from None
    files = _files_in(spec, target)
    if files is None:  # pragma: no cover - the loop above put every file there
        raise _not_found(spec, data_dir, "")
    return target, files


# --- readers -------------------------------------------------------------------------------


def _read(name: str, data_dir: str | None, download: bool, progress: bool, verify: bool):
    name = resolve_name(name)
    if name.startswith("npz:"):
        splits = _read_npz(Path(name[4:]).expanduser())
        return splits, name, _count_classes(splits), tuple(splits.x_train.shape[1:])
    if name.startswith("idx:"):
        folder = Path(name[4:]).expanduser()
        splits = _read_idx_files(name, _idx_files_any(folder), folder, verify=False)
        return splits, name, _count_classes(splits), tuple(splits.x_train.shape[1:])
    spec = REGISTRY[name]
    if spec.kind == "digits":
        return _read_digits(), name, spec.num_classes, spec.input_shape
    found = _locate(spec, data_dir)
    if found is None:
        if not download:
            raise _not_found(spec, data_dir, " and downloads are off (--no-download)")
        found = _fetch(spec, data_dir, progress)
    folder, files = found
    if spec.kind == "idx":
        splits = _read_idx_files(name, files, folder, verify)
    else:
        splits = _read_cifar(files, folder, verify)
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


def _checked_bytes(dataset: str, canonical: str, path: Path, verify: bool) -> tuple[bytes, str]:
    """The (decompressed) content of `path` and its checksum status (not raised here, so that a
    truncated or malformed file gets its more specific error from the parser first)."""
    file_bytes = read_bytes_raw(path)
    content = gunzip_if_needed(file_bytes, path)
    if content is not file_bytes:
        canonical += ".gz"
    status = dl.checksum_status(dataset, canonical, file_bytes, content) if verify else "unverified"
    return content, status


def _refuse_mismatches(dataset: str, statuses: dict[str, str], folder: Path) -> None:
    for filename, status in statuses.items():
        if status == "mismatch":
            # A system file (a Debian package's, under /usr/share) is not the user's to
            # delete: the way out is the package manager.
            system = any(Path(folder).is_relative_to(d) for d in SYSTEM_DIRS) or not os.access(
                folder, os.W_OK
            )
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


def read_bytes_raw(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None


def _read_idx_files(dataset: str, files: dict[str, Path], folder: Path, verify: bool) -> _Splits:
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
    return _Splits(
        x_train[:, None], y_train, x_test[:, None], y_test, source=str(folder), checksums=statuses
    )


def _read_cifar(files: dict[str, Path], folder: Path, verify: bool) -> _Splits:
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
    return _Splits(
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


def _read_digits() -> _Splits:
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
    return _Splits(
        images[train_idx],
        labels[train_idx],
        images[test_idx],
        labels[test_idx],
        source="sklearn",
        scale=16.0,
    )


def _read_npz(path: Path) -> _Splits:
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
    return _Splits(x_train, y_train, x_test, y_test, source=str(path), scale=scale)


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
        _check_float32_range(x, f"npz:{path}: {key}")
        return np.ascontiguousarray(x, dtype=np.float32)
    raise DataError(f"npz:{path}: {key} has dtype {x.dtype}; expected uint8 or float")


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_float32_range(x: np.ndarray, where: str) -> None:
    """Values must survive the cast to float32 (beyond 3.4e38 they become inf, and every
    member then diverges with no word about the data)."""
    if x.size and x.dtype.itemsize > 4 and float(np.abs(x).max()) > FLOAT32_MAX:
        raise DataError(
            f"{where} holds values up to {float(np.abs(x).max()):.3g}, beyond float32 "
            "(3.4e38), the dtype the networks train in; rescale the data"
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


def _count_classes(splits: _Splits) -> int:
    top = max((int(y.max()) for y in (splits.y_train, splits.y_test) if y.size), default=-1)
    return top + 1


def _peek(spec: DatasetSpec, files: dict[str, Path]) -> tuple[tuple[int, int], dict[str, str]]:
    """Train/test sizes and checksum status of found files, without building tensors."""
    statuses = {}
    if spec.kind == "cifar10":
        for name, path in files.items():
            if name == "archive":
                _, statuses[path.name] = _checked_bytes_status(
                    spec.name, CIFAR_ARCHIVE.removesuffix(".gz"), path
                )
            else:
                statuses[path.name] = "unknown"
        return (spec.train_size, spec.test_size), statuses
    sizes = {}
    for role, path in files.items():
        content, statuses[path.name] = _checked_bytes_status(spec.name, IDX_FILES[role], path)
        if role.endswith("labels") and len(content) >= 8:
            sizes[role] = int.from_bytes(content[4:8], "big")
    return (sizes.get("train-labels", 0), sizes.get("t10k-labels", 0)), statuses


def _checked_bytes_status(dataset: str, canonical: str, path: Path) -> tuple[bytes, str]:
    """Like `_checked_bytes`, but a mismatch or a corrupt file is a status, not an error."""
    try:
        file_bytes = read_bytes_raw(path)
        content = gunzip_if_needed(file_bytes, path)
    except DataError:
        return b"", f"unreadable: {path.name}"
    if content is not file_bytes:
        canonical += ".gz"
    status = dl.checksum_status(dataset, canonical, file_bytes, content)
    return content, f"mismatch: {path.name}" if status == "mismatch" else status


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
        "found": found,
        "where": where,
        "train_size": train_size,
        "test_size": test_size,
        "input_shape": tuple(input_shape),
        "num_classes": num_classes,
        "checksum": checksum,
    }


# --- splits --------------------------------------------------------------------------------


def _make_dataset(
    name, splits: _Splits, num_classes, input_shape, val_size, limit_train, limit_test, standardize
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


def format_dataset_table(rows: list[dict]) -> str:
    """A plain-text table of `list_datasets` rows (the `actlab datasets` output)."""
    header = (
        "dataset",
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
                "found" if row["found"] else "missing",
                str(row["train_size"]),
                str(row["test_size"]),
                "x".join(str(s) for s in row["input_shape"]),
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
                _check_float32_range(x, f"dataset {label}")
        x_tr, x_te = x_tr.astype(np.float32), x_te.astype(np.float32)
    splits = _Splits(x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64), "python", scale)
    num_classes = int(labels.max()) + 1 if labels.size else 0
    return _make_dataset(
        name, splits, num_classes, x_tr.shape[1:], val_size, limit_train, limit_test, standardize
    )
