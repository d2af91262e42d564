"""Dropout with per-member masks inside a stacked user model.

Every ``nn.Dropout`` of a member becomes a `MemberDropout`, whose masks come from the
member's own generator (seeded by its seed alone), drawn site by site in forward order:
``mask = bernoulli(1 - p) / (1 - p)``. Masks never depend on which other members are in the
stack (a shard of members draws the same ones), and the members of a seed share them, as
they share the batch order (a paired comparison).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from actlab.nn.models import DROPOUT_SEED_OFFSET


class MaskSource:
    """Where the MemberDropout modules of one group take their masks from.

    mode "queue": the masks of this forward, drawn beforehand (inside vmap: batched);
    "member": drawn now from `generator` (one member at a time); "record": no dropout,
    the input shapes are recorded (to draw the masks of a batch shape beforehand)."""

    def __init__(self) -> None:
        self.mode = "record"
        self.queue: list[Tensor] = []
        self.shapes: list[tuple[tuple[int, ...], float]] = []  # (input shape, p) per call
        self.generator: torch.Generator | None = None

    def mask(self, x: Tensor, p: float) -> Tensor:
        if self.mode == "queue":
            return self.queue.pop(0)
        if self.mode == "member":
            return draw_mask(tuple(x.shape), p, self.generator, x.dtype, x.device)
        self.shapes.append((tuple(x.shape), p))
        return torch.ones_like(x)


class MemberDropout(nn.Module):
    """``nn.Dropout(p)`` with the mask of its member (see MaskSource); off in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        self.source: MaskSource | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or self.source is None:
            return x
        return x * self.source.mask(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def draw_mask(
    shape: tuple[int, ...], p: float, generator: torch.Generator, dtype, device
) -> Tensor:
    """Inverted-dropout mask: 1/(1-p) with probability 1-p, else 0 (as nn.Dropout)."""
    keep = 1.0 - p
    mask = torch.empty(shape, dtype=dtype, device=generator.device)
    return mask.bernoulli_(keep, generator=generator).div_(keep).to(device)


def dropout_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of a member's dropout masks: its seed alone decides them."""
    return torch.Generator(device=device).manual_seed(seed + DROPOUT_SEED_OFFSET)


def replace_dropout(model: nn.Module) -> int:
    """Replace every nn.Dropout in `model` by a MemberDropout of the same p; the count."""
    count = 0
    for name, child in list(model.named_children()):
        if type(child) is nn.Dropout:
            setattr(model, name, MemberDropout(child.p))
            count += 1
        else:
            count += replace_dropout(child)
    return count


# === one activation group ================================================================
