"""Any nn.Module, stacked: K members of the user's network trained as one model.

The members that share an activation have the same architecture, so their parameters and
buffers are stacked along a new leading dim (``torch.func.stack_module_state``'s layout)
and one forward pass runs them all: ``vmap(functional_call(base, (params, buffers), x))``
over the members, each on its own seed's batch (PyTorch's model-ensembling recipe). The
groups of different activations run one after another inside the same step, and one
backward pass of the summed member losses gives every member exactly its own gradient;
the stacked optimizer (actlab.nn.optim) updates them with per-member learning rates.

- BatchNorm: running statistics are stacked buffers, updated in place per member.
- Dropout: every ``nn.Dropout`` becomes a `MemberDropout`, whose masks come from the
  member's own generator (seeded by its seed alone), drawn site by site in forward order:
  ``mask = bernoulli(1 - p) / (1 - p)``. Masks never depend on which other members are
  in the stack (a shard of members draws the same ones), and the members of a seed share
  them, as they share the batch order (a paired comparison).
- Other randomness in forward is refused by ``vmap(randomness="error")``: such a group
  trains one by one instead (below).

A group that cannot be vmapped (data-dependent control flow, ``.item()``, in-place writes
into inputs, random ops, ...) trains **one by one** from the same stacked tensors: a
``functional_call`` per member on its slice of the parameters. Every other part (batches,
optimizer, checkpoints, diagnostics, run directory) is the same; ``fallbacks`` says which
groups and why. Random ops in that path draw from a per-member generator (CPU RNG), so
they are reproducible per member too.

The model implements the stacked-model interface of actlab.nn.models (forward on
``(S or 1, B, *input)`` -> ``(K, B, classes)``, ``parameter_members``, ``weight_layers``,
``member_activations``, ``dropout_generators``), so actlab.engine.trainer trains it unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from actlab.catalog import registry as catalog
from actlab.config import Member
from actlab.engine import diagnostics as diagnostics_lib
from actlab.engine import memory
from actlab.errors import ConfigError, ModelNotice
from actlab.nn.models import DROPOUT_SEED_OFFSET
from actlab.nn.swap import InPlace
from actlab.nn.user_model import (
    UserModel,
    activation_sites,
    build_member,
    count_remaining,
)

# Seeds the per-member RNG of random ops in the one-by-one path apart from init and dropout.
RANDOM_SEED_OFFSET = 0x0A11_0C


class FallbackNotice(ModelNotice):
    """Some members train one by one (the message says which and why)."""


_ANNOUNCED: set[tuple] = set()  # notices already given in this process


def _notice(key: tuple, message: str, category: type[Warning] = ModelNotice) -> None:
    """Warn once per process, however many trainers are built (ThreadKeeper builds one)."""
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        warnings.warn(message, category, stacklevel=3)


@contextlib.contextmanager
def attention_paths(vmapped: bool, device_type: str = "cpu"):
    """The attention kernels every member runs, the same in training and evaluation.

    - torch's fused inference fast path of nn.MultiheadAttention and the transformer layers
      is off: inside vmap ``requires_grad`` reads False, so an eval forward would take it
      even when a backward follows (the diagnostics probe), and its op has no derivative;
      it also bakes relu/gelu in.
    - Under vmap on a CPU, ``F.scaled_dot_product_attention`` runs its math kernel (matmul,
      softmax), which vmap batches natively: the CPU flash kernel has no batching rule and
      would go through PyTorch's slow per-member fallback. CUDA kernels have batching rules
      and are left to torch."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        if vmapped and device_type == "cpu":
            with sdpa_kernel([SDPBackend.MATH]):
                yield
        else:
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def logits_of(out):
    """The logits of a forward's output: the tensor itself, or the first element of a tuple
    or list (Inception-style auxiliary heads return ``(logits, aux_logits)`` in training;
    the auxiliary outputs are not trained)."""
    if isinstance(out, tuple | list) and out:
        return out[0]
    return out


# === dropout with per-member masks =======================================================


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


