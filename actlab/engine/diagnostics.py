"""Why an activation trains well or badly: gradient flow, dead units, saturation.

Pure functions on tensors (called by the engine on every step or on a probe batch) and on
the diagnostics DataFrame (called by the report). No I/O, no printing.

- Vanishing gradients (Glorot & Bengio 2010, https://proceedings.mlr.press/v9/glorot10a.html):
  the weight-gradient norm of early layers is far below that of late layers.
- Dead units (Lu et al. 2019, "Dying ReLU and initialization", https://arxiv.org/abs/1903.06733):
  a unit whose output or derivative is zero for every input never learns again.
- Saturation: |f'(z)| is tiny compared with the activation's steepest slope for most inputs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

import pandas as pd
import torch
from torch import Tensor, nn

DEAD_EPS = 1e-6  # |f'(z)| below this is "no gradient" (sigmoid: |z| > 13.8; leaky_relu: never)
SATURATION = 0.05  # |f'(z)| below 5% of the activation's maximum slope is "saturated"
MOST = 0.9  # a unit is saturated when more than 90% of its probe values are saturated
DEFINITIONS = (
    "Measured on a fixed probe batch of training samples at the end of each epoch (gradient "
    "norms also as the mean over the epoch's steps). Dead: a unit whose output is 0, or whose "
    f"|f'(z)| < {DEAD_EPS:g}, for every probe sample. Saturated: |f'(z)| below "
    f"{SATURATION:.0%} of the activation's steepest slope for more than {MOST:.0%} of the "
    "samples; by this definition the flat negative side of relu (f' = 0) and of leaky_relu "
    "(f' = 0.01) counts as saturated, so a relu-like unit that is off for most samples is "
    "saturated without being dead."
)

# The grid on which the maximum slope of an activation is searched: wide enough to reach
# the asymptotes of the usual activations (sigmoid's slope is 4.5e-5 at |z| = 10).
SLOPE_GRID = (-20.0, 20.0, 8001)
_MAX_SLOPE_CACHE: OrderedDict[Hashable, float] = OrderedDict()
_MAX_SLOPE_CACHE_SIZE = 512


# === per-step and per-probe measurements ==================================================


def layer_grad_norms(weights: Sequence[Tensor]) -> Tensor:
    """L2 norm of each member's weight gradient, per layer: ``out[k, l] = ||W_l.grad[k]||_2``.

    weights: the stacked weight Parameters, leading dim K (members), with ``.grad`` set.
    Returns a float32 (K, L) tensor on the weights' device. One reduction kernel per layer
    and no host synchronisation, so it can run on every training step.
    """
    norms = []
    for index, weight in enumerate(weights):
        grad = weight.grad
        if grad is None:
            raise ValueError(f"weight layer {index + 1} has no .grad; call backward() first")
        dims = tuple(range(1, grad.dim()))
        norms.append(torch.linalg.vector_norm(grad, dim=dims, dtype=torch.float32))
    return torch.stack(norms, dim=1)


def preact_moments(preacts: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Mean and (population) standard deviation of each member's pre-activations per layer.

    preacts[l]: (K, B, units) or (K, B, C, H, W). Returns (mean, std), each float32 (K, L).
    """
    means, stds = [], []
    for preact in preacts:
        values = preact.detach().flatten(1).float()
        std, mean = torch.std_mean(values, dim=1, correction=0)
        means.append(mean)
        stds.append(std)
    return torch.stack(means, dim=1), torch.stack(stds, dim=1)


def gate_input(preact: Tensor) -> Tensor:
    """The gate's input b of a gated unit's input ``[a, b]`` (split in halves along the last
    dim; actlab.catalog.gated): ``a * gate(b)`` passes nothing, and no gradient to W_a,
    where the gate is 0, so a gated unit is dead, or saturated, when its gate is. Same
    layout as `preact`, half the last dim; measured with the gate's activation
    (`actlab.catalog.gated.gate_spec`)."""
    return preact.chunk(2, dim=-1)[1]


