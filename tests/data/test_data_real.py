"""The real Fashion-MNIST from Debian's dataset-fashion-mnist (skipped when absent)."""

from pathlib import Path

import pytest
import torch

from actlab.data import datasets as data
from actlab.data.datasets import load_dataset

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(
        not DEBIAN_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist to run this"
    ),
]


def test_fashion_mnist_from_debian(tmp_path, monkeypatch):
    # A private cache and no overrides, so the Debian folder is the one found.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("ACTLAB_DATA", raising=False)
    monkeypatch.delenv("ACTLAB_VERIFY", raising=False)
    ds = load_dataset("fashion-mnist", download=False, progress=False)
    assert ds.source == str(DEBIAN_DIR)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (10000, 1, 28, 28) and ds.x_test.dtype == torch.uint8
    assert ds.y_train.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    assert ds.x_val.shape == (0, 1, 28, 28)
    assert torch.bincount(ds.y_train, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(ds.y_test, minlength=10).tolist() == [1000] * 10
    assert ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert set(ds.checksums.values()) == {"ok"}
    # Pixels span the whole byte range and are not all zero (a wrong offset would shift them).
    assert int(ds.x_train.min()) == 0 and int(ds.x_train.max()) == 255


def test_fashion_mnist_is_listed_as_found_and_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("ACTLAB_DATA", raising=False)
    row = data.dataset_info("fashion-mnist")
    assert row["found"] and row["where"] == str(DEBIAN_DIR)
    assert (row["train_size"], row["test_size"], row["checksum"]) == (60000, 10000, "ok")
