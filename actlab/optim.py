"""Stacked optimizers: K independent Adam / AdamW / SGD-momentum optimizers in one.

A stacked parameter has a leading member dimension K (member k owns ``p[k]``); a
per-member parameter belongs to one member alone (e.g. the slope of member k's PReLU); a
group-stacked parameter leads with the members of one group (``p[i]`` belongs to member
``owner[i]``: the members of a user model that share an activation, actlab.functional).
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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

KINDS = ("adam", "adamw", "sgd")


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
        self._common_lr = self._same_lr()
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
        # torch's fused Adam kernel (one pass over p, g, m, v) is about twice as fast as the
        # foreach ops on CPU. It takes one scalar lr: when every member has the same lr it
        # updates the parameters directly; otherwise it writes the unit-lr update into a
        # buffer and the per-member lr is applied by one broadcast multiply-add.
        self.fused = kind in ("adam", "adamw") and hasattr(torch, "_fused_adam_")
        self._updates: list[Tensor] = []  # the unit-lr update buffers, allocated when needed
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

    def _same_lr(self) -> float | None:
        """The learning rate shared by every member, or None when they differ."""
        distinct = set(self.lrs.tolist())
        return distinct.pop() if len(distinct) == 1 else None

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
        one lr for all members (fused Adam), their Adam state is also reset, as `freeze`
        does: the engine freezes such a member for good at its next host check."""
        if any(p.grad is None for p in self.params):
            raise RuntimeError("every parameter needs a gradient before the stacked step")
        grads = [p.grad for p in self.params]
        if self.weight_decay != 0.0 and self.kind in ("adam", "sgd"):
            grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)  # L2
        if alive is not None:
            alive = alive & self.active
        elif self._any_frozen:
            alive = self.active
        lrs = self.lrs
        masks = None
        if alive is not None:
            # A frozen member's gradient may be NaN, and NaN * 0 is NaN: select, not multiply.
            zero = torch.zeros((), dtype=grads[0].dtype, device=grads[0].device)
            masks = self._member_views(alive)
            grads = [torch.where(mask, g, zero) for g, mask in zip(grads, masks, strict=True)]
            lrs = lrs * alive
        self.step_count += 1
        if self.fused:  # only the fused kernel reads the device count
            self._step.add_(1.0)
        if self.kind == "sgd":
            self._sgd(grads, lrs)
        else:
            self._adam(grads, lrs, masks)

    def _adam(self, grads: list[Tensor], lrs: Tensor, masks: list[Tensor] | None) -> None:
        """`masks`: the members updated in this step (as ``_member_views``), None for all;
        the others have zero gradients and zero `lrs` here."""
        beta1, beta2 = self.betas
        params = self.params
        if self.weight_decay != 0.0 and self.kind == "adamw":
            # Decoupled decay: p *= 1 - lr * wd, per member.
            torch._foreach_mul_(params, self._member_views(1.0 - lrs * self.weight_decay))
        if self.fused:
            # One lr for every member: the kernel updates the parameters in place with that
            # scalar lr (no buffer, no extra pass). A member left out of this step gets zero
            # state as well as zero gradient, so its update is exactly 0 / (0 + eps) = 0: its
            # parameters do not change, and the others are computed exactly as when no member
            # is masked (a frozen member's state is zero already; see `freeze`).
            if self._common_lr is not None:
                if masks is not None:
                    for states in (self.exp_avg, self.exp_avg_sq):
                        for state, mask in zip(states, masks, strict=True):
                            state.masked_fill_(~mask, 0.0)
                self._fused_adam_step(params, grads, self._common_lr)
                return
            if not self._updates:
                self._updates = [torch.zeros_like(p) for p in self.params]
            torch._foreach_zero_(self._updates)
            self._fused_adam_step(self._updates, grads, 1.0)
            torch._foreach_addcmul_(params, self._updates, self._member_views(lrs))
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

    def _fused_adam_step(self, targets: list[Tensor], grads: list[Tensor], lr: float) -> None:
        """torch's fused Adam kernel (one pass over p, g, m, v) on `targets` with a scalar lr."""
        beta1, beta2 = self.betas
        torch._fused_adam_(
            targets,
            grads,
            self.exp_avg,
            self.exp_avg_sq,
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
        self._common_lr = self._same_lr()
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
