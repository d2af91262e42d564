"""The stacked MLP's training step with a hand-written backward pass (no autograd graph).

For the MLP the backward pass is a handful of batched matmuls, so writing it out saves
autograd's per-node bookkeeping, which on a CPU costs about as much as the arithmetic of
a small layer, and on a GPU is what keeps the kernels waiting. Member k's loss is its own
mean cross-entropy L_k = mean_b CE(z_k,b, y_b), and with the feature-major layout of
actlab.models (activations (K, units, B)), layer by layer, from the top:

    dlogits = (softmax(logits) - onehot(y)) / B        (K, classes, B), per member
    dW = d @ h_in^T,   db = sum_B d,   dh_in = W^T @ d (batched over K)
    dh *= dropout mask (0 or 1/(1-p), as drawn in the forward pass)
    dz = dh * f'(z)                                     (actlab.closed_forms)
    layer 1: dW1 = dz1 @ x, as one wide GEMM per seed   (W1 viewed as (S, K/S * H, D))

Members whose `alive` flag is False get zero gradients (a select, not a product, so a
NaN member cannot leak into the others). Activations without a closed-form derivative
(expr:, rrelu in training, softmax-like, ...) keep a local autograd graph of that layer's
activation alone; learnable activations (PReLU, swish_beta) are not supported here, and
the engine trains those models with autograd.

The gradients are written into each parameter's ``.grad`` (buffers allocated once), for
``actlab.optim.StackedOptimizer`` and the gradient-norm diagnostics to read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from actlab.closed_forms import ClosedForm, closed_form
from actlab.models import StackedMLP, StackedModel


def supports(model: StackedModel) -> bool:
    """Whether `model` can train with the hand-written backward (an MLP, no learnable
    activation)."""
    return isinstance(model, StackedMLP) and not any(info.learnable for info in model.infos)


class _Workspace:
    """The step's tensors for one batch size, allocated once, with each activation group's
    view of them ((S, A, L, units, B)[:, a]): the step writes into them with ``out=``
    kernels (no allocation, no regrouping copies), and a CUDA graph finds them in place."""

    def __init__(self, model: StackedMLP, batch: int) -> None:
        S, A, L = model.grid.shape
        K = model.num_members
        weight = model.weights[0]
        options = {"dtype": weight.dtype, "device": weight.device}
        widths = [w.shape[1] for w in model.weights]

        def new(units: int) -> Tensor:
            return torch.empty(K, units, batch, **options)

        def groups(t: Tensor) -> list[Tensor]:
            return list(t.view(S, A, L, t.shape[1], batch).unbind(1))

        self.z = [new(units) for units in widths[:-1]]  # pre-activations
        self.h = [new(units) for units in widths[:-1]]  # activations (before dropout)
        self.dh = [new(units) for units in widths[:-1]]
        self.dz = [new(units) for units in widths[:-1]]
        self.z_groups = [groups(t) for t in self.z]
        self.h_groups = [groups(t) for t in self.h]
        self.dh_groups = [groups(t) for t in self.dh]
        self.dz_groups = [groups(t) for t in self.dz]
        self.logits = new(widths[-1])  # (K, classes, B)
        self.d = new(widths[-1])  # its gradient
        self.minus_one = torch.full((K, 1, batch), -1.0, **options)


@dataclass
class StepCache:
    """What `MLPStep.backward` needs of the forward pass."""

    workspace: _Workspace
    x: Tensor  # inputs (S, B, D)
    outs: list[Tensor]  # each hidden layer's output after dropout (the next layer's input)
    masks: list[Tensor | None]  # dropout masks (K, units, B)
    graphs: list[tuple[Tensor, Tensor] | None]  # (z leaf, h) where autograd differentiates
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
        forms = [closed_form(info.name) for info in model.infos]
        # Closed forms apply per activation group; one group without leaves the whole
        # layer's activation to autograd (it may mix units, as softmax does).
        self.closed_forms: list[ClosedForm] | None = (
            forms if all(form is not None for form in forms) else None
        )
        self.params = [info.params for info in model.infos]
        # Every trainable tensor is a stacked weight or bias (no learnable activation).
        self._trainable = [p for p, _ in model.parameter_members()]
        self.grads = [torch.empty_like(p) for p in self._trainable]
        self._workspaces: dict[int, _Workspace] = {}

    def _workspace(self, batch: int) -> _Workspace:
        if batch not in self._workspaces:
            self._workspaces[batch] = _Workspace(self.model, batch)
        return self._workspaces[batch]

    # --- forward ------------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, StepCache]:
        """inputs (S, B, C, H, W), targets (K, B). Returns logits (K, B, classes),
        the members' mean losses (K,) and the cache for `backward`."""
        model = self.model
        S, B = inputs.shape[:2]
        K = model.num_members
        ws = self._workspace(B)
        x = inputs.reshape(S, B, -1)
        weight, bias = model.weights[0], model.biases[0]
        D = weight.shape[2]
        # Layer 1: one wide GEMM per seed, (S, K/S * H, D) @ (S, D, B).
        torch.baddbmm(
            bias.view(S, -1, 1),
            weight.view(S, -1, D),
            x.transpose(1, 2),
            out=ws.z[0].view(S, -1, B),
        )
        outs, masks, graphs = [], [], []
        for layer in range(model.num_hidden):
            if layer > 0:
                bias, weight = model.biases[layer], model.weights[layer]
                torch.baddbmm(bias.unsqueeze(2), weight, outs[-1], out=ws.z[layer])
            h, graph = self._activate(layer, ws)
            mask = None
            if model.dropout > 0 and model.training:
                mask = model._dropout_mask(h.shape, h.dtype, h.device).transpose(1, 2)
                h = h * mask
            outs.append(h)
            masks.append(mask)
            graphs.append(graph)
        bias, weight = model.biases[-1], model.weights[-1]
        logits = torch.baddbmm(bias.unsqueeze(2), weight, outs[-1], out=ws.logits)
        logp = torch.log_softmax(logits, dim=1)
        targets = targets.view(K, 1, B)
        losses = logp.gather(1, targets).view(K, B).mean(dim=1).neg_()
        cache = StepCache(ws, x, outs, masks, graphs, logp, targets)
        # (K, B, classes), contiguous: argmax over a strided last dim is 4x slower.
        return logits.transpose(1, 2).contiguous(), losses, cache

    def _activate(self, layer: int, ws: _Workspace) -> tuple[Tensor, tuple | None]:
        """The layer's activation of ws.z[layer]: (output, None) in closed form, written
        group by group into ws.h[layer]; else (output, (z leaf, output)) with a graph."""
        if self.closed_forms is not None:
            z_groups, h_groups = ws.z_groups[layer], ws.h_groups[layer]
            for a, form in enumerate(self.closed_forms):
                form.forward(z_groups[a], self.params[a], h_groups[a])
            return ws.h[layer], None
        model = self.model
        K, units, B = ws.z[layer].shape
        S, A, L = model.grid.shape
        leaf = ws.z[layer].detach().requires_grad_(True)
        with torch.enable_grad():  # a view made under no_grad would leave the graph
            h = model._activate(layer, leaf.view(S, A, L, units, B), 0, member_perm=(1, 0))
            h = h.view(K, units, B)
        return h.detach(), (leaf, h)

    # --- backward -----------------------------------------------------------------------

    @torch.no_grad()
    def backward(self, cache: StepCache, alive: Tensor | None = None) -> None:
        """Write every parameter's gradient of sum_k L_k (over members `alive`, a (K,) bool
        tensor; None for all) into its ``.grad``."""
        model = self.model
        for p, grad in zip(self._trainable, self.grads, strict=True):
            p.grad = grad
        ws = cache.workspace
        K, _, B = cache.logp.shape
        # d = (softmax - onehot(y)) / B, the gradient of the mean cross-entropy.
        d = torch.exp(cache.logp, out=ws.d)
        d.scatter_add_(1, cache.targets, ws.minus_one)
        d.mul_(1.0 / B)
        if alive is not None:
            d.masked_fill_(~alive.view(K, 1, 1), 0.0)  # a select: NaN * 0 would be NaN
        for layer in range(model.num_hidden, 0, -1):
            below = layer - 1
            weight, bias = model.weights[layer], model.biases[layer]
            torch.bmm(d, cache.outs[below].transpose(1, 2), out=weight.grad)
            torch.sum(d, dim=2, out=bias.grad)
            dh = torch.bmm(weight.transpose(1, 2), d, out=ws.dh[below])
            if cache.masks[below] is not None:
                dh.mul_(cache.masks[below])
            d = self._activation_backward(below, cache, dh)
        S, _, D = cache.x.shape
        torch.bmm(d.view(S, -1, B), cache.x, out=model.weights[0].grad.view(S, -1, D))
        torch.sum(d, dim=2, out=model.biases[0].grad)

    def _activation_backward(self, layer: int, cache: StepCache, dh: Tensor) -> Tensor:
        """dz = dh * f'(z): group by group in closed form, or through the layer's graph."""
        graph = cache.graphs[layer]
        if graph is not None:
            leaf, h = graph
            (dz,) = torch.autograd.grad(h, leaf, dh)
            return dz
        ws = cache.workspace
        z_groups, h_groups = ws.z_groups[layer], ws.h_groups[layer]
        dh_groups, dz_groups = ws.dh_groups[layer], ws.dz_groups[layer]
        for a, form in enumerate(self.closed_forms):
            form.backward(dh_groups[a], z_groups[a], h_groups[a], self.params[a], dz_groups[a])
        return ws.dz[layer]
