"""``--net mlp`` with gated activations: the built-in MLP as a builder for the vmap stack.

A gated unit (swiglu, geglu, reglu, bilinear, glu; actlab.catalog.gated) takes 2h inputs
``[a, b]`` and gives h outputs ``a * gate(b)``, so a gated MLP's hidden layer is
``Linear(fan_in, 2h) -> a * gate(b)``: the GLU feed-forward of Shazeer 2020 ("GLU Variants
Improve Transformer", arXiv:2002.05202) with W and V as one matrix [W; V].

**Width at equal parameters.** Shazeer cuts the gated width to 2/3 (three d x F matrices
where a plain FFN has two: d -> F -> d). An MLP is not that FFN: its first layer's fan-in
(784 pixels) is far wider than its hidden layers, so the 2/3 rule leaves the gated net
about a third LARGER (784-128-128-10: 118,282 plain, 148,930 gated at h = 85). Here the
gated widths keep the plain widths' proportions, ``h_i = round(c n_i)``, with the one
factor c whose parameter count

    P_gated(h) = sum_i (2 h_i (h_{i-1} + 1)) + C (h_L + 1),   h_0 = fan-in, C = classes

is nearest the plain net's ``P(n) = sum_i n_i (n_{i-1} + 1) + C (n_L + 1)`` (the same
parameter-matching principle as Shazeer's 2/3, solved for this network): 784-128-128-10
-> h = 69, 118,690 parameters (+0.3%).

**Route.** The hand-written fused MLP step (actlab.engine.mlp_step) stacks every member's
weights as one (K, out, in) tensor and applies elementwise activations; a gated member's
weights have other shapes. A study with any gated activation therefore trains EVERY member
(plain ones too) through the vmap stack (actlab.engine.vmap_stack) with `MLPBuilder`, so
that all members run the same arithmetic and the paired comparison stays fair. A plain
member's initial weights are exactly those of the fused path (same draws, same order, same
gains: actlab.nn.weight_init), and its batches are the same; its numbers then differ from a
study without gated activations by float rounding only (other kernels), not by design.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from actlab.catalog import gated as gatedlib
from actlab.catalog import registry as catalog
from actlab.errors import SpecError
from actlab.nn import weight_init as initlib

# Gated widths whose parameter count is further than this from the plain one are said.
UNEQUAL_PARAMETERS = 0.02


def mlp_parameters(fan_in: int, widths: Sequence[int], num_classes: int, gated: bool) -> int:
    """Parameters of an MLP fan_in -> widths -> num_classes: ``sum_i m h_i (h_{i-1} + 1) +
    C (h_L + 1)`` with m = 2 for gated hidden layers (Linear(h_{i-1}, 2 h_i)), else 1."""
    m = 2 if gated else 1
    total, previous = 0, fan_in
    for width in widths:
        total += m * width * (previous + 1)
        previous = width
    return total + num_classes * (previous + 1)


def gated_widths(fan_in: int, hidden: Sequence[int], num_classes: int) -> tuple[int, ...]:
    """The gated hidden widths at the parameters of the plain `hidden` (module docstring):
    ``h_i = max(1, round(h_1 n_i / n_1))`` for the h_1 in 1..n_1 whose count is nearest
    ``mlp_parameters(fan_in, hidden, num_classes, False)`` (the smaller h_1 on a tie)."""
    hidden = tuple(int(n) for n in hidden)
    target = mlp_parameters(fan_in, hidden, num_classes, gated=False)
    best: tuple[int, tuple[int, ...]] | None = None
    for first in range(1, hidden[0] + 1):
        widths = tuple(max(1, round(first * n / hidden[0])) for n in hidden)
        gap = abs(mlp_parameters(fan_in, widths, num_classes, gated=True) - target)
        if best is None or gap < best[0]:
            best = (gap, widths)
    assert best is not None
    return best[1]


def member_widths(
    activation: str, fan_in: int, hidden: Sequence[int], num_classes: int
) -> tuple[int, ...]:
    """Hidden widths of a member: `hidden` for an elementwise activation, `gated_widths`
    for a gated one."""
    if gatedlib.is_gated(activation):
        return gated_widths(fan_in, hidden, num_classes)
    return tuple(int(n) for n in hidden)


def plain_mlp(
    activation: str,
    fan_in: int,
    hidden: Sequence[int],
    num_classes: int,
    dropout: float = 0.0,
) -> nn.Sequential:
    """An empty (PyTorch-initialised) MLP of one member, the module ``actlab extract``
    gives: ``Flatten, [Linear(h_{i-1}, m h_i), act, (Dropout)]*, Linear(h_L, classes)``
    with m = 2 when `activation` is gated; `hidden` are the member's own widths."""
    return MLPBuilder(fan_in, hidden, num_classes, dropout=dropout, equalise=False)(
        _Act(activation)
    )


class _Act:
    """The part of actlab.nn.user_model.ActFactory that MLPBuilder uses, standalone."""

    def __init__(self, activation: str) -> None:
        self.name = activation
        self.gated = gatedlib.is_gated(activation)

    def inputs(self, h: int) -> int:
        return 2 * int(h) if self.gated else int(h)

    def __call__(self) -> nn.Module:
        return catalog.get(self.name)


