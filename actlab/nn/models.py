"""K networks that differ only in activation (and seed, and lr) as one stacked model.

Member ``k`` of a stacked model is one plain network (``export_member(k)``); its weights
are slice ``k`` of stacked parameters of shape ``(K, out, in)`` (``nn.Linear``'s layout)
or ``(K, out, in, 3, 3)`` (``nn.Conv2d``'s). Members are seed-major, ``[seed][activation]
[lr]`` (see ``config.members_for``), so inside a layer the units of all members form the
array ``(S, A, L, units, B)``, feature-major (``h^T``, so that every GEMM operand and
every weight gradient is contiguous: no transpose copies in the backward pass):

- Layer 1 of the members that share a batch is one wide GEMM: ``W1 @ x^T`` with W1 viewed
  as ``(S, M*H, D)`` (a free view of the ``(K, H, D)`` weight, ``M = K/S``); for an input
  shared by every seed (evaluation) it is one ``(K*H, D) @ (D, B)`` GEMM.
- Later layers are ``torch.baddbmm(b, W, h^T)`` over the K members.
- Each non-learnable activation runs once per layer on its group's ``(S, L, H, B)``
  slice (a strided view: no permutation copy); a learnable one (PReLU, swish_beta) is one
  module per member on its own slice. The group outputs are stacked back into ``(K, H, B)``.
- Dropout: inverted (kept units scaled by ``1/(1-p)``), one mask per seed drawn from that
  seed's ``torch.Generator`` and shared by its members, off in ``eval()`` mode.

The CNN (``config.model == "cnn"``) stacks the same way with grouped convolutions; see
:class:`StackedCNN`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actlab.catalog import registry as catalog
from actlab.config import ExperimentConfig, Member
from actlab.errors import ConfigError
from actlab.nn import weight_init as initlib

# Seeds dropout masks apart from the init draws, which use the plain seed.
DROPOUT_SEED_OFFSET = 0x5EED_D0


# --- activations ------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationInfo:
    """What the stacked model needs to know about one activation spec."""

    spec: str
    name: str
    params: dict
    learnable: bool
    elementwise: bool
    gain: float  # torch.nn.init.calculate_gain for it (1 when torch has none)


def activation_info(spec: str, *, allow_last_dim: bool = True) -> ActivationInfo:
    """Resolve a catalog spec and refuse activations a hidden layer cannot take.

    Non-elementwise activations are refused, except softmax-like ones over the last dim
    (``softmax(dim=-1)`` over the hidden units) when `allow_last_dim` (the MLP)."""
    activation, params = catalog.resolve(spec)
    params = dict(params or {})
    if not getattr(activation, "elementwise", True):
        dim = params.get("dim")
        last_dim_ok = getattr(activation, "needs_dim", False) and dim == -1
        if not (allow_last_dim and last_dim_ok):
            where = "an MLP hidden layer" if allow_last_dim else "a CNN"
            raise ConfigError(
                f"activation {spec!r} is not elementwise and cannot be used in {where}; "
                "use an elementwise activation"
                + (" or a softmax-like one with dim=-1" if allow_last_dim else "")
                + (
                    " (a gated unit runs in --net mlp, --net gpt or your own --model)"
                    if getattr(activation, "gated", False)
                    else ""
                )
            )
    learnable = bool(getattr(activation, "learnable", False))
    if not learnable:
        learnable = any(True for _ in catalog.get(spec).parameters())
    name = getattr(activation, "name", spec)
    elementwise = bool(getattr(activation, "elementwise", True))
    return ActivationInfo(
        spec, name, params, learnable, elementwise, initlib.gain_for(name, params)
    )


def _module(info: ActivationInfo) -> nn.Module:
    """A fresh module of the activation, never in place: the stacked model applies it to
    views of shared tensors (and autograd may need its input), where an in-place write
    fails; the numbers are the same either way."""
    if info.params.get("inplace"):
        return catalog.get(info.spec, inplace=False)
    return catalog.get(info.spec)


def _check_learnable_fit(infos: Sequence[ActivationInfo], hidden_shapes) -> None:
    """Refuse a learnable activation whose parameter shape does not fit a hidden layer
    (``prelu(num_parameters=7)`` on 128 units) before any weight is drawn."""
    for info in infos:
        if not info.learnable:
            continue
        for shape in hidden_shapes:
            probe = torch.zeros((2, shape[0], 2, 2) if len(shape) == 4 else (2, shape[0]))
            try:
                with torch.no_grad():
                    _module(info)(probe)
            except (RuntimeError, ValueError) as error:
                raise ConfigError(
                    f"activation {info.spec!r} does not fit a layer of {shape[0]} units "
                    f"({str(error).splitlines()[0]}); give it parameters of that size or 1"
                ) from None


# --- member layout ----------------------------------------------------------------------


@dataclass(frozen=True)
class MemberGrid:
    """The seed-major grid of members: member k = (s * A + a) * L + l."""

    seeds: tuple[int, ...]
    activations: tuple[str, ...]
    lrs: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.seeds), len(self.activations), len(self.lrs)

    @classmethod
    def of(cls, members: Sequence[Member]) -> MemberGrid:
        seeds = tuple(dict.fromkeys(m.seed for m in members))
        activations = tuple(dict.fromkeys(m.activation for m in members))
        lrs = tuple(dict.fromkeys(m.lr for m in members))
        expected = [(s, a, lr) for s in seeds for a in activations for lr in lrs]
        if [(m.seed, m.activation, m.lr) for m in members] != expected:
            raise ValueError("members must be the seed-major grid of config.members_for")
        return cls(seeds, activations, lrs)


# --- the stacked model ------------------------------------------------------------------


class StackedModel(nn.Module):
    """Common machinery: stacked weights, grouped activations, dropout, export.

    Subclasses define the layer shapes (``_layer_shapes``), ``forward`` and ``_plain_layers``.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        members: Sequence[Member],
        input_shape: tuple[int, int, int],
        num_classes: int,
        hidden: tuple[int, ...],
        *,
        allow_last_dim: bool,
    ) -> None:
        super().__init__()
        self.grid = MemberGrid.of(members)
        self.members = list(members)
        self.num_members = len(members)
        self.num_seeds = len(self.grid.seeds)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.hidden = tuple(hidden)
        self.dropout = float(config.dropout)
        self.infos = [
            activation_info(a, allow_last_dim=allow_last_dim) for a in self.grid.activations
        ]

        shapes = self._layer_shapes()
        self.num_hidden = len(shapes) - 1
        _check_learnable_fit(self.infos, shapes[:-1])
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for weight, bias in _init_stack(config, self.grid, self.infos, shapes):
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(bias))

        # acts[layer][a]: one module for a non-learnable group, a ModuleList of S*L modules
        # (member order within the group) for a learnable one.
        S, _, L = self.grid.shape
        self.acts = nn.ModuleList()
        for _ in range(self.num_hidden):
            groups = nn.ModuleList()
            for info in self.infos:
                if info.learnable:
                    groups.append(nn.ModuleList(_module(info) for _ in range(S * L)))
                else:
                    groups.append(_module(info))
            self.acts.append(groups)
        self._generators = (
            [torch.Generator().manual_seed(s + DROPOUT_SEED_OFFSET) for s in self.grid.seeds]
            if self.dropout > 0
            else []
        )

    # -- interface ---------------------------------------------------------------------

    def weight_layers(self) -> list[Tensor]:
        """The stacked weight of each layer, in order, leading dim K."""
        return list(self.weights)

    def parameter_members(self) -> list[tuple[nn.Parameter, int | None]]:
        """Every trainable parameter once: (p, None) stacked over K, (p, k) member k's own."""
        out: list[tuple[nn.Parameter, int | None]] = []
        for weight, bias in zip(self.weights, self.biases, strict=True):
            out += [(weight, None), (bias, None)]
        for k in range(self.num_members):
            for module in self._member_modules(k):
                if self.infos[self._group_of(k)].learnable:
                    out += [(p, k) for p in module.parameters()]
        return out

    def member_activations(self) -> list[nn.Module]:
        """The first hidden layer's activation module of each member (shared by the members
        of a group when it has no parameters)."""
        return [self._member_modules(k)[0] for k in range(self.num_members)]

    @torch.no_grad()
    def units_per_sample(self, x: Tensor) -> int:
        """The widest hidden layer's units per sample and member (a CNN: C * H * W), on
        one sample x (1, 1, *input)."""
        preacts: list[Tensor] = []
        self(x, preactivations=preacts)
        return max(p[0, 0].numel() for p in preacts)

    def dropout_generators(self) -> list[torch.Generator]:
        """One generator per seed (none without dropout); checkpoint their states."""
        return self._generators

    def export_member(self, k: int) -> nn.Sequential:
        """A plain ``nn.Sequential`` holding copies of member k's current weights."""
        plain = self._plain_layers(k)
        trainable = [m for m in plain if isinstance(m, nn.Linear | nn.Conv2d)]
        with torch.no_grad():
            for module, weight, bias in zip(trainable, self.weights, self.biases, strict=True):
                module.weight.copy_(weight[k])
                module.bias.copy_(bias[k])
        return plain.to(self.weights[0].device)

    def _apply(self, fn, recurse=True):
        # Dropout generators follow the model's device (CUDA masks need a CUDA generator).
        # A move re-seeds them: build on the device first, then restore a checkpoint.
        result = super()._apply(fn, recurse)
        device = self.weights[0].device
        if self._generators and self._generators[0].device != device:
            self._generators = [
                torch.Generator(device=device).manual_seed(seed + DROPOUT_SEED_OFFSET)
                for seed in self.grid.seeds
            ]
        return result

    # -- members -----------------------------------------------------------------------

    def _group_of(self, k: int) -> int:
        _, A, L = self.grid.shape
        return (k // L) % A

    def _member_modules(self, k: int) -> list[nn.Module]:
        """Member k's activation module in each hidden layer."""
        _, A, L = self.grid.shape
        s, a, lr = k // (A * L), (k // L) % A, k % L
        out = []
        for groups in self.acts:
            group = groups[a]
            out.append(group[s * L + lr] if self.infos[a].learnable else group)
        return out

    def _plain_activation(self, k: int, layer: int) -> nn.Module:
        a = self._group_of(k)
        if self.infos[a].learnable:
            return copy.deepcopy(self._member_modules(k)[layer])
        return catalog.get(self.infos[a].spec)

    # -- hot path ----------------------------------------------------------------------

    def _activate(
        self, layer: int, z: Tensor, dim: int, member_perm: tuple[int, ...] | None = None
    ) -> Tensor:
        """Apply each member's activation to `z`, whose dims dim..dim+2 are (S, A, L)
        (any strides). Returns a contiguous tensor of the same shape.

        `member_perm` permutes one member's slice into the plain module's layout ((B, units)
        or (B, C, H, W)), for learnable and dim-taking activations (e.g. a per-channel
        PReLU or softmax(dim=-1)); elementwise ones need no permutation."""
        inverse = None if member_perm is None else tuple(_argsort(member_perm))
        parts = z.unbind(dim + 1)
        outs = []
        for info, group, part in zip(self.infos, self.acts[layer], parts, strict=True):
            if not info.learnable:
                if member_perm is not None and not info.elementwise:
                    perm = tuple(range(dim + 2)) + tuple(dim + 2 + i for i in member_perm)
                    inv = tuple(range(dim + 2)) + tuple(dim + 2 + i for i in inverse)
                    outs.append(group(part.permute(perm)).permute(inv))
                else:
                    outs.append(group(part))
                continue
            S, L = part.shape[dim], part.shape[dim + 1]
            member_parts = [
                part.select(dim, s).select(dim, lr) for s in range(S) for lr in range(L)
            ]
            if member_perm is not None:
                member_outs = [
                    module(p.permute(member_perm)).permute(inverse)
                    for module, p in zip(group, member_parts, strict=True)
                ]
            else:
                member_outs = [module(p) for module, p in zip(group, member_parts, strict=True)]
            outs.append(torch.stack(member_outs, dim).unflatten(dim, (S, L)))
        if len(outs) == 1:
            return outs[0].unsqueeze(dim + 1).contiguous()
        return torch.stack(outs, dim + 1)

    def _dropout(self, h_t: Tensor) -> Tensor:
        """Inverted dropout on feature-major (K, units, B): member masks from their seed's
        generator (off in eval mode)."""
        if self.dropout == 0 or not self.training:
            return h_t
        return h_t * self._dropout_mask(h_t.shape, h_t.dtype, h_t.device).transpose(1, 2)

    def _dropout_mask(self, shape: tuple[int, ...], dtype: torch.dtype, device) -> Tensor:
        """A (K, B, units) mask of 0 and 1/(1-p) for `shape` = (K, units, B) (the
        feature-major layout), returned transposed: member k's mask is ``mask[k]``.

        One (units, B) mask is drawn per seed from that seed's generator and shared by the
        seed's members (a view, not a copy): like the initial weights and the batch order,
        a member's masks depend on its seed alone, not on which other members (activations,
        lrs, seeds) share its stacked model, so the same member gives the same numbers
        alone, in a full study or in any shard of one (actlab.study.cluster), and the
        activations of a seed are compared under the same masks (paired)."""
        keep = 1.0 - self.dropout
        K, units, B = shape
        per_seed = self.num_members // self.num_seeds
        mask = torch.empty((self.num_seeds, 1, units, B), dtype=dtype, device=device)
        for s, generator in enumerate(self._generators):
            mask[s].bernoulli_(keep, generator=generator)
        mask = mask.div_(keep).expand(self.num_seeds, per_seed, units, B).reshape(K, units, B)
        return mask.transpose(1, 2)

    def _dense(self, layer: int, h_t: Tensor) -> Tensor:
        """Feature-major (K, in, B) -> (K, out, B) for stacked layer `layer`: b + W @ h_t.

        Feature-major keeps every GEMM operand and every weight gradient contiguous (no
        transpose copies in autograd's gradient accumulation)."""
        weight, bias = self.weights[layer], self.biases[layer]
        return torch.baddbmm(bias.unsqueeze(2), weight, h_t)

    def _hidden(self, layer: int, z_t: Tensor, preactivations: list | None) -> Tensor:
        """Activation and dropout of a dense hidden layer's pre-activation (K, units, B)."""
        if preactivations is not None:
            # Route the forward pass through the appended (K, B, units) view, so it is a
            # node of the graph (e.g. for retain_grad).
            pre = z_t.transpose(1, 2)
            preactivations.append(pre)
            z_t = pre.transpose(1, 2)
        K, units, B = z_t.shape
        S, A, L = self.grid.shape
        h_t = self._activate(layer, z_t.view(S, A, L, units, B), 0, member_perm=(1, 0))
        return self._dropout(h_t.view(K, units, B))

    def _logits(self, h_t: Tensor) -> Tensor:
        """The output layer: logits (K, B, classes), contiguous."""
        return self._dense(len(self.weights) - 1, h_t).transpose(1, 2).contiguous()

    def _check_input(self, x: Tensor) -> int:
        if x.dim() != 5 or x.shape[0] not in (1, self.num_seeds):
            raise ValueError(
                f"input must be (S={self.num_seeds} or 1, B, C, H, W), got {tuple(x.shape)}"
            )
        if tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(f"input images must be {self.input_shape}, got {tuple(x.shape[2:])}")
        return x.shape[0]

    # -- subclass hooks ----------------------------------------------------------------

    def _layer_shapes(self) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def _plain_layers(self, k: int) -> nn.Sequential:
        raise NotImplementedError


class StackedMLP(StackedModel):
    """Flatten, then ``Linear -> activation [-> Dropout]`` per hidden width, then a Linear
    to logits; K members at once."""

    def __init__(self, config, members, input_shape, num_classes, hidden) -> None:
        super().__init__(config, members, input_shape, num_classes, hidden, allow_last_dim=True)

    def _layer_shapes(self) -> list[tuple[int, ...]]:
        C, H, W = self.input_shape
        dims = [C * H * W, *self.hidden, self.num_classes]
        return [(dims[i + 1], dims[i]) for i in range(len(dims) - 1)]

    def forward(self, x: Tensor, *, preactivations: list | None = None) -> Tensor:
        """x: (S, B, C, H, W), one batch per seed, or (1, B, C, H, W) shared by all seeds.
        Returns logits (K, B, num_classes)."""
        Sx = self._check_input(x)
        B = x.shape[1]
        x_t = x.reshape(Sx, B, -1).transpose(1, 2)
        weight, bias = self.weights[0], self.biases[0]
        # Layer 1: one wide GEMM per distinct batch, (Sx, K/Sx * H, D) @ (Sx, D, B); its
        # output (Sx, K/Sx * H, B) is the feature-major (K, H, B) without a copy.
        z_t = torch.baddbmm(bias.view(Sx, -1, 1), weight.view(Sx, -1, weight.shape[2]), x_t).view(
            self.num_members, weight.shape[1], B
        )
        h_t = self._hidden(0, z_t, preactivations)
        for layer in range(1, self.num_hidden):
            h_t = self._hidden(layer, self._dense(layer, h_t), preactivations)
        return self._logits(h_t)

    def _plain_layers(self, k: int) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Flatten()]
        for layer, (out_features, in_features) in enumerate(self._layer_shapes()):
            layers.append(nn.Linear(in_features, out_features))
            if layer < self.num_hidden:
                layers.append(self._plain_activation(k, layer))
                if self.dropout > 0:
                    layers.append(nn.Dropout(self.dropout))
        return nn.Sequential(*layers)


