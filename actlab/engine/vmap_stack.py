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
- Attention: torch's fused inference fast path is off in training and evaluation alike
  (inside vmap it would be taken before a backward, and it bakes relu/gelu in), and under
  vmap on a CPU ``scaled_dot_product_attention`` runs its math kernel, which vmap batches
  natively (see actlab.engine.member_group.attention_paths).
- A forward that returns a tuple (an auxiliary head): its first element is the logits.
- Frozen parameters (``requires_grad=False``) stay frozen: not in the optimizer, said.
- Diagnostics probe the members one by one (`probe`), on a batch sized from one member.

Where vmap runs every member is decided per activation group: ``--stacking vmap``,
``loop`` (member by member), or ``auto``: vmap on a GPU, member by member on a CPU, where it
was measured faster (`_on_cpu`). A group that cannot be vmapped (data-dependent control flow, ``.item()``, in-place writes
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
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from actlab.catalog import gated
from actlab.catalog import registry as catalog
from actlab.config import Member
from actlab.engine import diagnostics as diagnostics_lib
from actlab.engine import memory
from actlab.engine import user_checks as checks
from actlab.engine.member_dropout import (  # noqa: F401  (MemberDropout: part of this API)
    MaskSource,
    MemberDropout,
    draw_mask,
    dropout_generator,
    replace_dropout,
)
from actlab.engine.member_group import (  # noqa: F401  (FallbackNotice: part of this API)
    FallbackNotice,
    GroupStack,
    attention_paths,
    capturing,
    first_line,
    grad_norm,
    logits_of,
    per_member,
    per_site,
)
from actlab.errors import ConfigError
from actlab.nn.user_model import UserModel, activation_sites, build_member

# Seeds the per-member RNG of random ops in the one-by-one path apart from init and dropout.
RANDOM_SEED_OFFSET = 0x0A11_0C


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
        objective=None,
        targets: Tensor | None = None,
    ) -> None:
        """`objective` (actlab.engine.objective) and two samples' `targets`: the output is
        checked against the study's loss; without them, logits (batch, num_classes) for
        cross-entropy are asked for."""
        super().__init__()
        self.user = user
        self.objective = objective
        self.target_sample = None if targets is None else targets[:2].to(device)
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
        checks.check_weights_before_building(self, swap, batch_size, device)
        self.groups = nn.ModuleList()
        self.swap_reports = {}
        for activation, indices in by_activation.items():
            self._add_group(activation, indices, swap)
        checks.check_sites(self)
        order = [k for group in self.groups for k in group.members]
        self.register_buffer("inverse_order", torch.tensor(_argsort(order)), persistent=False)
        self.register_buffer("seed_index", self.member_seed.clone(), persistent=False)
        self._dropout_generators = [dropout_generator(m.seed) for m in self.members]
        self._random_generators = [
            torch.Generator().manual_seed(m.seed + RANDOM_SEED_OFFSET) for m in self.members
        ]
        self._mask_shapes: dict[tuple, list[tuple[tuple[int, ...], float]]] = {}
        self._own_modules: dict[int, list[nn.Module]] = {}  # see `_member_modules`
        self.weight_names = self._weight_names()
        self.to(device)
        for group in self.groups:
            group.base.to(device)
        checks.check_parameters(self)
        self.saved_per_sample = checks.check_memory(self, sample, batch_size, device)
        self.has_batchnorm = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.groups[0].base.modules()
        )
        if self.has_batchnorm and batch_size < 2:
            raise ConfigError(
                f"--model {user.reference} has BatchNorm, which cannot train on batches of one "
                "sample: use --batch-size 2 or more"
            )
        for group in self.groups:
            checks.check_output(self, group, sample)
        checks.say_remaining(self, sample, swap)
        for group in self.groups:
            if stacking == "loop" or (stacking == "auto" and self._on_cpu()):
                group.stacked = False  # by choice: no reason to report
            else:
                checks.try_stacking(self, group, sample)
        self.weight_names = self._weight_names()  # without the parameters not trained
        checks.announce_frozen(self)
        self.train()

    def _add_group(self, activation: str, indices: list[int], swap: Sequence[str]) -> None:
        """Build the members of one activation (each after its seed) and stack them."""
        models, sites = [], None
        for k in indices:
            model, report = build_member(self.user, activation, self.members[k].seed, swap)
            replace_dropout(model)
            sites = activation_sites(model, report) if sites is None else sites
            models.append(model)
        self.swap_reports[activation] = report
        self.groups.append(GroupStack(activation, indices, models, sites))

    # -- interface of actlab.nn.models ----------------------------------------------------

    @property
    def fallbacks(self) -> list[tuple[str, str]]:
        """(activation, reason) of the groups that train one by one because vmap failed."""
        return [(g.activation, g.reason) for g in self.groups if g.reason]

    def _on_cpu(self) -> bool:
        """--stacking auto runs the members one by one on a CPU: measured faster than vmap
        for every kind of network tried (benchmarks/own_model.py; one thread, batch 64,
        medians of 6 interleaved steps on a shared 2-core Xeon VM, per step of 4 members:
        ResNet-8 912 ms one by one, 1129 ms vmapped, 921 ms for 4 plain models; ViT with
        nn.MultiheadAttention 150, 172, 150 ms; MLP 14.5, 19.0, 26.6 ms, and with 16
        members 42, 53, 76 ms). vmap turns the members' convolutions into one grouped
        convolution, which oneDNN runs slower than separate ones, and batches the GEMMs of
        small layers no faster than MKL runs them one by one. On a GPU vmap saves the
        launches of K small kernels: there it is the default."""
        return self.inverse_order.device.type == "cpu"

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
            norms.append(torch.stack([grad_norm(w) for w in weights], dim=1))
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

    def probe(self, x: Tensor, y: Tensor, loss=None) -> dict[str, Tensor]:
        """Diagnostics on the probe batch (x (B, *input), y (B,)), in eval mode, member by
        member (exact: a member's weight gradients are those of its own loss; the memory
        of one member, whatever their number): the weight-gradient norm of each
        Linear/Conv layer of the member's loss (`loss(output, target)`, default the mean
        cross-entropy), and the dead/saturated fractions and moments of the input of each
        activation site. Each a (K, L) tensor."""
        was_training = self.training
        self.eval()
        activations = self.member_activations()
        rows: list[dict[str, Tensor] | None] = [None] * self.num_members
        try:
            for group in self.groups:
                params, buffers = group.state()
                member_params = per_member(params, len(group.members))
                member_buffers = per_member(buffers, len(group.members))
                for i, k in enumerate(group.members):
                    rows[k] = self._probe_member(
                        group, member_params[i], member_buffers[i], x, y, activations[k], loss
                    )
        finally:
            self.train(was_training)
        return {name: torch.cat([row[name] for row in rows]) for name in rows[0]}

    def _probe_member(self, group, params, buffers, x, y, activation, loss_of=None):
        weights = set(self.weight_names)
        leaves = {n: p.detach().requires_grad_(n in weights) for n, p in params.items()}
        captured: dict[str, list[Tensor]] = {}
        with attention_paths(False, x.device.type), capturing(group.base, group.sites, captured):
            logits = logits_of(functional_call(group.base, (leaves, buffers), (x,)))
        norms = torch.zeros(1, len(self.weight_names), device=x.device)
        if self.weight_names:
            loss = (loss_of or F.cross_entropy)(logits, y)
            grads = torch.autograd.grad(
                loss, [leaves[n] for n in self.weight_names], allow_unused=True
            )
            for layer, grad in enumerate(grads):
                if grad is not None:
                    norms[0, layer] = torch.linalg.vector_norm(grad, dtype=torch.float32)
        preacts = [t.detach().unsqueeze(0) for t in per_site(captured, group.sites)]
        if gated.is_gated(group.activation):  # its units are its gate's: gate(b) of [a, b]
            preacts = [diagnostics_lib.gate_input(t) for t in preacts]
            activation = catalog.get(gated.gate_spec(group.activation))
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
        self._own_modules = {}  # views of the tensors replaced
        device = self.inverse_order.device
        if self._dropout_generators and self._dropout_generators[0].device != device:
            self._dropout_generators = [dropout_generator(m.seed, device) for m in self.members]
        return result

    # -- forward -----------------------------------------------------------------------

    def forward(self, x: Tensor, *, preactivations: list | None = None) -> Tensor:
        """x: (S, B, *input), one batch per seed (`seeds` order), or (1, B, *input) shared.
        Returns logits (K, B, classes); `preactivations` gets the input of every swapped
        activation site, (K, B, ...) each (when the activations' sites have one shape:
        a gated unit's input is twice as wide, see `site_inputs`)."""
        logits, captures = self._forward_groups(x, preactivations is not None)
        if preactivations is not None:
            for site in range(len(captures[0])):
                shapes = {tuple(c[site].shape[1:]) for c in captures}
                if len(shapes) > 1:
                    raise ValueError(
                        f"activation site {site} has inputs of shapes {sorted(shapes)} across "
                        "activations (a gated unit's is wider): use site_inputs"
                    )
                joined = torch.cat([c[site] for c in captures])
                preactivations.append(joined.index_select(0, self.inverse_order))
        return logits

    @torch.no_grad()
    def units_per_sample(self, x: Tensor) -> int:
        """The widest activation input's values per sample and member over every activation
        (members of a gated activation have other widths than plain ones), on `x` (1, B, ...)."""
        _, captures = self._forward_groups(x, True)
        return max(t[0, 0].numel() for captured in captures for t in captured)

    def _forward_groups(self, x: Tensor, capture: bool) -> tuple[Tensor, list[tuple]]:
        """Logits (K, B, classes) in member order, and each group's captured site inputs."""
        outs, captures = [], []
        for group in self.groups:
            inputs, one_input = self._group_inputs(group, x)
            run = self._stacked if group.stacked else self._one_by_one
            with self._user_forward(group, inputs, one_input):
                logits, captured = run(group, inputs, one_input, capture)
            outs.append(logits)
            captures.append(captured)
        return torch.cat(outs).index_select(0, self.inverse_order), captures

    @property
    def member_by_member(self) -> bool:
        """Whether every member runs on its own (no group vmapped): `train_members` then
        trains them as K plain loops do."""
        return not any(group.stacked for group in self.groups)

    def train_members(
        self,
        x: Tensor,
        targets: Tensor,
        member_loss: Callable[[Tensor, Tensor], Tensor],
        keep: Callable[[int, float], bool],
    ) -> tuple[Tensor, Tensor]:
        """A training step's forward and backward when every member runs on its own
        (`member_by_member`): member k's backward right after its own forward, as K plain
        loops do, so that one member's saved activations are held at a time (one backward
        of the summed losses after every forward was measured 5-8% slower on a CPU,
        benchmarks/own_model.py). The gradients are the same: member k's loss reaches its
        own slices of the stacked parameters only.

        x: (S, B, *input) as `forward`; targets (K, B, ...); ``member_loss(output (B, ...),
        targets (B, ...))`` a member's loss; ``keep(k, loss)`` whether member k's loss is
        back-propagated (the trainer's divergence check, before the backward). Gradients
        accumulate into the stacked parameters' ``.grad``. Returns the outputs
        (K, B, ...) and the losses (K,), detached."""
        outs, losses = [], []
        for index, group in enumerate(self.groups):
            inputs, one_input = self._group_inputs(group, x)
            modules = self._member_modules(index, group)
            with self._user_forward(group, inputs, one_input):
                for i, out, _ in self._member_forwards(group, inputs, one_input, False, modules):
                    k = group.members[i]
                    loss = member_loss(out, targets[k])
                    if keep(k, loss.item()):
                        loss.backward()
                    outs.append(out.detach())
                    losses.append(loss.detach())
        order = self.inverse_order
        return torch.stack(outs).index_select(0, order), torch.stack(losses).index_select(0, order)

    def _group_inputs(self, group: GroupStack, x: Tensor) -> tuple[Tensor, bool]:
        """The group's inputs: (G, B, ...) its members' seeds' batches, or the shared batch
        (and True) in evaluation."""
        shared = x.shape[0] == 1  # evaluation (or a single seed): one batch for all
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
        return inputs, one_input

    @contextlib.contextmanager
    def _user_forward(self, group: GroupStack, inputs: Tensor, one_input: bool):
        """The attention kernels of the group's forward; an exception of the user's
        forward as one line (ConfigError), the run directory intact."""
        try:
            with attention_paths(group.stacked, inputs.device.type):
                yield
        except ConfigError:
            raise
        except Exception as error:
            mode = "a training" if self.training else "an evaluation"
            raise ConfigError(
                f"--model {self.user.reference}: {mode} forward pass on a batch of shape "
                f"{tuple(inputs.shape[0 if one_input else 1 :])} raised {first_line(error)}"
            ) from None

    def _stacked(self, group: GroupStack, inputs: Tensor, shared: bool, capture: bool):
        params, buffers = group.state()
        masks = self._masks(group, inputs, shared) if group.has_dropout and self.training else []
        base, source = group.base, group.source

        def member_forward(params, buffers, x, masks):
            source.mode, source.queue = "queue", list(masks)
            captured: dict[str, list[Tensor]] = {}
            with capturing(base, group.sites, captured) if capture else contextlib.nullcontext():
                out = logits_of(functional_call(base, (params, buffers), (x,)))
            return out, per_site(captured, group.sites) if capture else ()

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
        outs, captures = [], []
        for _, out, captured in self._member_forwards(group, inputs, shared, capture):
            outs.append(out)
            captures.append(captured)
        stacked_captures = tuple(torch.stack(c) for c in zip(*captures, strict=True))
        return torch.stack(outs), stacked_captures

    def _member_forwards(
        self, group: GroupStack, inputs: Tensor, shared: bool, capture: bool, modules=None
    ):
        """Member by member, from the same stacked tensors: (i, logits, captured sites) of
        the group's member i, a ``functional_call`` on its slices of the parameters (or
        its module of `_member_modules`); its random ops draw from its own generator."""
        params, buffers = group.state()
        # One unbind per tensor (its backward stacks the G gradients once), not G selects
        # (each of whose backwards would fill a whole (G, ...) gradient).
        member_params = per_member(params, len(group.members)) if modules is None else []
        member_buffers = per_member(buffers, len(group.members)) if modules is None else []
        source = group.source
        for i, k in enumerate(group.members):
            x = inputs if shared else inputs[i]
            source.mode, source.generator = "member", self._dropout_generators[k]
            captured: dict[str, list[Tensor]] = {}
            generator = self._random_generators[k]
            with (
                torch.random.fork_rng(devices=[]),
                (
                    capturing(group.base, group.sites, captured)
                    if capture
                    else contextlib.nullcontext()
                ),
            ):
                torch.set_rng_state(generator.get_state())
                if modules is not None:
                    out = logits_of(modules[i](x))
                else:
                    out = logits_of(
                        functional_call(group.base, (member_params[i], member_buffers[i]), (x,))
                    )
                generator.set_state(torch.get_rng_state())
            yield i, out, (per_site(captured, group.sites) if capture else ())

    def _member_modules(self, index: int, group: GroupStack) -> list[nn.Module]:
        """The group's members as modules of their own for `train_members`: copies of its
        base whose parameters and buffers are views of the stacked ones (the same storage:
        the optimizer's in-place updates and BatchNorm's running statistics are shared),
        so a member's forward is a plain module call, as in a plain loop, without
        ``functional_call`` rebinding every tensor at every call (13% of a small ViT's
        step). Their parameters are leaves whose ``.grad`` are views of the stacked
        parameters' gradients, set to zeros here for this step: a member's backward
        accumulates into its own slice of them."""
        params, buffers = group.state()
        if index not in self._own_modules:
            self._own_modules[index] = [
                _module_of_views(group, i, params, buffers) for i in range(len(group.members))
            ]
        modules = self._own_modules[index]
        for name, stacked in params.items():
            if stacked.requires_grad:
                stacked.grad = torch.zeros_like(stacked)
                for i, module in enumerate(modules):
                    module.get_parameter(name).grad = stacked.grad[i]
        for module in modules:
            module.train(self.training)
        return modules

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

    def describe_stacking(self) -> str:
        """One line: how the members run (vmapped or member by member) and why."""
        stacked = [g.activation for g in self.groups if g.stacked]
        loop = [g for g in self.groups if not g.stacked]
        if not loop:
            return (
                "vmap over the members of each activation, one call each (--stacking "
                f"{self.stacking})"
            )
        if self.stacking == "loop":
            why = "--stacking loop"
        elif all(not g.reason for g in loop):
            why = (
                "--stacking auto: on a CPU one by one is faster than vmap (vmapped "
                "convolutions become one slower grouped convolution; small GEMMs gain nothing)"
            )
        else:
            why = "; ".join(
                f"{g.activation}: vmap could not run the model ({g.reason})"
                for g in loop
                if g.reason
            )
        which = "every activation" if not stacked else ", ".join(g.activation for g in loop)
        return f"member by member for {which} ({why})"