class MLPBuilder:
    """A builder (``build(act)``; actlab.nn.user_model) of the built-in MLP.

    Called after ``torch.manual_seed(seed)`` (actlab.nn.user_model.build_member), it draws
    each layer's weight then bias from the global RNG with `init` and multiplies the weight
    by the gain of actlab.nn.weight_init, in the order of actlab.nn.models._init_stack: a
    plain member starts from exactly the weights of the fused --net mlp path."""

    def __init__(
        self,
        fan_in: int,
        hidden: Sequence[int],
        num_classes: int,
        *,
        dropout: float = 0.0,
        init: str = "pytorch",
        init_gain: bool = False,
        equalise: bool = True,
    ) -> None:
        self.fan_in = int(fan_in)
        self.hidden = tuple(int(n) for n in hidden)
        self.num_classes = int(num_classes)
        self.dropout = float(dropout)
        self.init = init
        self.init_gain = bool(init_gain)
        self.equalise = equalise  # False: `hidden` are the member's own widths

    def __call__(self, act) -> nn.Sequential:
        widths = self.hidden
        if self.equalise:
            widths = member_widths(act.name, self.fan_in, self.hidden, self.num_classes)
        name, params = catalog.resolve(act.name)
        gain = initlib.gain_for(getattr(name, "name", act.name), dict(params or {}))
        layers: list[nn.Module] = [nn.Flatten()]
        previous = self.fan_in
        for width in widths:
            layers.append(self._linear(previous, act.inputs(width), gain))
            layers.append(act())
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            previous = width
        layers.append(self._linear(previous, self.num_classes, None))
        return nn.Sequential(*layers)

    def _linear(self, fan_in: int, fan_out: int, gain: float | None) -> nn.Linear:
        """nn.Linear(fan_in, fan_out) with the weight and bias drawn as _init_stack does
        (nn.Linear's own draws are undone: they run on a forked RNG)."""
        with torch.random.fork_rng(devices=[]):
            layer = nn.Linear(fan_in, fan_out)
        shape = (fan_out, fan_in)
        weight = initlib.draw_weight(shape, self.init, None)
        bias = initlib.draw_bias(shape, self.init, None)
        factor = initlib.layer_gain(self.init, self.init_gain, gain)
        with torch.no_grad():
            layer.weight.copy_(weight if factor == 1.0 else weight * factor)
            layer.bias.copy_(bias)
        return layer


def needs_builder(config) -> bool:
    """Whether a study's members train through the vmap stack with `MLPBuilder`: --net mlp
    with at least one gated activation (see the module docstring)."""
    return config.model == "mlp" and any(_gated(a) for a in config.activations)


def _gated(spec: str) -> bool:
    """is_gated, False for a spec the catalog cannot resolve here (a run directory read
    without an activation its study registered: the report stays readable)."""
    try:
        return gatedlib.is_gated(spec)
    except (catalog.UnknownActivationError, SpecError):
        return False


def builder_for(config, input_shape: Sequence[int], num_classes: int, depth=None) -> MLPBuilder:
    """The MLPBuilder of a study's config (its hidden widths at `depth`)."""
    fan_in = 1
    for size in input_shape:
        fan_in *= int(size)
    return MLPBuilder(
        fan_in,
        config.hidden_for(depth),
        num_classes,
        dropout=config.dropout,
        init=config.init,
        init_gain=config.init_gain,
    )


def user_model_for(config, input_shape: Sequence[int], num_classes: int, depth=None):
    """The builder of `builder_for` as an actlab.nn.user_model.UserModel (kind builder)."""
    from actlab.nn.user_model import BUILDER, UserModel

    builder = builder_for(config, input_shape, num_classes, depth)
    return UserModel("actlab.nn.mlp_builder:MLPBuilder", builder, BUILDER)


def parameter_line(config, input_shape: Sequence[int], num_classes: int, depth=None) -> str:
    """``parameters per member: relu 118,282 (hidden 128,128), swiglu 118,690 (gated,
    hidden 2x69,2x69)``; a gap over UNEQUAL_PARAMETERS between the members is said."""
    builder = builder_for(config, input_shape, num_classes, depth)
    counts, parts = {}, []
    for activation in config.activations:
        is_gated = gatedlib.is_gated(activation)
        widths = member_widths(activation, builder.fan_in, builder.hidden, num_classes)
        counts[activation] = mlp_parameters(builder.fan_in, widths, num_classes, is_gated)
        shown = ",".join(f"2x{w}" if is_gated else str(w) for w in widths)
        kind = "gated, " if is_gated else ""
        parts.append(f"{activation} {counts[activation]:,} ({kind}hidden {shown})")
    line = "parameters per member: " + ", ".join(parts)
    low, high = min(counts.values()), max(counts.values())
    if low and high / low - 1 > UNEQUAL_PARAMETERS:
        line += f"; they differ by {high / low - 1:.1%}: the net is too small to match them"
    return line


def gated_words(config, input_shape: Sequence[int], num_classes: int) -> str:
    """What a report's subtitle adds for the gated members of a --net mlp study
    (`` (gated: 2x69-2x69, at the plain parameter count)``), or ""."""
    if not needs_builder(config):
        return ""
    if config.depths:
        return " (gated members at the plain parameter count)"
    builder = builder_for(config, input_shape, num_classes)
    widths = gated_widths(builder.fan_in, builder.hidden, builder.num_classes)
    return f" (gated: {'-'.join(f'2x{w}' for w in widths)}, at the plain parameter count)"


ROUTE_LINE = (
    "path: every member through the vmap stack with the built-in MLP builder "
    "(actlab.nn.mlp_builder), not the fused MLP step: a gated member's hidden layer "
    "Linear(in, 2h) -> a * gate(b) has other weight shapes, and one path for all members "
    "keeps the paired comparison fair"
)
