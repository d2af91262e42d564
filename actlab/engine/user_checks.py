"""Build-time checks of a user's network in a stacked study: one line for every way it can
fail, before anything is trained.

- memory: member 0 built on the meta device (nothing allocated) sizes the study before the
  members are built (actlab.engine.memory); refused with the number of members that fit;
- parameters: float32, at least one trainable; frozen ones (and those no gradient of the
  logits reaches) are said, and stay untrained;
- output: logits (batch, classes) in evaluation and in training (a backward included);
- what the swap or the builder's act() did not reach, counted in a real forward;
- vmap: a vmapped training step and evaluation against the member's own forward; any
  failure trains that activation's members one by one, said once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from actlab.catalog import gated
from actlab.engine import memory
from actlab.engine.member_group import (
    FallbackNotice,
    GroupStack,
    attention_paths,
    first_line,
    logits_of,
    notice,
)
from actlab.errors import ConfigError
from actlab.nn.user_model import MODULE, build_member, count_remaining

if TYPE_CHECKING:
    from actlab.engine.vmap_stack import StackedUserModel


def check_weights_before_building(model: StackedUserModel, swap, batch_size: int, device):
    """Build member 0 on the meta device (shapes only, nothing allocated) and refuse a
    study whose weights, gradients and Adam state alone cannot fit, before any member is
    built (two Linear(40000, 40000) per member are 12.8 GB). The tensors a batch keeps for
    backward are measured on the real member 0 once built (`check_memory`): a forward on
    the meta device would first load torch's Python meta kernels (seconds)."""
    firsts = {m.activation: m for m in reversed(model.members)}  # each activation's first
    sizes = []
    for first in firsts.values():  # a gated activation's member may be another size
        try:
            meta, _ = build_member(model.user, first.activation, first.seed, swap, device="meta")
        except ConfigError:
            raise
        except Exception:  # a builder that cannot build on meta: checked once built
            return
        sizes.append(sum(p.numel() * p.element_size() for p in meta.parameters()))
    per_member = memory.user_member_bytes(max(sizes), 0.0, batch_size)
    memory.check_user_model_memory(
        model.user.reference, per_member, model.num_members, batch_size, device
    )


def check_memory(model: StackedUserModel, sample: Tensor, batch_size: int, device) -> float:
    """Refuse a study whose members' weights, optimizer state and batch activations cannot
    fit (measured on the first member of each activation, two samples, scaled to the
    batch; sized by the largest: a gated FFN's members differ in shape). Returns the most
    bytes one member's autograd keeps per sample."""
    saved = max(saved_per_sample(model, group, sample) for group in model.groups)
    per_member = max(
        memory.user_member_bytes(weight_bytes(group), saved, batch_size) for group in model.groups
    )
    memory.check_user_model_memory(
        model.user.reference, per_member, model.num_members, batch_size, device
    )
    return saved


def saved_per_sample(model: StackedUserModel, group: GroupStack, sample: Tensor) -> float:
    """Bytes autograd saves per sample for one member (measured on `sample`)."""
    params, buffers = group.state(clone_buffers=True)
    group.source.mode = "record"
    member_params = {n: p[0].detach().requires_grad_(p.requires_grad) for n, p in params.items()}
    member_buffers = {n: b[0] for n, b in buffers.items()}
    try:
        with attention_paths(False, sample.device.type):
            saved = memory.saved_bytes(
                lambda: functional_call(group.base, (member_params, member_buffers), (sample,))
            )
    except Exception:  # a forward that fails is reported by check_output
        return 0.0
    return saved / sample.shape[0]


def weight_bytes(group: GroupStack) -> int:
    return sum(p[0].numel() * p.element_size() for p in group.params)


def check_sites(model: StackedUserModel) -> None:
    """Every activation's network has its activations at the same places (the rows of
    diagnostics.csv): a swap that placed more for one activation is refused."""
    counts = {group.activation: len(group.sites) for group in model.groups}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{a}: {n}" for a, n in counts.items())
        raise ConfigError(
            f"--model {model.user.reference}: the activations were put at different numbers "
            f"of places ({listed}); the network must be the same for every activation"
        )


def check_parameters(model: StackedUserModel) -> None:
    """float32 parameters, and at least one to train: one line otherwise."""
    group = model.groups[0]
    odd = sorted(
        {str(p.dtype).removeprefix("torch.") for p in group.params if p.dtype != torch.float32}
    )
    if odd:
        raise ConfigError(
            f"--model {model.user.reference} has {', '.join(odd)} parameters; actlab trains "
            "in float32 on float32 data: build the model in float32 (no .double()/.half())"
        )
    if not any(p.requires_grad for p in group.params):
        raise ConfigError(
            f"--model {model.user.reference} has no trainable parameters (none, or all with "
            "requires_grad=False): there is nothing to train"
        )


def announce_frozen(model: StackedUserModel) -> None:
    unreached = model.groups[0].unreached
    if unreached:
        shown = ", ".join(unreached[:4]) + (", ..." if len(unreached) > 4 else "")
        notice(
            ("unreached", model.user.reference, tuple(unreached)),
            f"{model.user.reference}: no gradient of the logits (the forward's output, or "
            f"its first element) reaches {shown}: not trained, as torch.optim skips them",
        )
    frozen = model.groups[0].frozen
    if frozen:
        shown = ", ".join(frozen[:4]) + (", ..." if len(frozen) > 4 else "")
        notice(
            ("frozen", model.user.reference, tuple(frozen)),
            f"{model.user.reference}: {len(frozen)} of {len(model.groups[0].param_names)} "
            f"parameter tensors are frozen (requires_grad=False: {shown}) and stay frozen",
        )