def _module_of_views(group: GroupStack, i: int, params: dict, buffers: dict) -> nn.Module:
    """A copy of the group's base module whose tensors are member i's slices of the stacked
    ones (views sharing their storage; parameters as leaves of their own)."""
    module = copy.deepcopy(group.base)
    # Every name of a tensor: a tied weight (one tensor at two places) gets one view.
    names: dict[int, list[str]] = {}
    for name, t in [*module.named_parameters(remove_duplicate=False),
                    *module.named_buffers(remove_duplicate=False)]:  # fmt: skip
        names.setdefault(id(t), []).append(name)
    for name, stacked in params.items():
        view = nn.Parameter(stacked.detach()[i], requires_grad=stacked.requires_grad)
        for alias in names[id(module.get_parameter(name))]:
            owner, _, leaf = alias.rpartition(".")
            setattr(module.get_submodule(owner), leaf, view)
    for name, stacked in buffers.items():
        for alias in names[id(module.get_buffer(name))]:
            owner, _, leaf = alias.rpartition(".")
            module.get_submodule(owner).register_buffer(leaf, stacked[i])
    for sub in module.modules():
        if isinstance(sub, MemberDropout):  # the group's masks, not a copy's
            sub.source = group.source
    return module


def _argsort(values: Sequence[int]) -> list[int]:
    return sorted(range(len(values)), key=lambda i: values[i])
