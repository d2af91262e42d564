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
from actlab.errors import ConfigError
from actlab.nn.models import DROPOUT_SEED_OFFSET
from actlab.nn.user_model import UserModel, activation_sites, build_member

# Seeds the per-member RNG of random ops in the one-by-one path apart from init and dropout.
RANDOM_SEED_OFFSET = 0x0A11_0C


class FallbackNotice(UserWarning):
    """Some members train one by one (the message says which and why)."""


_ANNOUNCED: set[tuple[str, str, str]] = set()  # (model, activation, reason) already said


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
            self.params = nn.ParameterList(
                nn.Parameter(
                    torch.stack([_named(m.named_parameters(), n).detach() for m in models])
                )
                for n in self.param_names
            )
            for i, name in enumerate(self.buffer_names):
                stacked = torch.stack([_named(m.named_buffers(), name) for m in models])
                self.register_buffer(f"buffer_{i}", stacked)
        except (RuntimeError, KeyError) as error:
            raise ConfigError(
                f"the members of {activation} do not have the same parameters ({error}); "
                "the model must be built the same way for every seed"
            ) from None
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
        by_activation: dict[str, list[int]] = {}
        for k, member in enumerate(self.members):
            by_activation.setdefault(member.activation, []).append(k)
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
        sample = sample[:2].to(device).clone()
        self._check_memory(sample, batch_size)
        for group in self.groups:
            self._check_output(group, sample)
            if stacking == "loop" or (stacking == "auto" and self._convolutions_on_cpu(group)):
                group.stacked = False  # by choice: no reason to report
            else:
                self._try_stacking(group, sample)
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
        return [(p, tuple(group.members)) for group in self.groups for p in group.params]

    def weight_layers(self) -> list[str]:
        """The weight of every Linear/Conv layer, by name (diagnostics' layers 1..L)."""
        return list(self.weight_names)

    def layer_grad_norms(self) -> Tensor:
        """(K, L): the L2 norm of each member's gradient of each Linear/Conv weight."""
        norms = []
        for group in self.groups:
            params, _ = group.state()
            norms.append(diagnostics_lib.layer_grad_norms([params[n] for n in self.weight_names]))
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
            run = self._stacked if group.stacked else self._one_by_one
            logits, captured = run(group, inputs, one_input, preactivations is not None)
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
            captured: list[Tensor] = []
            with _capturing(base, group.sites, captured) if capture else contextlib.nullcontext():
                out = functional_call(base, (params, buffers), (x,))
            return out, tuple(captured)

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
            captured: list[Tensor] = []
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
                out = functional_call(group.base, (member_params[i], member_buffers[i]), (x,))
                generator.set_state(torch.get_rng_state())
            outs.append(out)
            captures.append(captured)
        stacked_captures = tuple(torch.stack(c) for c in zip(*captures, strict=True))
        return torch.stack(outs), stacked_captures

    # -- checks at build time ----------------------------------------------------------

    def _weight_names(self) -> list[str]:
        names = None
        for group in self.groups:
            mine = [
                f"{path}.weight"
                for path, module in group.base.named_modules()
                if isinstance(module, nn.Linear | nn.modules.conv._ConvNd)
                and f"{path}.weight" in group.param_names
            ]
            if names is not None and len(mine) != len(names):
                raise ConfigError(
                    f"{self.user.reference} has {len(names)} Linear/Conv layers with "
                    f"{self.groups[0].activation} and {len(mine)} with {group.activation}; "
                    "the activation must not change the layers"
                )
            names = mine
        return names or []

    def _check_memory(self, sample: Tensor, batch_size: int) -> None:
        """Refuse a study that cannot fit: per member, the parameters four times (weights,
        gradients, Adam's two moments) plus the tensors autograd keeps for backward on one
        batch (measured on two samples, scaled to the batch), against the free memory."""
        group = self.groups[0]
        params, buffers = group.state(clone_buffers=True)
        saved: dict[int, int] = {}

        def pack(tensor: Tensor) -> Tensor:
            if not (tensor.is_leaf and tensor.requires_grad):  # weights are counted below
                saved[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
            return tensor

        group.source.mode = "record"
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                member_params = {n: p[0].detach().requires_grad_() for n, p in params.items()}
                functional_call(
                    group.base, (member_params, {n: b[0] for n, b in buffers.items()}), (sample,)
                )
        except Exception:  # a forward that fails is reported by _check_output
            return
        weights = sum(p[0].numel() * p.element_size() for p in group.params)
        per_member = 4 * weights + sum(saved.values()) * max(1, batch_size) / sample.shape[0]
        free = memory.available_bytes(self.inverse_order.device)
        needed = per_member * self.num_members
        if free is not None and needed > 0.8 * free:
            fit = int(0.8 * free // per_member)
            raise ConfigError(
                f"the {self.num_members} members of {self.user.reference} need about "
                f"{needed / 2**30:.1f} GiB ({per_member / 2**20:.0f} MiB each: weights, "
                f"gradients, Adam state and a batch of {batch_size}), but {free / 2**30:.1f} GiB "
                f"are free; about {fit} members would fit: use fewer --seeds or --activations, "
                "or a smaller --batch-size"
            )

    @torch.no_grad()
    def _check_output(self, group: GroupStack, sample: Tensor) -> None:
        """Member 0 of the group on two samples, in eval mode: logits (2, classes)."""
        params, buffers = group.state(clone_buffers=True)
        group.base.eval()
        group.source.mode = "record"
        try:
            out = functional_call(
                group.base,
                ({n: p[0] for n, p in params.items()}, {n: b[0] for n, b in buffers.items()}),
                (sample,),
            )
        except Exception as error:
            raise ConfigError(
                f"--model {self.user.reference}: a forward pass on a batch of shape "
                f"{tuple(sample.shape)} (the dataset's) raised {_first_line(error)}"
            ) from None
        finally:
            group.base.train()
        expected = (sample.shape[0], self.num_classes)
        if not isinstance(out, Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(
                f"--model {self.user.reference}: output {got} for a batch of {sample.shape[0]}; "
                f"actlab needs logits of shape (batch, classes) = {expected} for cross-entropy"
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
                return functional_call(base, (params, buffers), (x,))

            base.train()
            logits = vmap(member_forward, randomness="error")(params, buffers, x)
            loss = F.cross_entropy(logits.flatten(0, 1), torch.zeros(G * 2, dtype=torch.long,
                                   device=x.device))  # fmt: skip
            loss.backward()
            base.eval()
            with torch.no_grad():
                stacked = vmap(member_forward, in_dims=(0, 0, None), randomness="error")(
                    params, buffers, sample
                )
                alone = functional_call(
                    base,
                    ({n: p[0] for n, p in params.items()}, {n: b[0] for n, b in buffers.items()}),
                    (sample,),
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
        notice = (self.user.reference, group.activation, group.reason)
        if not group.stacked and notice not in _ANNOUNCED:
            _ANNOUNCED.add(notice)  # once per process, however many trainers are built
            warnings.warn(
                f"{self.user.reference}: the {group.activation} members train one by one "
                f"(not stacked): vmap could not run the model ({group.reason})",
                FallbackNotice,
                stacklevel=2,
            )


@contextlib.contextmanager
def _capturing(base: nn.Module, sites: Sequence[str], captured: list[Tensor]):
    """Append the input of each activation site to `captured` (forward pre-hooks)."""
    modules = dict(base.named_modules())
    handles = [
        modules[site].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        for site in sites
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _per_member(tensors: dict[str, Tensor], count: int) -> list[dict[str, Tensor]]:
    """{name: (G, ...)} -> G dicts {name: member i's (...)} (views)."""
    parts = {name: t.unbind(0) for name, t in tensors.items()}
    return [{name: p[i] for name, p in parts.items()} for i in range(count)]


def _argsort(values: Sequence[int]) -> list[int]:
    return sorted(range(len(values)), key=lambda i: values[i])


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__