# What a swap or a builder's act() left running, per (model file, swap): counted once per
# process (a forward under a TorchDispatchMode is slow; ThreadKeeper builds a second model).
_REMAINING: dict[tuple, list[tuple[str, str, int]]] = {}


def say_remaining(model: StackedUserModel, sample: Tensor, swap) -> None:
    """Count, in a forward of member 0 of the first activation on `sample` (copies of its
    buffers), the activation ops of the replaced kinds that still run outside the placed
    activations; say so when there are any. The rest of the network is the same for every
    activation, and so is what the swap did not reach: counted once, for all members."""
    group = model.groups[0]
    report = model.swap_reports[group.activation]
    key = (model.user.reference, model.user.sha256, tuple(swap), tuple(sample.shape[1:]))
    if key not in _REMAINING:
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
            _REMAINING[key] = count_remaining(group.base, report, sample, swap, run=run)
        finally:
            group.base.train()
    for other in model.swap_reports.values():
        other.remaining = list(_REMAINING[key])
    if report.remaining:
        builder = report.modules and report.modules[0][1] == "act()"
        what = (
            "the builder's act() did not reach every activation"
            if builder
            else "the swap did not reach every activation"
        )
        notice(
            ("remaining", *key),
            f"{model.user.reference}: {what}" + report.remaining_text(),
        )


def check_output(model: StackedUserModel, group: GroupStack, sample: Tensor) -> None:
    """Member 0 of the group on two samples (copies of its buffers), in eval mode under
    no_grad and in training mode with a backward pass: logits (2, classes) in both (a
    tuple's first element, see `logits_of`); one line for any failure."""
    params, buffers = group.state(clone_buffers=True)
    group.source.mode = "record"
    member_buffers = {n: b[0] for n, b in buffers.items()}
    for training in (False, True):
        mode = "training" if training else "evaluation"
        member_params = {
            n: p[0].detach().requires_grad_(training and p.requires_grad) for n, p in params.items()
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
                        n for n, p in member_params.items() if p.requires_grad and p.grad is None
                    ]
        except Exception as error:
            raise ConfigError(
                f"--model {model.user.reference}: {_a(mode)} forward pass on a batch of "
                f"shape {tuple(sample.shape)} (the dataset's) raised {first_line(error)}"
                + gated_hint(model, group.activation)
            ) from None
        finally:
            group.base.train()
        if _checked_by_objective(model, out, mode):
            continue
        expected = (sample.shape[0], model.num_classes)
        if not isinstance(out, Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(
                f"--model {model.user.reference}: {mode} output {got} for a batch of "
                f"{sample.shape[0]}; actlab needs logits of shape (batch, classes) = "
                f"{expected} for cross-entropy (or a tuple whose first element they are)"
            )


def _a(mode: str) -> str:
    return f"an {mode}" if mode[0] in "aeiou" else f"a {mode}"


def gated_hint(model: StackedUserModel, activation: str) -> str:
    """What to do when a gated activation's network fails: its unit halves the width."""
    if not gated.is_gated(activation):
        return ""
    if model.user.kind == MODULE:
        return (
            f"; {activation} is a gated unit (it takes [a, b], 2h values, and returns "
            "a * gate(b), h values), which cannot be swapped into a network built for "
            "elementwise activations: write a builder that sizes the layer before act() "
            "with act.inputs(act.hidden(n))"
        )
    return (
        f"; {activation} is a gated unit: act() takes [a, b], 2h values along the last dim, "
        "and returns a * gate(b), h values, so the builder must size the layer before act() "
        "with act.inputs(h) and the one after with h (h = act.hidden(n) keeps the parameters "
        "of n plain units; see act.gated)"
    )


def _checked_by_objective(model: StackedUserModel, out, mode: str) -> bool:
    """An output checked against the study's own loss (actlab.engine.objective): any shape
    that loss takes on two samples' targets (a regression's (batch,) or (batch, 1), a
    sequence's (batch, time, classes)); False when the classic check applies (a
    cross-entropy classifier, or no objective given)."""
    objective, targets = getattr(model, "objective", None), getattr(model, "target_sample", None)
    if objective is None or targets is None:
        return False
    if objective.name == "cross_entropy" and targets.dim() == 1:
        return False  # logits (batch, classes): the classic check and its message
    if not isinstance(out, Tensor):
        raise ConfigError(
            f"--model {model.user.reference}: {mode} output is a {type(out).__name__}; "
            "actlab needs a tensor (or a tuple whose first element is one)"
        )
    with torch.no_grad():
        objective.check(out.detach(), targets[: out.shape[0]])
    return True


def try_stacking(model: StackedUserModel, group: GroupStack, sample: Tensor) -> None:
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
        logits.float().square().mean().backward()  # a backward through vmap, any output
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
        group.reason = first_line(error)
    finally:
        base.train()
        for p in group.params:
            p.grad = None
    if not group.stacked:
        notice(
            (model.user.reference, group.activation, group.reason),
            f"{model.user.reference}: the {group.activation} members train one by one "
            f"(not stacked): vmap could not run the model ({group.reason})",
            FallbackNotice,
        )
