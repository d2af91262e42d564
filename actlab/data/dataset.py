"""What a study trains on: `Dataset`, the splits as tensors with their scale, standardisation
and fingerprint; and `RawSplits`, what a reader returns before the validation split and the
limits are made (see actlab.data.splits).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


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
class RawSplits:
    """What a reader returns before the val/limit splits (numpy arrays)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    scale: float = 255.0
    checksums: dict[str, str] = field(default_factory=dict)
