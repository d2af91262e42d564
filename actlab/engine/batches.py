"""The training data on the device and the order it is drawn in: `DeviceData` (the splits as
float32 tensors, converted once and shared by depths), one batch-order generator per seed
(members that share a seed share the batch order: a paired comparison), each epoch's
permutation and the batches' bounds within it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class DeviceData:
    """The dataset as float32 tensors on the device (converted once, shared by depths)."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    input_shape: tuple[int, int, int]

    @classmethod
    def from_dataset(cls, dataset, device: torch.device | str) -> DeviceData:
        def put(x: Tensor) -> Tensor:
            return dataset.float_inputs(x).to(device)

        def targets(y: Tensor) -> Tensor:  # class indices int64, a regression's float32
            return y.to(device, torch.float32 if y.is_floating_point() else torch.long)

        return cls(
            put(dataset.x_train),
            targets(dataset.y_train),
            put(dataset.x_val),
            targets(dataset.y_val),
            put(dataset.x_test),
            targets(dataset.y_test),
            int(dataset.num_classes),
            tuple(dataset.input_shape),
        )


def batch_bounds(n: int, batch: int, *, merge_single: bool = False) -> list[tuple[int, int]]:
    """(begin, end) of each step's samples in an epoch's permutation: batches of `batch`,
    the last partial one kept (``DataLoader(drop_last=False)``). `merge_single`: a last
    batch of one sample is merged into the one before (BatchNorm cannot train on one
    sample: torch raises "Expected more than 1 value per channel when training")."""
    bounds = [(begin, min(begin + batch, n)) for begin in range(0, n, batch)]
    if merge_single and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def shuffle_generator(seed: int) -> torch.Generator:
    """The generator of a seed's batch order (one permutation of the train set per epoch)."""
    return torch.Generator().manual_seed(seed)


def epoch_permutation(generator: torch.Generator, size: int) -> Tensor:
    return torch.randperm(size, generator=generator)


def device_data(dataset, device: torch.device | str):
    """The dataset on the device: a DeviceData, or the token splits of a text corpus."""
    if getattr(dataset, "task", "classify") == "lm":
        from actlab.engine.lm_trainer import TextDeviceData

        return dataset if isinstance(dataset, TextDeviceData) else TextDeviceData(dataset, device)
    return DeviceData.from_dataset(dataset, device)
