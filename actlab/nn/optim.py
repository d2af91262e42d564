"""Stacked optimizers: K independent Adam / AdamW / SGD-momentum optimizers in one.

A stacked parameter has a leading member dimension K (member k owns ``p[k]``); a
per-member parameter belongs to one member alone (e.g. the slope of member k's PReLU); a
group-stacked parameter leads with the members of one group (``p[i]`` belongs to member
``owner[i]``: the members of a user model that share an activation, actlab.engine.vmap_stack).
Every update rule here is elementwise, so updating the stacked tensors at once is exactly
K separate ``torch.optim`` optimizers, provided each member gets its own learning rate:
the lr is a (K,) tensor, viewed as (K, 1, ..., 1) and broadcast over each stacked param.

The formulas follow ``torch.optim`` (PyTorch 2.x, ``foreach`` path, no amsgrad/nesterov):

Adam (Kingma & Ba 2015, https://arxiv.org/abs/1412.6980), L2 decay added to the gradient:
    g = g + wd * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g^2
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

AdamW (Loshchilov & Hutter 2019, https://arxiv.org/abs/1711.05101): decoupled decay
    p = p * (1 - lr * wd), then the Adam step without L2.

SGD with momentum (torch's convention, dampening 0): g = g + wd * p;
    buf = g on the first step, else buf = momentum * buf + g;  p = p - lr * buf.

A frozen (diverged) member does not change: its learning rate is masked to zero, its
gradients are zeroed and its optimizer state is reset to zero.

Two things only a CPU needs. Denormal floats (below 1.2e-38) cost x86 cores a microcode
assist per operation, 10-100x the normal time: the first moment of a weight whose gradient
has become exactly 0 (a dead ReLU unit) decays by beta1 each step through the denormal
range, and in the classic protocol 3% of the Adam state sat there, making the Adam pass
2-3x slower. So every FLUSH_EVERY steps the state below FLUSH_BELOW is set to 0 (one cheap
pass). Such a value moves its weight by at most lr * 1e-30 / eps = 1e-25 (lr 1e-3, eps
1e-8), invisible in float32 for any weight above 1e-17; it would reach the denormal range
only after 175 more steps (beta1 = 0.9), so the state never gets there by decay. And with
several learning rates, torch's fused Adam kernel (one pass over p, g, m, v) runs once
per distinct lr on the members' slices, instead of writing a unit-lr update and applying
the per-member lr in two more passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

KINDS = ("adam", "adamw", "sgd")
FLUSH_EVERY = 100  # steps between two flushes of near-denormal optimizer state (CPU only)
# |m| and SGD momentum below 1e-30; v below 1e-36 (its square root, 1e-18, is 1e-10 of eps).
FLUSH_BELOW = {"exp_avg": 1e-30, "exp_avg_sq": 1e-36, "momentum_buffer": 1e-30}


# A stacked CPU tensor whose members' slices are not a whole number of this many floats
# is updated slice by slice (see `_member_aligned`); 64 covers every SIMD width.
ALIGN_FLOATS = 64


def _member_aligned(t: Tensor) -> list[Tensor]:
    """Stacked tensor `t` (leading dim: its members) for torch's fused Adam kernel on the CPU, so that a member's update does
    not depend on how many members share its stacked tensor.

    The CPU kernel rounds the elements of a tensor's scalar tail (the last numel modulo
    the SIMD width) differently from those of its vectorised body: exp_avg_sq is
    ``v * beta2 + (1 - beta2) * g * g`` with a fused multiply-add in one and not in the
    other, 1 ulp apart (measured; torch 2.13). Which of a member's elements fall in the
    tail depends on the number of members stacked (a Ray shard holds fewer than the whole
    study) and on the CPU's SIMD width (AVX2 or AVX-512). A stacked tensor whose per-member size is a multiple of ALIGN_FLOATS has no tail; any other is
    passed as its members' slices (contiguous views), each with a tail of its own that
    is the same in every stack. On a GPU the tensors are passed as they are."""
    if t.device.type == "cpu" and t.dim() >= 2 and t[0].numel() % ALIGN_FLOATS:
        return list(t.unbind(0))
    return [t]


class StackedOptimizer:
    """Adam, AdamW or SGD-momentum over ``model.parameter_members()`` with a per-member lr.

    ``param_members``: ``(p, None)`` for a stacked parameter (leading dim K), ``(p, k)``
    for a parameter owned by member k alone, or ``(p, (k1, k2, ...))`` for a parameter
    stacked over those members (leading dim their count). ``lrs``: one learning rate per
    member.
    """

    def __init__(
        self,
        param_members: Sequence[tuple[nn.Parameter, int | None]],
        lrs: Sequence[float],
        *,
        kind: str = "adam",
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.9,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown optimizer {kind!r}; choose one of {', '.join(KINDS)}")
        self.kind = kind
        self.weight_decay = float(weight_decay)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.params = [p for p, _ in param_members]
        self.owners = [owner for _, owner in param_members]
        self.num_members = len(lrs)
        if not self.params:
            raise ValueError("no parameters to optimize")
        device = self.params[0].device
        dtype = self.params[0].dtype
        for p, owner in param_members:
            leading = self.num_members if owner is None else _group_size(owner)
            if leading is not None and (p.dim() == 0 or p.shape[0] != leading):
                raise ValueError(
                    f"stacked parameter of shape {tuple(p.shape)} does not lead with "
                    f"{leading} members"
                )
        # Group-stacked parameters index the per-member values with their members.
        self._owner_index = [
            None
            if owner is None or isinstance(owner, int)
            else torch.as_tensor(list(owner), dtype=torch.long, device=device)
            for owner in self.owners
        ]
        self.lrs = torch.tensor([float(lr) for lr in lrs], dtype=dtype, device=device)
        self.active = torch.ones(self.num_members, dtype=torch.bool, device=device)
        self.step_count = 0
        self.exp_avg: list[Tensor] = []
        self.exp_avg_sq: list[Tensor] = []
        self.momentum_buffer: list[Tensor] = []
        if kind in ("adam", "adamw"):
            self.exp_avg = [torch.zeros_like(p) for p in self.params]
            self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        elif self.momentum != 0.0:
            self.momentum_buffer = [torch.zeros_like(p) for p in self.params]
        self._any_frozen = False
        # A schedule's factor on every lr (actlab.nn.schedule), set before each step.
        self.lr_scale = 1.0
        # torch's fused Adam kernel (one pass over p, g, m, v) is about twice as fast as the
        # foreach ops on CPU. It takes one scalar lr: it runs once per distinct lr, on the
        # parameters whole when every member has the same lr, else on the members' slices
        # p[k] (contiguous, as the kernel needs).
        self.fused = kind in ("adam", "adamw") and hasattr(torch, "_fused_adam_")
        self.flush_denormals = device.type == "cpu"
        self._lr_groups: list[tuple[float, list[Tensor], list[Tensor], list[Tensor]]] = []
        self._grad_key: list[Tensor] = []  # the gradients `_grad_groups` were sliced from
        self._grad_groups: list[list[Tensor]] = []
        # The step count on the device, for the fused kernel's bias corrections: advanced
        # by a device op, so a captured CUDA graph counts its replays itself.
        self._step = torch.zeros((), dtype=torch.float32, device=device)

    @property
    def graph_safe(self) -> bool:
        """Whether a step can be captured in a CUDA graph and replayed: every per-step
        number it uses lives on the device (Adam's bias corrections do only in the fused
        kernel; SGD's first step differs, and captures come after warm-up steps)."""
        return self.fused or self.kind == "sgd"

    def count_replayed_step(self) -> None:
        """Count a step run by replaying a captured graph (which does not run `step`)."""
        self.step_count += 1

    # --- per-member views --------------------------------------------------------------

    def _member_views(self, values: Tensor) -> list[Tensor]:
        """`values` (K,) viewed to broadcast over each parameter (a 0-d slice for owned ones)."""
        views = []
        for p, owner, index in zip(self.params, self.owners, self._owner_index, strict=True):
            if owner is None:
                views.append(values.view((self.num_members,) + (1,) * (p.dim() - 1)))
            elif index is not None:
                views.append(values.index_select(0, index).view((-1,) + (1,) * (p.dim() - 1)))
            else:
                views.append(values[owner])
        return views

    def freeze(self, members: Sequence[int]) -> None:
        """Freeze members for good: lr 0, state zeroed, gradients zeroed at every later step."""
        if not members:
            return
        index = torch.as_tensor(list(members), dtype=torch.long, device=self.lrs.device)
        self.active[index] = False
        self._any_frozen = True
        masks = self._member_views(self.active)
        for states in (self.exp_avg, self.exp_avg_sq, self.momentum_buffer):
            for state, mask in zip(states, masks, strict=len(states) > 0):
                state.masked_fill_(~mask, 0.0)

    def frozen(self) -> list[int]:
        return [k for k, alive in enumerate(self.active.tolist()) if not alive]

    # --- the step ---------------------------------------------------------------------

    @torch.no_grad()
    def step(self, alive: Tensor | None = None) -> None:
        """One update from the parameters' ``.grad``.

        `alive`: an optional (K,) bool tensor on the device; members False in it are not
        updated in this step (the engine's on-device divergence mask: no host sync). With
        the fused Adam kernel their Adam state is also reset, as `freeze` does: the
        engine freezes such a member for good at its next host check."""
        if any(p.grad is None for p in self.params):
            raise RuntimeError("every parameter needs a gradient before the stacked step")
        grads = [p.grad for p in self.params]
        if self.weight_decay != 0.0 and self.kind in ("adam", "sgd"):
            grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)  # L2
        if alive is not None:
            alive = alive & self.active
        elif self._any_frozen:
            alive = self.active
        lrs = self.lrs if self.lr_scale == 1.0 else self.lrs * self.lr_scale
        masks = None
        if alive is not None:
            # A frozen member's gradient may be NaN, and NaN * 0 is NaN: select, not multiply.
            zero = torch.zeros((), dtype=grads[0].dtype, device=grads[0].device)
            masks = self._member_views(alive)
            grads = [torch.where(mask, g, zero) for g, mask in zip(grads, masks, strict=True)]
            lrs = lrs * alive
        self.step_count += 1
        if self.fused:  # only the fused kernel reads the device count
            if self._step.is_cuda:
                self._step.add_(1.0)  # a device op: a captured graph advances it per replay
            else:  # fill_ takes the number as is; add_ wraps it in a tensor (~15 us here)
                self._step.fill_(self.step_count)
        if self.kind == "sgd":
            self._sgd(grads, lrs)
        else:
            self._adam(grads, lrs, masks)
        if self.flush_denormals and self.step_count % FLUSH_EVERY == 0:
            self._flush_denormals()

    @torch.no_grad()
    def _flush_denormals(self) -> None:
        """Set the optimizer state below FLUSH_BELOW to 0 (see the module docstring), in one
        in-place pass: hardshrink(x, t) = x if |x| > t else 0."""
        for name, below in FLUSH_BELOW.items():
            for state in getattr(self, name):
                torch.ops.aten.hardshrink.out(state, below, out=state)

    def _adam(self, grads: list[Tensor], lrs: Tensor, masks: list[Tensor] | None) -> None:
        """`masks`: the members updated in this step (as ``_member_views``), None for all;
        the others have zero gradients and zero `lrs` here."""
        beta1, beta2 = self.betas
        params = self.params
        if self.weight_decay != 0.0 and self.kind == "adamw":
            # Decoupled decay: p *= 1 - lr * wd, per member.
            torch._foreach_mul_(params, self._member_views(1.0 - lrs * self.weight_decay))
        if self.fused:
            # A member left out of this step gets zero state as well as zero gradient, so
            # its update is exactly 0 / (0 + eps) = 0: its parameters do not change, and the
            # others are computed exactly as when no member is masked (a frozen member's
            # state is zero already; see `freeze`).
            if masks is not None:
                for states in (self.exp_avg, self.exp_avg_sq):
                    for state, mask in zip(states, masks, strict=True):
                        state.masked_fill_(~mask, 0.0)
            for (lr, targets, exp_avg, exp_avg_sq), group_grads in zip(
                self._lr_groups_of_state(), self._grad_groups_of(grads), strict=True
            ):
                self._fused_adam_step(targets, group_grads, exp_avg, exp_avg_sq, lr * self.lr_scale)
            return
        torch._foreach_lerp_(self.exp_avg, grads, 1.0 - beta1)
        torch._foreach_mul_(self.exp_avg_sq, beta2)
        torch._foreach_addcmul_(self.exp_avg_sq, grads, grads, value=1.0 - beta2)
        bias_correction1 = 1.0 - beta1**self.step_count
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**self.step_count)
        denom = torch._foreach_sqrt(self.exp_avg_sq)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, self.eps)
        # p -= step_size * m / denom, with step_size = lr / bc1 per member: fold it into
        # the denominator so one addcdiv does the update (a frozen member: m = 0, 0/inf = 0).
        step_sizes = self._member_views(lrs / bias_correction1)
        torch._foreach_div_(denom, step_sizes)
        torch._foreach_addcdiv_(params, self.exp_avg, denom, value=-1.0)

    def _by_lr(self, tensors: list[Tensor]) -> list[list[Tensor]]:
        """`tensors` (one per parameter) split by distinct lr, in `_lr_groups` order: the
        whole tensors for a single lr, else member k's slice t[k] of a stacked one (a
        contiguous view) and a member's own parameter whole, in the group of its lr; a
        group-stacked one whole when its members share an lr, else sliced per member.
        A stacked tensor passed whole is member-aligned on the CPU (`_member_aligned`)."""
        lrs = self.lrs.tolist()
        distinct = list(dict.fromkeys(lrs))
        if len(distinct) == 1:
            whole: list[Tensor] = []
            for t, owner in zip(tensors, self.owners, strict=True):
                whole.extend([t] if isinstance(owner, int) else _member_aligned(t))
            return [whole]
        groups: list[list[Tensor]] = [[] for _ in distinct]
        for t, owner in zip(tensors, self.owners, strict=True):
            if isinstance(owner, int):
                groups[distinct.index(lrs[owner])].append(t)
                continue
            members = range(self.num_members) if owner is None else owner
            member_lrs = {lrs[k] for k in members}
            if len(member_lrs) == 1:  # a group stack whose members share one lr: whole
                groups[distinct.index(member_lrs.pop())].extend(_member_aligned(t))
                continue
            for k, part in zip(members, t.unbind(0), strict=True):
                groups[distinct.index(lrs[k])].append(part)
        return groups

    def _lr_groups_of_state(self) -> list[tuple[float, list[Tensor], list[Tensor], list[Tensor]]]:
        """(lr, params, exp_avg, exp_avg_sq) per distinct lr, sliced once (see `_by_lr`)."""
        if not self._lr_groups:
            lrs = list(dict.fromkeys(self.lrs.tolist()))
            self._lr_groups = list(
                zip(
                    lrs,
                    self._by_lr([p.detach() for p in self.params]),
                    self._by_lr(self.exp_avg),
                    self._by_lr(self.exp_avg_sq),
                    strict=True,
                )
            )
        return self._lr_groups

    def _grad_groups_of(self, grads: list[Tensor]) -> list[list[Tensor]]:
        """`grads` split by lr; the slices are kept while the same gradient tensors come
        back (the hand-written MLP step reuses its buffers)."""
        same = len(grads) == len(self._grad_key) and all(
            g is key for g, key in zip(grads, self._grad_key, strict=True)
        )
        if not same:
            self._grad_key = list(grads)
            self._grad_groups = self._by_lr(grads)
        return self._grad_groups

    def _fused_adam_step(
        self,
        targets: list[Tensor],
        grads: list[Tensor],
        exp_avg: list[Tensor],
        exp_avg_sq: list[Tensor],
        lr: float,
    ) -> None:
        """torch's fused Adam kernel (one pass over p, g, m, v) on `targets` with a scalar lr."""
        beta1, beta2 = self.betas
        torch._fused_adam_(
            targets,
            grads,
            exp_avg,
            exp_avg_sq,
            [],
            [self._step] * len(targets),
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=0.0,
            eps=self.eps,
            amsgrad=False,
            maximize=False,
        )

    def _sgd(self, grads: list[Tensor], lrs: Tensor) -> None:
        params = self.params
        if self.momentum != 0.0:
            if self.step_count == 1:
                for buf, g in zip(self.momentum_buffer, grads, strict=True):
                    buf.copy_(g)
            else:
                torch._foreach_mul_(self.momentum_buffer, self.momentum)
                torch._foreach_add_(self.momentum_buffer, grads)
            grads = self.momentum_buffer
        torch._foreach_addcmul_(params, grads, self._member_views(lrs), value=-1.0)

    @torch.no_grad()
    def clip_grad_norms_(self, max_norm: float) -> Tensor:
        """Clip each member's gradient to global norm `max_norm`, as
        ``torch.nn.utils.clip_grad_norm_(member.parameters(), max_norm)`` does for one model:
        g *= min(1, max_norm / (||g|| + 1e-6)), ||g|| the 2-norm over all the member's
        parameters. Returns the (K,) norms before clipping."""
        squares = torch.zeros(self.num_members, dtype=torch.float32, device=self.lrs.device)
        for p, owner, index in zip(self.params, self.owners, self._owner_index, strict=True):
            g = p.grad.float()
            if owner is None:
                squares += g.square().reshape(self.num_members, -1).sum(dim=1)
            elif index is not None:
                squares.index_add_(0, index, g.square().reshape(len(index), -1).sum(dim=1))
            else:
                squares[owner] += g.square().sum()
        norms = squares.sqrt()
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0).to(self.params[0].dtype)
        torch._foreach_mul_([p.grad for p in self.params], self._member_views(scale))
        return norms

    # --- checkpoints ------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "step": self.step_count,
            "lrs": self.lrs.clone(),
            "active": self.active.clone(),
            "exp_avg": [t.clone() for t in self.exp_avg],
            "exp_avg_sq": [t.clone() for t in self.exp_avg_sq],
            "momentum_buffer": [t.clone() for t in self.momentum_buffer],
        }

    def load_state_dict(self, state: dict) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"checkpoint holds a {state['kind']} optimizer, not {self.kind}")
        self.step_count = int(state["step"])
        self._step.fill_(self.step_count)
        self.lrs.copy_(state["lrs"])
        self._lr_groups, self._grad_key = [], []  # sliced again for these lrs
        for name in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            for mine, saved in zip(getattr(self, name), state[name], strict=True):
                mine.copy_(saved)
        frozen = [k for k, alive in enumerate(state["active"].tolist()) if not alive]
        self.active.fill_(True)
        self._any_frozen = False
        self.freeze(frozen)


def _group_size(owner) -> int | None:
    """The leading dim a parameter owned by `owner` must have (None: a member's own)."""
    return None if isinstance(owner, int) else len(owner)


def zero_grad(params: Sequence[Tensor]) -> None:
    """Zero gradients in place (keeps the buffers: no allocation per step)."""
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._foreach_zero_(grads)
