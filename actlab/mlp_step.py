"""The stacked MLP's training step with a hand-written backward pass (no autograd graph).

For the MLP the backward pass is a handful of batched matmuls, so writing it out saves
autograd's per-node bookkeeping, which on a CPU costs about as much as the arithmetic of
a small layer, and on a GPU is what keeps the kernels waiting. Member k's loss is its own
mean cross-entropy L_k = mean_b CE(z_k,b, y_b), and with the feature-major layout of
actlab.models (activations (K, units, B)), layer by layer, from the top:

    dlogits = (softmax(logits) - onehot(y)) / B        (K, classes, B), per member
    dW = d @ h_in^T,   db = sum_B d,   dh_in = W^T @ d (batched over K)
    dh *= dropout mask (0 or 1/(1-p), as drawn in the forward pass)
    dz = dh * f'(z)                                     (actlab.derivatives)
    layer 1: dW1 = dz1 @ x, as one wide GEMM per seed   (W1 viewed as (S, K/S * H, D))

Members whose `alive` flag is False get zero gradients (a select, not a product, so a
NaN member cannot leak into the others). Activations without a closed-form derivative
(expr:, rrelu in training, softmax-like, ...) keep a local autograd graph of that layer's
activation alone; learnable activations (PReLU, swish_beta) are not supported here, and
the engine trains those models with autograd.

The gradients are written into each parameter's ``.grad`` (allocated once), for
``actlab.optim.StackedOptimizer`` and the gradient-norm diagnostics to read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from actlab.derivatives import Derivative, derivative_for
from actlab.models import StackedMLP, StackedModel


def supports(model: StackedModel) -> bool:
    """Whether `model` can train with the hand-written backward (an MLP, no learnable
    activation)."""
    return isinstance(model, StackedMLP) and not any(info.learnable for info in model.infos)


@dataclass
class _Hidden:
    """What the backward pass needs of one hidden layer."""

    z: Tensor  # pre-activation (K, units, B)
    h: Tensor  # activation output (K, units, B), before dropout
    out: Tensor  # the layer's output after dropout (the next layer's input)
    mask: Tensor | None  # dropout mask (K, units, B), None without dropout
    leaf: Tensor | None  # the autograd leaf of z, when the activation needs autograd


@dataclass
class StepCache:
    """The forward pass's tensors, kept for `MLPStep.backward`."""

    x: Tensor  # inputs (S, B, D)
    hidden: list[_Hidden]
    logp: Tensor  # log-softmax of the logits (K, classes, B)
    targets: Tensor  # (K, 1, B)