def unit_fractions(
    preacts: Sequence[Tensor],
    activations: Sequence[nn.Module],
    *,
    dead_eps: float = DEAD_EPS,
    saturation: float = SATURATION,
    most: float = MOST,
) -> tuple[Tensor, Tensor]:
    """Fraction of dead and of saturated units of each member in each hidden layer.

    preacts[l] is the pre-activation z of hidden layer l, shape (K, B, units) for an MLP or
    (K, B, C, H, W) for a CNN, where a channel counts as one unit and its values are all
    its positions for all samples. activations[k] is member k's activation module f.
    f'(z) is taken by autograd on the detached pre-activations, as grad of sum(f(z)), which
    is the elementwise derivative for elementwise activations. Members that share an
    activation (same module, or same type and parameters) go through f in one call.

    - dead: f(z) = 0 for every value of the unit, or |f'(z)| < ``dead_eps`` for every
      value of the unit (it passes nothing forward, or no gradient back).
    - saturated: |f'(z)| < ``saturation`` * max|f'| for more than a fraction ``most``
      (default 90%) of the unit's values, where max|f'| is the activation's steepest
      slope on a grid over [-20, 20] (see :func:`max_slope`; 1 for unbounded slopes).
      A ReLU unit is saturated when more than 90% of its inputs are negative, and dead
      when all are; so is a LeakyReLU(0.01) unit (0.01 < 5% of 1), but it is never dead;
      the identity is never saturated.

    Returns (dead, saturated): float32 tensors (K, L_hidden) of fractions in [0, 1].
    """
    if not preacts:
        raise ValueError("no pre-activations given")
    num_members = preacts[0].shape[0]
    if len(activations) != num_members:
        raise ValueError(f"{len(activations)} activations for {num_members} members")
    device = preacts[0].device
    dead = torch.zeros(num_members, len(preacts), device=device)
    saturated = torch.zeros(num_members, len(preacts), device=device)
    for members, activation in _group_members(activations):
        index = torch.tensor(members, device=device)
        for layer, preact in enumerate(preacts):
            unit_shape = preact.shape[2:3]  # (units,) or (C,)
            z = preact.detach()[index].float()  # (G, B, units) or (G, B, C, H, W)
            value, slope = _value_and_slope(activation, z.flatten(0, 1))
            value, slope = value.view(z.shape), slope.abs().view(z.shape)
            del z
            # Reduce over the values of each unit: samples (dim 1) and positions (dims 3+).
            values_of_unit = (1, *range(3, value.dim()))
            threshold = saturation * max_slope(activation, unit_shape, preact.dim() - 2)
            is_dead = torch.all(value == 0, dim=values_of_unit)
            del value
            is_dead |= torch.all(slope < dead_eps, dim=values_of_unit)
            is_saturated = (slope < threshold).float().mean(dim=values_of_unit) > most
            del slope
            dead[index, layer] = is_dead.float().mean(dim=1)
            saturated[index, layer] = is_saturated.float().mean(dim=1)
    return dead, saturated


def max_slope(activation: nn.Module, unit_shape: tuple[int, ...] = (), unit_dims: int = 1) -> float:
    """max |f'(z)| over z in [-20, 20] (8001 points), by autograd; cached per activation.

    An activation whose slope still grows at the edge of the grid (max over [-20, 20]
    more than 1% above the max over [-10, 10], e.g. exp) has no maximum slope: it gets
    the identity's slope, 1.

    The cache key is the activation's type and parameters (learnable ones at their current
    values), so a trained PReLU gets its own entry. ``unit_shape``/``unit_dims`` describe
    the per-sample input (channels and the number of trailing dims), for activations with
    per-channel parameters. Non-finite slopes (e.g. sqrt at 0) are ignored.
    """
    per_channel = any(p.numel() > 1 for p in activation.parameters())
    key = (_activation_key(activation), tuple(unit_shape) if per_channel else (), unit_dims)
    if key in _MAX_SLOPE_CACHE:
        _MAX_SLOPE_CACHE.move_to_end(key)
        return _MAX_SLOPE_CACHE[key]
    lo, hi, steps = SLOPE_GRID
    device = next((p.device for p in activation.parameters()), torch.device("cpu"))
    grid = torch.linspace(lo, hi, steps, device=device)
    channels = unit_shape[0] if unit_shape and per_channel else 1
    # (steps, channels, 1, ...): every channel sees the whole grid.
    z = grid.view(steps, *([1] * unit_dims)).expand(steps, channels, *([1] * (unit_dims - 1)))
    _, slope = _value_and_slope(activation, z.contiguous())
    slope = slope.abs().reshape(steps, -1)
    slope = torch.where(torch.isfinite(slope), slope, torch.zeros_like(slope))
    result = float(slope.max())
    inner = slope[(grid.abs() <= hi / 2).to(slope.device)]
    if inner.numel() and result > 1.01 * float(inner.max()):
        # Still growing at the edge of the grid (exponential): no maximum; use the
        # identity's slope, 1, as the reference.
        result = 1.0
    _MAX_SLOPE_CACHE[key] = result
    if len(_MAX_SLOPE_CACHE) > _MAX_SLOPE_CACHE_SIZE:
        _MAX_SLOPE_CACHE.popitem(last=False)
    return result