class GroupStack(nn.Module):
    """The members of one activation, stacked: parameter i is ``params[i]`` (G, ...)."""

    def __init__(self, activation: str, members: list[int], models: list[nn.Module], sites):
        super().__init__()
        self.activation = activation
        self.members = members
        first = models[0]
        self.param_names = [name for name, _ in first.named_parameters()]
        self.buffer_names = [name for name, _ in first.named_buffers()]
        try:
            params, buffers = stack_state(models)
        except (RuntimeError, KeyError, ValueError) as error:
            raise ConfigError(
                f"the members of {activation} do not have the same parameters ({error}); "
                "the model must be built the same way for every seed"
            ) from None
        # Frozen parameters (requires_grad False) stay frozen: stacked without a gradient,
        # left out of the optimizer (see `parameter_members`).
        self.params = nn.ParameterList(
            nn.Parameter(params[n].detach(), requires_grad=params[n].requires_grad)
            for n in self.param_names
        )
        for i, name in enumerate(self.buffer_names):
            self.register_buffer(f"buffer_{i}", buffers[name])
        self.frozen = [
            n for n, p in zip(self.param_names, self.params, strict=True) if not p.requires_grad
        ]
        # Parameters no gradient of the logits reaches (an auxiliary head): not trained, as
        # torch.optim skips a parameter whose .grad is None (found by _check_output).
        self.unreached: list[str] = []
        self.in_place = any(
            getattr(m, "inplace", False) is True or isinstance(m, InPlace) for m in first.modules()
        )
        self.sites = list(sites)
        self.source = MaskSource()
        self.has_dropout = False
        self.stacked = True
        self.reason = ""
        # The module whose code runs for every member: parameters are swapped in by
        # functional_call. Kept in a list: it is not part of the state_dict.
        self._base = [first]
        for module in first.modules():
            if isinstance(module, MemberDropout):
                module.source = self.source
                self.has_dropout = True

    @property
    def base(self) -> nn.Module:
        return self._base[0]

    def buffers_list(self) -> list[Tensor]:
        return [getattr(self, f"buffer_{i}") for i in range(len(self.buffer_names))]

    def state(self, clone_buffers: bool = False) -> tuple[dict, dict]:
        params = dict(zip(self.param_names, self.params, strict=True))
        buffers = self.buffers_list()
        if clone_buffers:
            buffers = [b.clone() for b in buffers]
        return params, dict(zip(self.buffer_names, buffers, strict=True))


