"""The dataset registry: the names actlab knows (`REGISTRY`, with `ALIASES`), what each looks
like (shape, classes, sizes) and the files it is published as; `resolve_name` folds case
and aliases and names the nearest match for a typo.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from actlab.errors import DataError

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


def resolve_name(name: str) -> str:
    """The registered name for `name` (case and aliases folded), or DataError with the nearest."""
    if name.startswith(("npz:", "idx:")):
        return name
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in REGISTRY:
        return key
    from actlab.tasks import REGRESSION_DATASETS  # read by actlab.data.regression

    choices = [*REGISTRY, *REGRESSION_DATASETS, *ALIASES]
    close = difflib.get_close_matches(key, choices, n=3, cutoff=0.5)
    close = list(dict.fromkeys(ALIASES.get(c, c) for c in close))
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    known = [*REGISTRY, *REGRESSION_DATASETS, *PATH_SCHEMES]
    raise DataError(f"unknown dataset {name!r}; {hint}known: {', '.join(known)}")