class MLPStep:
    """Forward with cached tensors, and the exact backward, of a `StackedMLP` in training."""

    def __init__(self, model: StackedMLP) -> None:
        if not supports(model):
            raise ValueError(
                "the hand-written backward needs a StackedMLP without learnable activations"
            )
        self.model = model
        derivatives = [derivative_for(info.name) for info in model.infos]
        # Closed forms apply per activation group; one group without leaves the whole
        # layer's activation to autograd (it may mix units, as softmax does).
        self.derivatives: list[Derivative] | None = (
            derivatives if all(d is not None for d in derivatives) else None
        )
        self.params = [info.params for info in model.infos]

    # --- forward ------------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, StepCache]:
        """inputs (S, B, C, H, W), targets (K, B). Returns logits (K, B, classes) (a view),
        the members' mean losses (K,) and the cache for `backward`."""
        model = self.model
        S, B = inputs.shape[:2]
        K = model.num_members
        x = inputs.reshape(S, B, -1)
        weight, bias = model.weights[0], model.biases[0]
        D, H = weight.shape[2], weight.shape[1]
        z = torch.baddbmm(bias.view(S, -1, 1), weight.view(S, -1, D), x.transpose(1, 2))
        z = z.view(K, H, B)
        hidden = [self._activate(0, z)]
        for layer in range(1, model.num_hidden):
            z = torch.baddbmm(
                model.biases[layer].unsqueeze(2), model.weights[layer], hidden[-1].out
            )
            hidden.append(self._activate(layer, z))
        h_in = hidden[-1].out
        logits = torch.baddbmm(model.biases[-1].unsqueeze(2), model.weights[-1], h_in)
        logp = torch.log_softmax(logits, dim=1)
        targets = targets.view(K, 1, B)
        losses = logp.gather(1, targets).view(K, B).mean(dim=1).neg_()
        return logits.transpose(1, 2), losses, StepCache(x, hidden, logp, targets)

    def _activate(self, layer: int, z: Tensor) -> _Hidden:
        model = self.model
        K, units, B = z.shape
        S, A, L = model.grid.shape
        leaf = None
        if self.derivatives is None:
            leaf = z.detach().requires_grad_(True)
            with torch.enable_grad():  # a view made under no_grad would leave the graph
                h = model._activate(layer, leaf.view(S, A, L, units, B), 0, member_perm=(1, 0))
                h = h.view(K, units, B)
        else:
            h = model._activate(layer, z.view(S, A, L, units, B), 0, member_perm=(1, 0))
            h = h.view(K, units, B)
        mask = None
        out = h.detach()
        if model.dropout > 0 and model.training:
            mask = model._dropout_mask(z.shape, z.dtype, z.device).transpose(1, 2)
            out = out * mask
        return _Hidden(z, h, out, mask, leaf)

    # --- backward -----------------------------------------------------------------------

    @torch.no_grad()
    def backward(self, cache: StepCache, alive: Tensor | None = None) -> None:
        """Write every parameter's gradient of sum_k L_k (over members `alive`, a (K,) bool
        tensor; None for all) into its ``.grad``."""
        model = self.model
        weights, biases = list(model.weights), list(model.biases)
        for p in weights + biases:
            if p.grad is None:
                p.grad = torch.empty_like(p)
        K, _, B = cache.logp.shape
        # d = (softmax - onehot(y)) / B, the gradient of the mean cross-entropy.
        d = cache.logp.exp()
        d.scatter_add_(1, cache.targets, torch.full_like(cache.targets, -1, dtype=d.dtype))
        if alive is None:
            d.mul_(1.0 / B)
        else:
            d = torch.where(alive.view(K, 1, 1), d * (1.0 / B), 0.0)
        for layer in range(len(weights) - 1, 0, -1):
            below = cache.hidden[layer - 1]
            torch.bmm(d, below.out.transpose(1, 2), out=weights[layer].grad)
            torch.sum(d, dim=2, out=biases[layer].grad)
            dh = torch.bmm(weights[layer].transpose(1, 2), d)
            if below.mask is not None:
                dh.mul_(below.mask)
            d = self._activation_backward(layer - 1, below, dh)
        S, _, D = cache.x.shape
        weight = weights[0]
        torch.bmm(d.view(S, -1, B), cache.x, out=weight.grad.view(S, -1, D))
        torch.sum(d, dim=2, out=biases[0].grad)

    def _activation_backward(self, layer: int, hidden: _Hidden, dh: Tensor) -> Tensor:
        """dz = dh * f'(z), group by group (closed form) or through the layer's autograd graph."""
        if hidden.leaf is not None:
            (dz,) = torch.autograd.grad(hidden.h, hidden.leaf, dh)
            return dz
        K, units, B = dh.shape
        S, A, L = self.model.grid.shape
        if A == 1:
            return self.derivatives[0](dh, hidden.z, hidden.h, self.params[0], torch.empty_like(dh))
        dz = torch.empty_like(dh)
        shape = (S, A, L, units, B)
        g5, z5, h5, out5 = (
            dh.view(shape),
            hidden.z.view(shape),
            hidden.h.view(shape),
            dz.view(shape),
        )
        for a, derivative in enumerate(self.derivatives):
            derivative(g5[:, a], z5[:, a], h5[:, a], self.params[a], out5[:, a])
        return dz
