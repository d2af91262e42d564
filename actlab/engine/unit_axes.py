"""Which dim of an activation's input holds its units, decided by the layer that produced it.

A **unit** is one neuron: one output feature of the layer whose output the activation
reads. Its values are that feature at every probe sample and every position (time step,
token, pixel). Where that feature sits depends on the producing layer, not on the rank:

- ``nn.Linear``, ``nn.Bilinear``, ``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.Embedding``: the
  **last** dim (features last: ``(B, F)``, ``(B, T, F)`` of a transformer FFN, ``(T, B, F)``
  time first, ``(B, H, W, C)`` channels last);
- ``nn.Conv*d``, ``nn.ConvTranspose*d``, ``nn.BatchNorm*d``, ``nn.GroupNorm``,
  ``nn.InstanceNorm*d``: the **channel** dim, dim 1 of ``(B, C, ...)``;
- a gated unit (``[a, b]`` split on the last dim, actlab.catalog.gated): the last dim;
- any other layer with parameters: the dim whose size is the layer's width
  (``out_features``, ``out_channels``, ``embed_dim``, ``num_features``, ``num_channels``,
  ``hidden_size``, ``embedding_dim``), when exactly one of the first and last per-sample
  dims has it; the same size check overrides a known layer's rule when its dim does not
  have the layer's width (``relu(conv(x).permute(0, 2, 3, 1))``: channels last). A dim is
  found by size alone only when the activation's input has as many elements as the layer's
  output (a permutation, a residual sum): after a pooling or a projection done without a
  module, only the layer's own dim counts (``relu(max_pool(conv(x)))``: its channels).

When none of these decides (no layer with parameters before the activation, a width that
matches no dim or both, a reshape in between), the site's units are **undetermined**: it
gets no dead/saturated fraction rather than a guessed one. A per-sample input of one dim
``(B, F)`` needs no rule: its units are its F features.

The producer is the last module with parameters (or a known normalisation) whose forward
completed before the activation was called, recorded by forward hooks during the probe's
forward (`recording_producers`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from actlab.engine.diagnostics import gate_input, unit_fractions
from actlab.engine.member_group import notice

LAST_DIM = (nn.Linear, nn.Bilinear, nn.LayerNorm, nn.RMSNorm, nn.Embedding)
CHANNEL_DIM = (_ConvNd, _BatchNorm, nn.GroupNorm, _InstanceNorm)
WIDTH_NAMES = (
    "out_features", "out_channels", "embed_dim", "num_features", "num_channels",
    "hidden_size", "embedding_dim",
)  # fmt: skip


def is_producer(module: nn.Module) -> bool:
    """A layer that makes features: it has parameters of its own, or is a known kind
    (an InstanceNorm or GroupNorm without affine parameters)."""
    if isinstance(module, LAST_DIM + CHANNEL_DIM):
        return True
    return next(module.parameters(recurse=False), None) is not None


class Made(NamedTuple):
    """The producer of an activation call's input and the element count of its output
    (a tuple's first tensor; None when it returned no tensor)."""

    module: nn.Module | None
    numel: int | None = None


@contextlib.contextmanager
def recording_producers(base: nn.Module, sites: Sequence[str], producers: dict[str, list[Made]]):
    """For each call of each activation site (a module path in `base`), append to
    ``producers[site]`` the producer (`is_producer`) whose forward completed last before
    the call (`Made(None)` when none did)."""
    modules = dict(base.named_modules())
    site_ids = {id(modules[site]) for site in sites}
    last: list[Made] = [Made(None)]

    def after(module: nn.Module, _args, out) -> None:
        out = out[0] if isinstance(out, tuple | list) and out else out
        last[0] = Made(module, out.numel() if isinstance(out, Tensor) else None)

    def before(site: str):
        return lambda _m, _args: producers.setdefault(site, []).append(last[0])

    handles = [
        module.register_forward_hook(after)
        for module in modules.values()
        if id(module) not in site_ids and is_producer(module)
    ]
    handles += [modules[site].register_forward_pre_hook(before(site)) for site in sites]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def width(module: nn.Module | None) -> int | None:
    """The number of output features of a producing layer, or None when it does not say."""
    if module is None:
        return None
    if isinstance(module, nn.LayerNorm | nn.RMSNorm):
        shape = module.normalized_shape
        return int(shape[-1]) if shape else None
    for name in WIDTH_NAMES:
        value = getattr(module, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def unit_axis(
    shape: Sequence[int],
    producer: nn.Module | None,
    gated: bool = False,
    *,
    resized: bool = False,
) -> int | None:
    """The dim of a per-sample input of `shape` (batch dim removed) that holds its units,
    per the rules of the module docstring; None when undetermined. `resized`: the input has
    another element count than the producer's output (a pooling, a projection without a
    module in between): then only the producer's own dim, with the producer's width, is
    taken, never a dim found by size alone.

    >>> unit_axis((10, 64), nn.Linear(16, 64))      # (B, T, F): features last
    1
    >>> unit_axis((8, 5, 5), nn.Conv2d(3, 8, 3))    # (B, C, H, W): channels
    0
    """
    rank = len(shape)
    if rank == 0:
        return None
    if rank == 1 or gated:
        return rank - 1
    size = width(producer)
    expected = None
    if isinstance(producer, LAST_DIM):
        expected = rank - 1
    elif isinstance(producer, CHANNEL_DIM):
        expected = 0
    if expected is not None and (size is None or shape[expected] == size):
        return expected
    if size is None or resized:
        return None
    matches = [axis for axis in (0, rank - 1) if shape[axis] == size]
    return matches[0] if len(matches) == 1 else None


def describe(producer: nn.Module | None) -> str:
    """'Linear of width 32', or what it is when it does not say its width."""
    if producer is None:
        return "no layer with parameters"
    size = width(producer)
    return type(producer).__name__ + ("" if size is None else f" of width {size}")


def channel_first(call: Tensor, axis: int) -> Tensor:
    """A captured call (batch, *per_sample) with its units moved to dim 1, the layout of
    actlab.engine.diagnostics.unit_fractions (there, with a leading member dim)."""
    return call if axis == 0 else call.movedim(axis + 1, 1)


def unit_groups(calls: Sequence[Tensor], axes: Sequence[int]) -> list[Tensor]:
    """The calls of one site, units at dim 1, joined along the sample dim where their
    shapes agree (a module called several times at the same width: the same units);
    one tensor per distinct shape otherwise (distinct units)."""
    by_shape: dict[tuple[int, ...], list[Tensor]] = {}
    for call, axis in zip(calls, axes, strict=True):
        moved = channel_first(call, axis)
        by_shape.setdefault(tuple(moved.shape[1:]), []).append(moved)
    return [parts[0] if len(parts) == 1 else torch.cat(parts) for parts in by_shape.values()]


def site_fractions(groups: Sequence[Tensor], activation: nn.Module) -> tuple[float, float]:
    """Dead and saturated fractions of one member's site over all its units: ``groups`` as
    `unit_groups` makes them (each (B', units, *positions)), each measured by
    actlab.engine.diagnostics.unit_fractions, weighted by its number of units."""
    if len(groups) == 1:
        d, s = unit_fractions([groups[0].unsqueeze(0)], [activation])
        return float(d[0, 0]), float(s[0, 0])
    dead = saturated = 0.0
    total = 0
    for group in groups:
        units = group.shape[1]
        d, s = unit_fractions([group.unsqueeze(0)], [activation])
        dead += float(d[0, 0]) * units
        saturated += float(s[0, 0]) * units
        total += units
    return dead / total, saturated / total


def probe_fractions(
    captured: dict[str, list[Tensor]],
    producers: dict[str, list[Made]],
    sites: Sequence[str],
    activation: nn.Module,
    *,
    gated: bool = False,
    reference: str = "the model",
) -> tuple[Tensor, Tensor]:
    """(1, L) dead and saturated fractions of one member's activation sites, from the
    inputs each site's calls got (`captured`, detached) and the producer of each call
    (`producers`, see `recording_producers`). A gated unit's inputs are its gate's
    (`gate_input`). A site whose units are undetermined gets NaN, said once."""
    device = next(iter(captured.values()))[0].device if captured else None
    dead = torch.full((1, len(sites)), float("nan"), device=device)
    saturated = torch.full((1, len(sites)), float("nan"), device=device)
    for index, site in enumerate(sites):
        calls = [gate_input(c) if gated else c for c in captured[site]]
        made = producers[site]
        axes = [
            unit_axis(
                tuple(call.shape[1:]), m.module, gated,
                resized=m.numel is not None and m.numel != raw.numel(),
            )
            for call, raw, m in zip(calls, captured[site], made, strict=True)
        ]  # fmt: skip
        missing = [i for i, axis in enumerate(axes) if axis is None]
        if missing:
            call, producer = calls[missing[0]], made[missing[0]].module
            notice(
                ("undetermined units", reference, site),
                f"{reference}: the units of activation site {site!r} (per-sample input "
                f"{tuple(call.shape[1:])}, after {describe(producer)}) cannot be told from "
                "positions: no dead/saturated fraction for it (docs/diagnostics.md, units)",
            )
            continue
        d, s = site_fractions(unit_groups(calls, axes), activation)
        dead[0, index], saturated[0, index] = d, s
    return dead, saturated