class StackedCNN(StackedModel):
    """``[Conv3x3(32, same) -> act -> MaxPool2] -> [Conv3x3(64, same) -> act -> MaxPool2]
    -> Flatten -> Linear(hidden[0]) -> act [-> Dropout] -> Linear`` to logits (the Keras
    MNIST-convnet shape; dropout only after the dense hidden layer).

    Stacked per activation group: each group's S*L members are one grouped-conv stack
    ``(B, S*L*C, H, W)`` through both conv blocks (conv 1 with Sx groups, as the members of
    a seed share its batch; conv 2 with S*L groups), so an activation runs once on its
    whole group tensor and the large conv outputs are never sliced or concatenated (that
    regrouping dominated the step). Groups rejoin in member order only after pooling. Input 1x28x28 (MNIST family) or 3x32x32 (CIFAR-10); any size
    >= 4x4 (pooling floors odd sides, as ``nn.MaxPool2d`` does)."""

    CHANNELS = (32, 64)

    def __init__(self, config, members, input_shape, num_classes, hidden) -> None:
        C, H, W = input_shape
        if H < 4 or W < 4:
            raise ConfigError(f"the CNN needs images of at least 4x4, got {H}x{W}; use --model mlp")
        super().__init__(
            config, members, input_shape, num_classes, hidden[:1], allow_last_dim=False
        )

    def _layer_shapes(self) -> list[tuple[int, ...]]:
        C, H, W = self.input_shape
        c1, c2 = self.CHANNELS
        flat = c2 * (H // 2 // 2) * (W // 2 // 2)
        return [
            (c1, C, 3, 3),
            (c2, c1, 3, 3),
            (self.hidden[0], flat),
            (self.num_classes, self.hidden[0]),
        ]

    def _group_weights(self, layer: int, a: int) -> tuple[Tensor, Tensor]:
        """Activation group a's conv weights, members in (seed, lr) order: the group's
        slice of the seed-major (K, Cout, Cin, 3, 3) stack, as one grouped-conv weight
        (S*L*Cout, Cin, 3, 3) and bias (S*L*Cout,). Weights are small, so the copy is
        cheap (the big activations are never regrouped)."""
        S, A, L = self.grid.shape
        weight, bias = self.weights[layer], self.biases[layer]
        weight = weight.view(S, A, L, *weight.shape[1:])[:, a]
        bias = bias.view(S, A, L, -1)[:, a]
        return weight.reshape(-1, *weight.shape[3:]), bias.reshape(-1)

    def _group_activate(self, layer: int, a: int, y: Tensor) -> Tensor:
        """Activation of group a on its conv output y (B, S*L*C, H, W), NCHW per member."""
        info, group = self.infos[a], self.acts[layer][a]
        if not info.learnable:
            return group(y)  # elementwise (the CNN refuses others): one call for the group
        # One module per member, on the member's own (B, C, H, W) channel block.
        parts = y.chunk(len(group), 1)
        return torch.cat([module(part) for module, part in zip(group, parts, strict=True)], 1)

    def _conv_layer(
        self, layer: int, hs: list[Tensor], groups: int, preactivations: list | None
    ) -> list[Tensor]:
        """Conv, activation, 2x2 max pool of each activation group's own stack.

        hs[a]: group a's input (B, groups*Cin, H, W); returns group a's (B, S*L*Cout, H/2,
        W/2). Each group is a separate grouped convolution, so the activation runs on the
        whole group tensor: no slicing or concatenation of the large conv outputs."""
        S, A, L = self.grid.shape
        ys = []
        for a, h in enumerate(hs):
            weight, bias = self._group_weights(layer, a)
            ys.append(F.conv2d(h, weight, bias, padding=1, groups=groups))
        if preactivations is not None:
            # Diagnostics want (K, B, C, H, W) in member order, as a node of the graph:
            # assemble it (a copy, paid only when asked) and route the groups through it.
            B, _, H, W = ys[0].shape
            per_group = [y.reshape(B, S, L, -1, H, W) for y in ys]
            pre = torch.stack(per_group, 2).flatten(1, 3).transpose(0, 1)
            preactivations.append(pre)
            grouped = pre.view(S, A, L, B, -1, H, W)
            ys = [grouped[:, a].permute(2, 0, 1, 3, 4, 5).reshape(B, -1, H, W) for a in range(A)]
        return [F.max_pool2d(self._group_activate(layer, a, y), 2) for a, y in enumerate(ys)]

    def forward(self, x: Tensor, *, preactivations: list | None = None) -> Tensor:
        """x: (S, B, C, H, W) or (1, B, C, H, W). Returns logits (K, B, num_classes)."""
        Sx = self._check_input(x)
        S, A, L = self.grid.shape
        _, B, C, H, W = x.shape
        # (B, Sx*C, H, W): conv 1 has Sx groups (the members of a seed share its batch).
        h = x.permute(1, 0, 2, 3, 4).reshape(B, Sx * C, H, W)
        if S * L > 1:
            # Channels-last (B, H, W, C) makes CPU max pooling and the grouped convs
            # faster once a group holds several members (measured: K=8 about 150 vs 185
            # ms/step); with one member per group plain NCHW is faster (88 vs 118 ms).
            h = h.contiguous(memory_format=torch.channels_last)
        hs = self._conv_layer(0, [h] * A, Sx, preactivations)
        hs = self._conv_layer(1, hs, S * L, preactivations)
        # Back to member order, each member's (C, H, W) flattened as nn.Flatten does:
        # feature-major (K, F, B). The pooled tensors are small, so this copy is cheap.
        h = torch.stack([g.reshape(B, S, L, -1) for g in hs], 2)  # (B, S, A, L, F)
        h_t = h.reshape(B, self.num_members, -1).permute(1, 2, 0)
        h_t = self._hidden(2, self._dense(2, h_t), preactivations)
        return self._logits(h_t)

    def _plain_layers(self, k: int) -> nn.Sequential:
        (c1, C, _, _), (c2, _, _, _), (hidden, flat), (classes, _) = self._layer_shapes()
        layers: list[nn.Module] = [
            nn.Conv2d(C, c1, 3, padding=1),
            self._plain_activation(k, 0),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            self._plain_activation(k, 1),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(flat, hidden),
            self._plain_activation(k, 2),
        ]
        if self.dropout > 0:
            layers.append(nn.Dropout(self.dropout))
        layers.append(nn.Linear(hidden, classes))
        return nn.Sequential(*layers)


def _argsort(perm: Sequence[int]) -> list[int]:
    return sorted(range(len(perm)), key=lambda i: perm[i])


def _init_stack(
    config: ExperimentConfig,
    grid: MemberGrid,
    infos: Sequence[ActivationInfo],
    shapes: Sequence[tuple[int, ...]],
) -> list[tuple[Tensor, Tensor]]:
    """Initial (K, *shape) weights and (K, out) biases: drawn per seed, layer by layer
    (weight then bias), scaled by each member's gain. See actlab.nn.weight_init."""
    per_seed = []
    for seed in grid.seeds:
        generator = torch.Generator().manual_seed(seed)
        draws = []
        for shape in shapes:
            weight = initlib.draw_weight(shape, config.init, generator)
            draws.append((weight, initlib.draw_bias(shape, config.init, generator)))
        per_seed.append(draws)
    _, A, L = grid.shape
    stacked = []
    for layer in range(len(shapes)):
        weights, biases = [], []
        for draws in per_seed:
            weight, bias = draws[layer]
            for a in range(A):
                is_hidden = layer < len(shapes) - 1
                gain = initlib.layer_gain(
                    config.init, config.init_gain, infos[a].gain if is_hidden else None
                )
                scaled = weight if gain == 1.0 else weight * gain
                weights += [scaled] * L
                biases += [bias] * L
        stacked.append((torch.stack(weights), torch.stack(biases)))
    return stacked


def build_model(
    config: ExperimentConfig,
    members: Sequence[Member],
    input_shape: tuple[int, int, int],
    num_classes: int,
    device: torch.device | str = "cpu",
    depth: int | None = None,
) -> StackedModel:
    """The stacked model of `members` (seed-major, as ``config.members_for(depth)``).

    Initial weights are drawn on the CPU per seed (so they do not depend on the device),
    then moved to `device`."""
    hidden = config.hidden_for(depth)
    if config.model == "mlp":
        model: StackedModel = StackedMLP(config, members, input_shape, num_classes, hidden)
    elif config.model == "cnn":
        if depth is not None:
            raise ConfigError("--depths applies to --model mlp only; drop --depths for the CNN")
        model = StackedCNN(config, members, input_shape, num_classes, hidden)
    else:
        raise ConfigError(f"unknown model {config.model!r}; choose mlp or cnn")
    return model.to(device)