def _value_and_slope(activation: nn.Module, z: Tensor) -> tuple[Tensor, Tensor]:
    """f(z) and f'(z) for an elementwise f, z of shape (N, units) or (N, C, H, W)."""
    with torch.enable_grad():
        leaf = z.detach().requires_grad_(True)
        # A clone, so that an inplace activation (ReLU(inplace=True)) does not write into a
        # leaf that requires grad.
        value = activation(leaf.clone())
        if value.shape != leaf.shape:
            raise ValueError(
                f"activation {activation!r} changes the shape {tuple(leaf.shape)} -> "
                f"{tuple(value.shape)}; diagnostics need a shape-preserving activation"
            )
        (slope,) = torch.autograd.grad(value.sum(), leaf)
    return value.detach(), slope


def _activation_key(module: nn.Module) -> Hashable:
    """A key equal for two activations that compute the same function: the type, the plain
    attributes (slopes, flags, expression strings), callables by identity, and the values
    of parameters and buffers. `inplace` and `training` do not change f."""
    attributes = []
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or name in ("training", "inplace"):
            continue
        plain = (bool, int, float, str, type(None))
        if isinstance(value, plain) or (
            isinstance(value, tuple) and all(isinstance(v, plain) for v in value)
        ):
            attributes.append((name, value))
        elif isinstance(value, dict) and all(isinstance(v, plain) for v in value.values()):
            attributes.append((name, tuple(sorted(value.items()))))
        else:
            attributes.append((name, id(value)))
    tensors = tuple(
        (name, tuple(t.shape), tuple(t.detach().flatten().cpu().tolist()))
        for name, t in [*module.named_parameters(), *module.named_buffers()]
    )
    children = tuple((name, _activation_key(child)) for name, child in module.named_children())
    return (type(module), tuple(attributes), tensors, children)


def _group_members(activations: Sequence[nn.Module]) -> list[tuple[list[int], nn.Module]]:
    """Members grouped by activation: the same module object, or equal keys."""
    groups: dict[Hashable, tuple[list[int], nn.Module]] = {}
    keys_by_id: dict[int, Hashable] = {}
    for member, activation in enumerate(activations):
        key = keys_by_id.get(id(activation))
        if key is None:
            key = keys_by_id[id(activation)] = _activation_key(activation)
        groups.setdefault(key, ([], activation))[0].append(member)
    return list(groups.values())


# === findings: one sentence per thing the numbers show ====================================

VANISHING_RATIO = 0.1  # layer-1 gradient below 0.1x the last layer's: vanishing gradients
EXPLODING_RATIO = 10.0  # above 10x: exploding gradients
DEAD_FINDING = 0.05  # report dead units when at least 5% of a layer's units are dead
SATURATED_FINDING = 0.2  # report saturation when at least 20% of a layer's units saturate


def findings(diagnostics: pd.DataFrame, metrics: pd.DataFrame | None = None) -> list[str]:
    """Short sentences, each backed by a number, from diagnostics.csv (averaged over seeds).

    Per activation (and per depth and lr when the study has several):

    - gradient flow, epoch 1: ``r = grad_norm(layer 1) / grad_norm(last layer)``; listed
      for all activations (smallest first) when there are several, and stated on its own
      when r < 0.1 (vanishing) or r > 10 (exploding);
    - dead units, last epoch: the hidden layer with the largest dead fraction, stated when
      it is >= 5%, next to the activation with the fewest dead units on that layer;
    - saturation, last epoch (as dead units): the hidden layer with the largest saturated
      fraction, stated when >= 20%;
    - divergence (when ``metrics`` is given): the members whose loss became NaN/inf.
    """
    sentences: list[str] = []
    if diagnostics is not None and len(diagnostics):
        frame = _seed_means(diagnostics)
        sentences += _gradient_findings(frame)
        sentences += _dead_findings(frame)
        sentences += _saturation_findings(frame)
    if metrics is not None and "status" in metrics:
        for row in metrics[metrics["status"] == "diverged"].itertuples():
            sentences.append(f"{_member_name(row)}: diverged (loss NaN/inf) at epoch {row.epoch}")
    return sentences


_STUDY = ["depth", "activation", "lr"]


