"""Gated linear units and squared ReLU: the activations of the transformer feed-forward.

A gated feed-forward (Shazeer 2020, "GLU Variants Improve Transformer", arXiv:2002.05202)
projects x to two halves and multiplies them, one through a gate nonlinearity:

    FFN_gated(x) = (a * act(b)) W2,   [a, b] = x W1   (W1: d -> 2 F, W2: F -> d)

written here as a function of the concatenated projection ``[a, b]`` (last dim 2F -> F),
the same halves as ``torch.nn.functional.glu`` (``a * sigmoid(b)``):

    glu       act = sigmoid          (Dauphin et al. 2016; already in the catalog)
    bilinear  act = identity         a * b
    reglu     act = relu             a * max(0, b)
    geglu     act = gelu (erf)       a * b Phi(b)
    swiglu    act = silu (Swish_1)   a * b sigmoid(b)

A gated FFN has three weight matrices where a plain one has two, so at equal parameters
its hidden width is 2/3 of the plain one (`gated_hidden`): Shazeer's d_ff 3072 -> 2048.

Squared ReLU (So et al. 2021, "Primer: Searching for Efficient Transformers for Language
Modeling", arXiv:2109.08668) is elementwise: ``relu2(x) = max(0, x)^2``.

Entries as data like actlab.catalog.entries' (the name index adds GATED_ENTRIES after
ENTRIES), so they are built-in: listed, measured and cached like every other.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from actlab.catalog.activation import ActivationSpec
from actlab.catalog.entries import entry

SHAZEER = "Shazeer 2020, 'GLU Variants Improve Transformer', arXiv:2002.05202"
PRIMER = (
    "So et al. 2021, 'Primer: Searching for Efficient Transformers for Language Modeling', "
    "arXiv:2109.08668"
)

# The gate nonlinearity of each gated unit (applied to the second half).
GATES: dict[str, Callable[[Tensor], Tensor]] = {
    "glu": torch.sigmoid,
    "bilinear": lambda b: b,
    "reglu": F.relu,
    "geglu": F.gelu,
    "swiglu": F.silu,
}


# The same gates as catalog specs (what diagnostics measure dead units and saturation of).
GATE_SPECS: dict[str, str] = {
    "glu": "sigmoid",
    "bilinear": "linear",
    "reglu": "relu",
    "geglu": "gelu",
    "swiglu": "silu",
}


def gate_spec(spec: str) -> str:
    """The catalog spec of a gated unit's gate nonlinearity (``swiglu`` -> ``silu``): a
    gated unit's dead and saturated units are those of its gate on b, the gate's input."""
    from actlab.catalog.spec import resolve  # the name index imports this module

    found, _ = resolve(spec)
    if found.name not in GATE_SPECS:
        raise ValueError(f"{spec!r} is not a gated unit")
    return GATE_SPECS[found.name]


def gated(gate: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    """``fn(x, dim=-1) = a * gate(b)`` with ``[a, b] = x.chunk(2, dim)``."""

    def fn(x: Tensor, dim: int = -1) -> Tensor:
        if x.shape[dim] % 2:
            raise ValueError(f"a gated unit needs an even size along dim {dim}, got {x.shape[dim]}")
        a, b = x.chunk(2, dim=dim)
        return a * gate(b)

    return fn


def relu2(x: Tensor) -> Tensor:
    """Squared ReLU: max(0, x)^2 (So et al. 2021, Primer)."""
    return F.relu(x).square()


def is_gated(spec: str) -> bool:
    """Whether a catalog spec is a gated unit (its input is the two halves [a, b])."""
    from actlab.catalog.spec import resolve  # the name index imports this module

    found, _ = resolve(spec)
    return bool(found.gated)


def gated_hidden(hidden: int) -> int:
    """The hidden width of a gated FFN with the parameters of a plain one of `hidden` units:
    3 d F = 2 d hidden, so F = round(2 hidden / 3) (Shazeer 2020, Section 2)."""
    return max(1, round(2 * hidden / 3))


def ffn_hidden(spec: str, hidden: int) -> int:
    """The hidden width a FFN of activation `spec` uses at the parameters of `hidden` plain
    units: `gated_hidden(hidden)` for a gated unit, else `hidden`."""
    return gated_hidden(hidden) if is_gated(spec) else hidden


def _gated_entry(name: str, gate_words: str) -> ActivationSpec:
    return entry(
        name,
        gated(GATES[name]),
        params={"dim": -1},
        elementwise=False,
        gated=True,
        formula=f"a * {gate_words}, where x = [a, b] is split in halves along dim "
        "(a gated FFN: (x W) * gate(x V), then W2)",
        reference=SHAZEER,
    )


GATED_ENTRIES: tuple[ActivationSpec, ...] = (
    _gated_entry("bilinear", "b"),
    _gated_entry("reglu", "max(0, b)"),
    _gated_entry("geglu", "gelu(b) = b Phi(b)"),
    _gated_entry("swiglu", "silu(b) = b sigmoid(b)"),
    entry(
        "relu2",
        relu2,
        aliases=("squared_relu",),
        formula="max(0, x)^2",
        reference=PRIMER,
    ),
)