def stack_state(models: Sequence[nn.Module]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The members' parameters and buffers stacked along a new leading dim, by name:
    ``torch.func.stack_module_state``'s layout and rules (a parameter requires grad when
    the members' do), which cannot be used itself: it refuses models of different classes,
    and every fx-rewritten member (a swap of calls in forward) is a GraphModule of a class
    of its own."""
    first = models[0]
    params = {}
    for name, param in first.named_parameters():
        stacked = torch.stack([_named(m.named_parameters(), name).detach() for m in models])
        params[name] = stacked.requires_grad_(param.requires_grad)
    buffers = {
        name: torch.stack([_named(m.named_buffers(), name) for m in models])
        for name, _ in first.named_buffers()
    }
    return params, buffers


def _named(items, name: str) -> Tensor:
    for key, value in items:
        if key == name:
            return value
    raise KeyError(name)


# === the stacked model ===================================================================


class StackedUserModel(nn.Module):
    """The user's network once per member, as one model (see the module docstring)."""

    def __init__(
        self,
        user: UserModel,
        members: Sequence[Member],
        swap: Sequence[str],
        sample: Tensor,
        num_classes: int,
        device: torch.device | str = "cpu",
        *,
        stacking: str = "auto",
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        self.user = user
        self.members = list(members)
        self.num_members = len(self.members)
        self.num_classes = num_classes
        self.seeds = tuple(dict.fromkeys(m.seed for m in self.members))
        self.member_seed = torch.tensor([self.seeds.index(m.seed) for m in self.members])
        self.stacking = stacking
        sample = sample[:2].to(device).clone()
        by_activation: dict[str, list[int]] = {}
        for k, member in enumerate(self.members):
            by_activation.setdefault(member.activation, []).append(k)
        # Sized from one member built on the meta device, before any member is allocated.
        self.saved_per_sample = self._check_memory_before_building(swap, sample, batch_size, device)
        self.groups = nn.ModuleList()
        self.swap_reports = {}
        for activation, indices in by_activation.items():
            models, sites = [], None
            for k in indices:
                model, report = build_member(user, activation, self.members[k].seed, swap)
                replace_dropout(model)
                sites = activation_sites(model, report) if sites is None else sites
                models.append(model)
            self.swap_reports[activation] = report
            self.groups.append(GroupStack(activation, indices, models, sites))
        self._check_sites()
        order = [k for group in self.groups for k in group.members]
        self.register_buffer("inverse_order", torch.tensor(_argsort(order)), persistent=False)
        self.register_buffer("seed_index", self.member_seed.clone(), persistent=False)
        self._dropout_generators = [dropout_generator(m.seed) for m in self.members]
        self._random_generators = [
            torch.Generator().manual_seed(m.seed + RANDOM_SEED_OFFSET) for m in self.members
        ]
        self._mask_shapes: dict[tuple, list[tuple[tuple[int, ...], float]]] = {}
        self.weight_names = self._weight_names()
        self.to(device)
        for group in self.groups:
            group.base.to(device)
        self._check_parameters()
        if self.saved_per_sample is None:  # not measurable on the meta device: measure now
            self.saved_per_sample = self._saved_per_sample(self.groups[0], sample)
            per_member = memory.user_member_bytes(
                self._weight_bytes(self.groups[0]), self.saved_per_sample, batch_size
            )
            memory.check_user_model_memory(
                user.reference, per_member, self.num_members, batch_size, device
            )
        self.has_batchnorm = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.groups[0].base.modules()
        )
        if self.has_batchnorm and batch_size < 2:
            raise ConfigError(
                f"--model {user.reference} has BatchNorm, which cannot train on batches of one "
                "sample: use --batch-size 2 or more"
            )
        for group in self.groups:
            self._check_output(group, sample)
            self._count_remaining(group, sample, swap)
            if stacking == "loop" or (stacking == "auto" and self._convolutions_on_cpu(group)):
                group.stacked = False  # by choice: no reason to report
            else:
                self._try_stacking(group, sample)
        self.weight_names = self._weight_names()  # without the parameters not trained
        self._announce_frozen()
        self.train()

    # -- interface of actlab.nn.models ----------------------------------------------------

    @property
    def fallbacks(self) -> list[tuple[str, str]]:
        """(activation, reason) of the groups that train one by one because vmap failed."""
        return [(g.activation, g.reason) for g in self.groups if g.reason]

    def _convolutions_on_cpu(self, group: GroupStack) -> bool:
        """On a CPU, vmap turns the members' convolutions into one grouped convolution,
        which oneDNN runs slower than the separate ones (ResNet-8, 4 members, batch 64, one
        thread: 631 ms a step vmapped, 425 ms member by member, 395 ms for 4 plain models,
        medians of 5 interleaved steps on a 2-core Xeon VM): such groups run member by member."""
        return self.inverse_order.device.type == "cpu" and any(
            isinstance(m, nn.modules.conv._ConvNd) for m in group.base.modules()
        )

    def parameter_members(self) -> list[tuple[nn.Parameter, tuple[int, ...]]]:
        """The trainable stacked parameters and their members (frozen ones left out)."""
        return [
            (p, tuple(group.members))
            for group in self.groups
            for name, p in zip(group.param_names, group.params, strict=True)
            if p.requires_grad and name not in group.unreached
        ]

    def weight_layers(self) -> list[str]:
        """The weight of every Linear/Conv layer, by name (diagnostics' layers 1..L)."""
        return list(self.weight_names)

    def layer_grad_norms(self) -> Tensor:
        """(K, L): the L2 norm of each member's gradient of each Linear/Conv weight."""
        norms = []
        for group in self.groups:
            params, _ = group.state()
            weights = [params[n] for n in self.weight_names]
            # A weight no gradient reaches (an auxiliary head whose output is not trained)
            # has a gradient norm of 0.
            norms.append(torch.stack([_grad_norm(w) for w in weights], dim=1))
        return torch.cat(norms).index_select(0, self.inverse_order)

    def member_activations(self) -> list[nn.Module]:
        """Member k's activation at its first site, with its own parameters if learnable."""
        out: list[nn.Module | None] = [None] * self.num_members
        for group in self.groups:
            template = catalog.get(group.activation)
            learnable = any(True for _ in template.parameters())
            params, _ = group.state()
            prefix = group.sites[0] + "." if group.sites else ""
            for i, k in enumerate(group.members):
                module = copy.deepcopy(template) if learnable else template
                if learnable:
                    with torch.no_grad():
                        for name, p in module.named_parameters():
                            if prefix + name in params:
                                p.copy_(params[prefix + name][i])
                out[k] = module.to(self.inverse_order.device)
        return out

    def probe_size(self, most: int) -> int:
        """Samples of the diagnostics probe: what one member's saved tensors allow within
        memory.PROBE_BUDGET_BYTES (the probe runs member by member), never depending on
        how many members the study has."""
        return memory.probe_samples(self.saved_per_sample or 0.0, most)

    def probe(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Diagnostics on the probe batch (x (B, *input), y (B,)), in eval mode, member by
        member (exact: a member's weight gradients are those of its own loss; the memory
        of one member, whatever their number): the weight-gradient norm of each
        Linear/Conv layer of the mean cross-entropy, and the dead/saturated fractions and
        moments of the input of each activation site. Each a (K, L) tensor."""
        was_training = self.training
        self.eval()
        activations = self.member_activations()
        rows: list[dict[str, Tensor] | None] = [None] * self.num_members
        try:
            for group in self.groups:
                params, buffers = group.state()
                member_params = _per_member(params, len(group.members))
                member_buffers = _per_member(buffers, len(group.members))
                for i, k in enumerate(group.members):
                    rows[k] = self._probe_member(
                        group, member_params[i], member_buffers[i], x, y, activations[k]
                    )
        finally:
            self.train(was_training)
        return {name: torch.cat([row[name] for row in rows]) for name in rows[0]}

    def _probe_member(self, group, params, buffers, x, y, activation) -> dict[str, Tensor]:
        weights = set(self.weight_names)
        leaves = {n: p.detach().requires_grad_(n in weights) for n, p in params.items()}
        captured: dict[str, list[Tensor]] = {}
        with attention_paths(False, x.device.type), _capturing(group.base, group.sites, captured):
            logits = logits_of(functional_call(group.base, (leaves, buffers), (x,)))
        norms = torch.zeros(1, len(self.weight_names), device=x.device)
        if self.weight_names:
            loss = F.cross_entropy(logits, y)
            grads = torch.autograd.grad(
                loss, [leaves[n] for n in self.weight_names], allow_unused=True
            )
            for layer, grad in enumerate(grads):
                if grad is not None:
                    norms[0, layer] = torch.linalg.vector_norm(grad, dtype=torch.float32)
        preacts = [t.detach().unsqueeze(0) for t in _per_site(captured, group.sites)]
        out = {"probe_grad_norm": norms}
        if preacts:
            dead, saturated = diagnostics_lib.unit_fractions(preacts, [activation])
            mean, std = diagnostics_lib.preact_moments(preacts)
            out.update(dead_frac=dead, saturated_frac=saturated, preact_mean=mean, preact_std=std)
        return out

    def dropout_generators(self) -> list[torch.Generator]:
        """Per member: the dropout generator, then the one-by-one path's random generator."""
        return self._dropout_generators + self._random_generators

    def train(self, mode: bool = True) -> StackedUserModel:
        super().train(mode)
        for group in self.groups:
            group.base.train(mode)
        return self

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        device = self.inverse_order.device
        if self._dropout_generators and self._dropout_generators[0].device != device:
            self._dropout_generators = [dropout_generator(m.seed, device) for m in self.members]
        return result

    # -- forward -----------------------------------------------------------------------

    def forward(self, x: Tensor, *, preactivations: list | None = None) -> Tensor:
        """x: (S, B, *input), one batch per seed (`seeds` order), or (1, B, *input) shared.
        Returns logits (K, B, classes); `preactivations` gets the input of every swapped
        activation site, (K, B, ...) each."""
        shared = x.shape[0] == 1  # evaluation (or a single seed): one batch for all
        outs, captures = [], []
        for group in self.groups:
            index = self.seed_index[group.members]
            inputs = x[0] if shared else x.index_select(0, index)
            one_input = shared
            if shared and group.stacked:
                # Batched like a training input (a free expand, no copy): vmap then runs
                # each member's layers exactly as in training, whatever the group size
                # (an unbatched input would merge the members' convolutions into one,
                # whose rounding depends on how many members there are).
                inputs, one_input = inputs.expand(len(group.members), *inputs.shape), False
            if group.in_place:  # an in-place activation must not write into the dataset
                inputs = inputs.clone()
            run = self._stacked if group.stacked else self._one_by_one
            try:
                with attention_paths(group.stacked, inputs.device.type):
                    logits, captured = run(group, inputs, one_input, preactivations is not None)
            except ConfigError:
                raise
            except Exception as error:  # the user's forward: one line, the run dir intact
                mode = "training" if self.training else "evaluation"
                raise ConfigError(
                    f"--model {self.user.reference}: a {mode} forward pass on a batch of shape "
                    f"{tuple(inputs.shape[0 if one_input else 1 :])} raised {_first_line(error)}"
                ) from None
            outs.append(logits)
            captures.append(captured)
        logits = torch.cat(outs).index_select(0, self.inverse_order)
        if preactivations is not None:
            for site in range(len(captures[0])):
                joined = torch.cat([c[site] for c in captures])
                preactivations.append(joined.index_select(0, self.inverse_order))
        return logits

    def _stacked(self, group: GroupStack, inputs: Tensor, shared: bool, capture: bool):
        params, buffers = group.state()
        masks = self._masks(group, inputs, shared) if group.has_dropout and self.training else []
        base, source = group.base, group.source

        def member_forward(params, buffers, x, masks):
            source.mode, source.queue = "queue", list(masks)
            captured: dict[str, list[Tensor]] = {}
            with _capturing(base, group.sites, captured) if capture else contextlib.nullcontext():
                out = logits_of(functional_call(base, (params, buffers), (x,)))
            return out, _per_site(captured, group.sites) if capture else ()

        in_dims = (0, 0, None if shared else 0, 0)
        return vmap(member_forward, in_dims=in_dims, randomness="error")(
            params, buffers, inputs, masks
        )

    def _masks(self, group: GroupStack, inputs: Tensor, shared: bool) -> list[Tensor]:
        """This step's dropout masks, (G, *shape) per site: member k's drawn site after
        site from its own generator, exactly as the one-by-one path draws them."""
        shape = tuple(inputs.shape) if shared else tuple(inputs.shape[1:])
        key = (group.activation, shape)
        if key not in self._mask_shapes:
            self._mask_shapes[key] = self._record_shapes(group, inputs[0] if not shared else inputs)
        shapes = self._mask_shapes[key]
        per_member = []
        for k in group.members:
            generator = self._dropout_generators[k]
            per_member.append(
                [draw_mask(s, p, generator, inputs.dtype, inputs.device) for s, p in shapes]
            )
        return [torch.stack([masks[i] for masks in per_member]) for i in range(len(shapes))]

    @torch.no_grad()
    def _record_shapes(self, group: GroupStack, x: Tensor) -> list[tuple[tuple[int, ...], float]]:
        """(input shape, p) of each dropout call, in forward order, for one member's input
        `x` (one forward of member 0 on copies of its buffers)."""
        params, buffers = group.state(clone_buffers=True)
        source = group.source
        source.mode, source.shapes = "record", []
        functional_call(group.base, ({n: p[0] for n, p in params.items()},
                                     {n: b[0] for n, b in buffers.items()}), (x,))  # fmt: skip
        return list(source.shapes)

    def _one_by_one(self, group: GroupStack, inputs: Tensor, shared: bool, capture: bool):
        params, buffers = group.state()
        # One unbind per tensor (its backward stacks the G gradients once), not G selects
        # (each of whose backwards would fill a whole (G, ...) gradient).
        member_params = _per_member(params, len(group.members))
        member_buffers = _per_member(buffers, len(group.members))
        source = group.source
        outs, captures = [], []
        for i, k in enumerate(group.members):
            x = inputs if shared else inputs[i]
            source.mode, source.generator = "member", self._dropout_generators[k]
            captured: dict[str, list[Tensor]] = {}
            generator = self._random_generators[k]
            with (
                torch.random.fork_rng(devices=[]),
                (
                    _capturing(group.base, group.sites, captured)
                    if capture
                    else contextlib.nullcontext()
                ),
            ):
                torch.set_rng_state(generator.get_state())
                out = logits_of(
                    functional_call(group.base, (member_params[i], member_buffers[i]), (x,))
                )
                generator.set_state(torch.get_rng_state())
            outs.append(out)
            captures.append(_per_site(captured, group.sites) if capture else ())
        stacked_captures = tuple(torch.stack(c) for c in zip(*captures, strict=True))
        return torch.stack(outs), stacked_captures

    # -- checks at build time ----------------------------------------------------------

    def _weight_names(self) -> list[str]:
        names = None
        for group in self.groups:
            trainable = {n for n, p in zip(group.param_names, group.params, strict=True)
                         if p.requires_grad and n not in group.unreached}  # fmt: skip
            mine = [
                f"{path}.weight"
                for path, module in group.base.named_modules()
                if isinstance(module, nn.Linear | nn.modules.conv._ConvNd)
                and f"{path}.weight" in trainable
            ]
            if names is not None and len(mine) != len(names):
                raise ConfigError(
                    f"{self.user.reference} has {len(names)} Linear/Conv layers with "
                    f"{self.groups[0].activation} and {len(mine)} with {group.activation}; "
                    "the activation must not change the layers"
                )
            names = mine
        return names or []

    def _check_memory_before_building(self, swap, sample: Tensor, batch_size: int, device):
        """Build member 0 on the meta device (no memory), measure its weights and the
        tensors autograd saves on two samples, and refuse a study that cannot fit before
        any member is built. Returns the saved bytes per sample, or None when the model
        cannot be built or run on the meta device (then measured on the real member 0)."""
        first = self.members[0]
        try:
            meta, _ = build_member(self.user, first.activation, first.seed, swap, device="meta")
        except ConfigError:
            raise
        except Exception:  # a builder that cannot run on meta: measured after building
            return None
        weight_bytes = sum(p.numel() * p.element_size() for p in meta.parameters())
        saved = None
        try:
            replace_dropout(meta)
            x = sample.to("meta")
            meta.train()
            with attention_paths(False, "meta"):
                saved = memory.saved_bytes(lambda: meta(x)) / x.shape[0]
        except Exception:  # a forward that cannot run on meta: weights alone for now
            pass
        per_member = memory.user_member_bytes(weight_bytes, saved or 0.0, batch_size)
        memory.check_user_model_memory(
            self.user.reference, per_member, self.num_members, batch_size, device
        )
        return saved

    def _saved_per_sample(self, group: GroupStack, sample: Tensor) -> float:
        """Bytes autograd saves per sample for one member (measured on `sample`)."""
        params, buffers = group.state(clone_buffers=True)
        group.source.mode = "record"
        member_params = {
            n: p[0].detach().requires_grad_(p.requires_grad) for n, p in params.items()
        }
        member_buffers = {n: b[0] for n, b in buffers.items()}
        try:
            with attention_paths(False, sample.device.type):
                saved = memory.saved_bytes(
                    lambda: functional_call(group.base, (member_params, member_buffers), (sample,))
                )
        except Exception:  # a forward that fails is reported by _check_output
            return 0.0
        return saved / sample.shape[0]

    @staticmethod
    def _weight_bytes(group: GroupStack) -> int:
        return sum(p[0].numel() * p.element_size() for p in group.params)

    def _check_sites(self) -> None:
        """Every activation's network has its activations at the same places (the rows of
        diagnostics.csv): a swap that placed more for one activation is refused."""
        counts = {group.activation: len(group.sites) for group in self.groups}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{a}: {n}" for a, n in counts.items())
            raise ConfigError(
                f"--model {self.user.reference}: the activations were put at different numbers "
                f"of places ({listed}); the network must be the same for every activation"
            )

    def _check_parameters(self) -> None:
        """float32 parameters, and at least one to train: one line otherwise."""
        group = self.groups[0]
        odd = sorted(
            {str(p.dtype).removeprefix("torch.") for p in group.params if p.dtype != torch.float32}
        )
        if odd:
            raise ConfigError(
                f"--model {self.user.reference} has {', '.join(odd)} parameters; actlab trains "
                "in float32 on float32 data: build the model in float32 (no .double()/.half())"
            )
        if not any(p.requires_grad for p in group.params):
            raise ConfigError(
                f"--model {self.user.reference} has no trainable parameters (none, or all with "
                "requires_grad=False): there is nothing to train"
            )

    def _announce_frozen(self) -> None:
        unreached = self.groups[0].unreached
        if unreached:
            shown = ", ".join(unreached[:4]) + (", ..." if len(unreached) > 4 else "")
            _notice(
                ("unreached", self.user.reference, tuple(unreached)),
                f"{self.user.reference}: no gradient of the logits (the forward's output, or "
                f"its first element) reaches {shown}: not trained, as torch.optim skips them",
            )
        frozen = self.groups[0].frozen
        if frozen:
            shown = ", ".join(frozen[:4]) + (", ..." if len(frozen) > 4 else "")
            _notice(
                ("frozen", self.user.reference, tuple(frozen)),
                f"{self.user.reference}: {len(frozen)} of {len(self.groups[0].param_names)} "
                f"parameter tensors are frozen (requires_grad=False: {shown}) and stay frozen",
            )

    def _count_remaining(self, group: GroupStack, sample: Tensor, swap) -> None:
        """Count, in a forward of member 0 on `sample` (copies of its buffers), the
        activation ops of the replaced kinds that still run; say so when there are any."""
        report = self.swap_reports[group.activation]
        params, buffers = group.state(clone_buffers=True)
        group.source.mode = "record"
        state = (
            {n: p[0].detach() for n, p in params.items()},
            {n: b[0] for n, b in buffers.items()},
        )

        def run():
            with attention_paths(False, sample.device.type):
                functional_call(group.base, state, (sample.clone(),))

        try:
            count_remaining(group.base, report, sample, swap, run=run)
        finally:
            group.base.train()
        if report.remaining:
            builder = report.modules and report.modules[0][1] == "act()"
            what = (
                "the builder's act() did not reach every activation"
                if builder
                else "the swap did not reach every activation"
            )
            _notice(
                ("remaining", self.user.reference, group.activation),
                f"{self.user.reference} ({group.activation} members): {what}"
                + report.remaining_text(),
            )

    def describe_stacking(self) -> str:
        """One line: how the members run (vmapped or member by member) and why."""
        stacked = [g.activation for g in self.groups if g.stacked]
        loop = [g for g in self.groups if not g.stacked]
        if not loop:
            return (
                f"stacking: vmap (--stacking {self.stacking}): the members of each activation "
                "run as one vmapped call"
            )
        if self.stacking == "loop":
            why = "--stacking loop"
        elif all(not g.reason for g in loop):
            why = (
                "auto: on a CPU, vmap turns the members' convolutions into one grouped "
                "convolution, slower than running them one by one"
            )
        else:
            why = "; ".join(
                f"{g.activation}: vmap could not run the model ({g.reason})"
                for g in loop
                if g.reason
            )
        which = "every activation" if not stacked else ", ".join(g.activation for g in loop)
        return f"stacking: member by member for {which} ({why})"

    def _check_output(self, group: GroupStack, sample: Tensor) -> None:
        """Member 0 of the group on two samples (copies of its buffers), in eval mode under
        no_grad and in training mode with a backward pass: logits (2, classes) in both (a
        tuple's first element, see `logits_of`); one line for any failure."""
        params, buffers = group.state(clone_buffers=True)
        group.source.mode = "record"
        member_buffers = {n: b[0] for n, b in buffers.items()}
        for training in (False, True):
            mode = "training" if training else "evaluation"
            member_params = {
                n: p[0].detach().requires_grad_(training and p.requires_grad)
                for n, p in params.items()
            }
            group.base.train(training)
            try:
                with torch.set_grad_enabled(training), attention_paths(False, sample.device.type):
                    out = logits_of(
                        functional_call(group.base, (member_params, member_buffers), (sample,))
                    )
                    if training and isinstance(out, Tensor) and out.requires_grad:
                        out.float().sum().backward()
                        group.unreached = [
                            n
                            for n, p in member_params.items()
                            if p.requires_grad and p.grad is None
                        ]
            except Exception as error:
                raise ConfigError(
                    f"--model {self.user.reference}: a {mode} forward pass on a batch of shape "
                    f"{tuple(sample.shape)} (the dataset's) raised {_first_line(error)}"
                ) from None
            finally:
                group.base.train()
            expected = (sample.shape[0], self.num_classes)
            if not isinstance(out, Tensor) or tuple(out.shape) != expected:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ConfigError(
                    f"--model {self.user.reference}: {mode} output {got} for a batch of "
                    f"{sample.shape[0]}; actlab needs logits of shape (batch, classes) = "
                    f"{expected} for cross-entropy (or a tuple whose first element they are)"
                )

    def _try_stacking(self, group: GroupStack, sample: Tensor) -> None:
        """A vmapped training step on two samples, on copies of the buffers, and the
        vmapped eval logits against member 0's own forward; any failure: one by one."""
        G = len(group.members)
        x = sample.unsqueeze(0).expand(G, *sample.shape)
        params, buffers = group.state(clone_buffers=True)
        base, source = group.base, group.source
        try:

            def member_forward(params, buffers, x):
                source.mode = "record"  # no masks: the trial draws none
                return logits_of(functional_call(base, (params, buffers), (x,)))

            base.train()
            device_type = x.device.type
            with attention_paths(True, device_type):
                logits = vmap(member_forward, randomness="error")(params, buffers, x)
            loss = F.cross_entropy(logits.flatten(0, 1), torch.zeros(G * 2, dtype=torch.long,
                                   device=x.device))  # fmt: skip
            loss.backward()
            base.eval()
            with torch.no_grad(), attention_paths(True, device_type):
                stacked = vmap(member_forward, in_dims=(0, 0, 0), randomness="error")(
                    params, buffers, x.contiguous()
                )
            with torch.no_grad(), attention_paths(False, device_type):
                alone = logits_of(
                    functional_call(
                        base,
                        (
                            {n: p[0] for n, p in params.items()},
                            {n: b[0] for n, b in buffers.items()},
                        ),
                        (sample,),
                    )
                )
            if not torch.allclose(stacked[0], alone, rtol=1e-4, atol=1e-5):
                raise RuntimeError("the vmapped forward differs from the member's own forward")
        except Exception as error:
            group.stacked = False
            group.reason = _first_line(error)
        finally:
            base.train()
            for p in group.params:
                p.grad = None
        if not group.stacked:
            _notice(
                (self.user.reference, group.activation, group.reason),
                f"{self.user.reference}: the {group.activation} members train one by one "
                f"(not stacked): vmap could not run the model ({group.reason})",
                FallbackNotice,
            )


@contextlib.contextmanager
def _capturing(base: nn.Module, sites: Sequence[str], captured: dict[str, list[Tensor]]):
    """Collect the input of each activation site in `captured[site]`, one entry per call
    (forward pre-hooks); `_per_site` joins a reused module's calls into one site."""
    modules = dict(base.named_modules())

    def hook(site: str):
        return lambda _m, args: captured.setdefault(site, []).append(args[0])

    handles = [modules[site].register_forward_pre_hook(hook(site)) for site in sites]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _per_site(captured: dict[str, list[Tensor]], sites: Sequence[str]) -> tuple[Tensor, ...]:
    """One tensor per site (a place in the network), whatever the number of calls: a module
    called at several places in forward gives the values of all its calls, joined along the
    sample dim when their shapes agree (its units are the same units), else as (B, values)
    where every position of every call is a unit."""
    out = []
    for site in sites:
        calls = captured.get(site, [])
        if not calls:
            raise RuntimeError(f"activation site {site} was not called in forward")
        if len(calls) == 1:
            out.append(calls[0])
        elif all(c.shape[1:] == calls[0].shape[1:] for c in calls):
            out.append(torch.cat(calls, dim=0))
        else:
            out.append(torch.cat([c.flatten(1) for c in calls], dim=1))
    return tuple(out)


def _grad_norm(weight: Tensor) -> Tensor:
    """(G,) L2 norm of each member's gradient of a stacked weight (0 without a gradient)."""
    if weight.grad is None:
        return torch.zeros(weight.shape[0], device=weight.device)
    dims = tuple(range(1, weight.dim()))
    return torch.linalg.vector_norm(weight.grad, dim=dims, dtype=torch.float32)


def _per_member(tensors: dict[str, Tensor], count: int) -> list[dict[str, Tensor]]:
    """{name: (G, ...)} -> G dicts {name: member i's (...)} (views)."""
    parts = {name: t.unbind(0) for name, t in tensors.items()}
    return [{name: p[i] for name, p in parts.items()} for i in range(count)]


def _argsort(values: Sequence[int]) -> list[int]:
    return sorted(range(len(values)), key=lambda i: values[i])


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__