def _seed_means(diagnostics: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (depth, activation, lr, epoch, layer), with a `name` column
    (the activation, qualified by depth and lr when the study has several) and a `study`
    column (those qualifiers alone)."""
    frame = diagnostics.copy()
    for column in _STUDY:
        if column not in frame:
            frame[column] = None
    frame["depth"] = frame["depth"].astype("float")  # empty depth -> NaN, kept by dropna=False
    values = ["grad_norm", "probe_grad_norm", "dead_frac", "saturated_frac"]
    values = [column for column in values if column in frame]
    means = frame.groupby([*_STUDY, "epoch", "layer"], dropna=False, sort=True)[values].mean()
    means = means.reset_index()
    several_depths = means["depth"].nunique() > 1
    several_lrs = means["lr"].nunique() > 1

    def study(row: pd.Series) -> str:
        qualifiers = []
        if several_depths:
            qualifiers.append(f"depth {int(row['depth'])}")
        if several_lrs:
            qualifiers.append(f"lr={row['lr']:g}")
        return ", ".join(qualifiers)

    means["study"] = means.apply(study, axis=1) if len(means) else ""
    means["name"] = [
        f"{activation} ({study})" if study else activation
        for activation, study in zip(means["activation"], means["study"], strict=True)
    ]
    return means


def _gradient_findings(frame: pd.DataFrame) -> list[str]:
    column = "grad_norm" if frame.get("grad_norm", pd.Series()).notna().any() else "probe_grad_norm"
    if column not in frame:
        return []
    flagged, ratios = [], {}  # ratios: study -> [(ratio, activation)], for the summary
    for name, rows in frame.groupby("name", sort=False):
        first = rows[rows["epoch"] == rows["epoch"].min()].dropna(subset=[column])
        if first["layer"].nunique() < 2:
            continue
        norms = first.set_index("layer")[column]
        first_layer, last_layer = norms.index.min(), norms.index.max()
        if not norms[last_layer] > 0:
            continue
        ratio = norms[first_layer] / norms[last_layer]
        epoch = int(first["epoch"].iloc[0])
        key = (first["study"].iloc[0], first_layer, last_layer, epoch)
        ratios.setdefault(key, []).append((ratio, first["activation"].iloc[0]))
        label = None
        if ratio < VANISHING_RATIO:
            label = "vanishing gradients"
        elif ratio > EXPLODING_RATIO:
            label = "exploding gradients"
        if label:
            flagged.append(
                f"{name}: layer-{first_layer} gradient is {_times(ratio)} "
                f"layer-{last_layer}'s at epoch {epoch} ({label})"
            )
    summaries = []
    for (study, first_layer, last_layer, epoch), values in ratios.items():
        if len(values) < 2:
            continue
        listed = ", ".join(f"{activation} {_times(ratio)}" for ratio, activation in sorted(values))
        prefix = f"{study}: " if study else ""
        summaries.append(
            f"{prefix}layer-{first_layer} / layer-{last_layer} gradient norm at epoch {epoch}: "
            f"{listed}"
        )
    return summaries + flagged


def _dead_findings(frame: pd.DataFrame) -> list[str]:
    if "dead_frac" not in frame:
        return []
    sentences = []
    last = frame[frame["epoch"] == frame["epoch"].max()].dropna(subset=["dead_frac"])
    for name, rows in last.groupby("name", sort=False):
        worst = rows.loc[rows["dead_frac"].idxmax()]
        if worst["dead_frac"] < DEAD_FINDING:
            continue
        layer, epoch = int(worst["layer"]), int(worst["epoch"])
        sentence = f"{name}: {_percent(worst['dead_frac'])} of layer-{layer} units are dead at epoch {epoch}"
        same_study = (last["layer"] == layer) & (last["name"] != name)
        for column in ("depth", "lr"):
            same_study &= (last[column] == worst[column]) | (
                last[column].isna() & pd.isna(worst[column])
            )
        others = last[same_study]
        if len(others):
            best = others.loc[others["dead_frac"].idxmin()]
            sentence += f"; {best['activation']}: {_percent(best['dead_frac'])}"
        sentences.append(sentence)
    return sentences


def _saturation_findings(frame: pd.DataFrame) -> list[str]:
    if "saturated_frac" not in frame:
        return []
    sentences = []
    # At the last epoch, as the dead-unit sentence: the two describe the same trained network.
    last = frame[frame["epoch"] == frame["epoch"].max()]
    for name, rows in last.dropna(subset=["saturated_frac"]).groupby("name", sort=False):
        worst = rows.loc[rows["saturated_frac"].idxmax()]
        if worst["saturated_frac"] < SATURATED_FINDING:
            continue
        sentences.append(
            f"{name}: {_percent(worst['saturated_frac'])} of layer-{int(worst['layer'])} units "
            f"saturated at epoch {int(worst['epoch'])}"
        )
    return sentences


def _member_name(row: object) -> str:
    name = f"{row.activation} (seed {row.seed}"
    if "lr" in row._fields and not pd.isna(row.lr):
        name += f", lr={row.lr:g}"
    if "depth" in row._fields and not pd.isna(row.depth):
        name += f", depth {int(row.depth)}"
    return name + ")"


def _percent(fraction: float) -> str:
    if 0 < fraction < 0.005:
        return "<1%"
    return f"{fraction:.0%}"


def _times(ratio: float) -> str:
    """0.031 -> '0.03x', 4.2e-05 -> '4.2e-05x', 23.4 -> '23x'."""
    if ratio >= 10:
        return f"{ratio:.0f}x"
    if ratio >= 0.01:
        return f"{ratio:.2g}x"
    return f"{ratio:.1e}x"
