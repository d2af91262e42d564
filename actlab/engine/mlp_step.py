"""The stacked MLP's training step with a hand-written backward pass (no autograd graph).

For the MLP the backward pass is a handful of batched matmuls, so writing it out saves
autograd's per-node bookkeeping, which on a CPU costs about as much as the arithmetic of
a small layer, and on a GPU is what keeps the kernels waiting. Member k's loss is its own
mean cross-entropy L_k = mean_b CE(z_k,b, y_b), and with the feature-major layout of
actlab.nn.models (activations (K, units, B)), layer by layer, from the top:

    dlogits = (softmax(logits) - onehot(y)) / B        (K, classes, B), per member
    dW = d @ h_in^T,   db = sum_B d,   dh_in = W^T @ d (batched over K)
    dh *= dropout mask (0 or 1/(1-p), as drawn in the forward pass)
    dz = dh * f'(z)                                     (actlab.catalog.closed_forms)
    layer 1: dW1 = dz1 @ x, as one wide GEMM per seed   (W1 viewed as (S, K/S * H, D))

Members whose `alive` flag is False get zero gradients (a select, not a product, so a
NaN member cannot leak into the others). Activations without a closed-form derivative
(expr:, rrelu in training, softmax-like, ...) keep a local autograd graph of that layer's
activation alone; learnable activations (PReLU, swish_beta) are not supported here, and
the engine trains those models with autograd.

The gradients are written into each parameter's ``.grad`` (buffers allocated once), for
``actlab.nn.optim.StackedOptimizer`` and the gradient-norm diagnostics to read.

On one core of an Intel Xeon a step of the classic protocol takes 1.56 ms against a floor
of 1.33 ms for its GEMMs and Adam pass (benchmarks/floor.py), so everything else is written
to cost little: on a CPU the elementwise work between the GEMMs runs as three compiled
kernels (actlab.engine.native: the activations, their derivatives with the bias gradients, the
cross-entropy with its gradient and the accuracy count), with the torch kernels above as
the fallback; the batch is gathered into a preallocated buffer (a fresh 200 kB tensor per
step comes from mmap and costs ~50 page faults), every tensor of the step lives in the
workspace (``out=`` kernels), the parameters' views are made once, and the accuracy count
reads the logits in their feature-major layout, without a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from actlab.catalog.closed_forms import ClosedForm, closed_form
from actlab.engine import native
from actlab.nn.models import StackedMLP, StackedModel


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
        self.logp = new(widths[-1])  # its log-softmax
        self.d = new(widths[-1])  # its gradient
        self.minus_one = torch.full((K, 1, batch), -1.0, **options)
        D = model.weights[0].shape[2]
        self.x = torch.empty(S, batch, D, **options)  # the batch, gathered (S, B, D)
        long = {"dtype": torch.long, "device": weight.device}
        self.labels = torch.empty(S, 1, batch, **long)
        self.targets = torch.empty(K, 1, batch, **long)  # each member's seed's labels
        self.predicted = torch.empty(K, batch, **long)  # argmax over the classes
        self.top = new(1).view(K, batch)  # the largest logit
        self.hits = torch.empty(K, batch, dtype=torch.bool, device=weight.device)
        self.picked = new(1)  # the targets' log-probabilities (K, 1, B)
        # Views used every step, made once (a view is a dispatch too).
        self.x_rows = self.x.view(S * batch, D)
        self.x_t = self.x.transpose(1, 2)
        self.inputs: Tensor | None = None  # x as (S, B, C, H, W), made by MLPStep.batch
        self.labels_flat = self.labels.view(S * batch)
        self.labels_per_member = self.labels.expand(S, K // S, batch)
        self.targets_per_seed = self.targets.view(S, K // S, batch)
        self.targets_flat = self.targets.view(K, batch)
        self.z0_wide = self.z[0].view(S, -1, batch)  # layer 1: one wide GEMM per seed
        self.dz0_wide = self.dz[0].view(S, -1, batch)
        self.h_t = [t.transpose(1, 2) for t in self.h]
        self.logits_t = self.logits.transpose(1, 2)
        self.picked_flat = self.picked.view(K, batch)
        # Written by the compiled kernels (actlab.engine.native): the members' losses and correct
        # predictions of the step, and the raw addresses the kernels are called with.
        self.losses = torch.empty(K, **options)
        self.correct = torch.empty(K, dtype=torch.long, device=weight.device)
        self.ptr = _Addresses(self)


class _Addresses:
    """The data addresses of a workspace's tensors, read once (the buffers never move)."""

    def __init__(self, ws: _Workspace) -> None:
        self.z = [t.data_ptr() for t in ws.z]
        self.h = [t.data_ptr() for t in ws.h]
        self.dh = [t.data_ptr() for t in ws.dh]
        self.dz = [t.data_ptr() for t in ws.dz]
        self.logits = ws.logits.data_ptr()
        self.targets = ws.targets.data_ptr()
        self.d = ws.d.data_ptr()
        self.losses = ws.losses.data_ptr()
        self.correct = ws.correct.data_ptr()


@dataclass
class StepCache:
    """What `MLPStep.backward` needs of the forward pass."""

    workspace: _Workspace
    x: Tensor  # inputs (S, B, D)
    outs: list[Tensor]  # each hidden layer's output after dropout (the next layer's input)
    masks: list[Tensor | None]  # dropout masks (K, units, B)
    graphs: list[tuple[Tensor, Tensor] | None]  # (z leaf, h) where autograd differentiates
    logp: Tensor | None  # log-softmax of the logits (K, classes, B); None: compiled kernels
    targets: Tensor  # (K, 1, B)


class MLPStep:
    """Forward with cached tensors, and the exact backward, of a `StackedMLP` in training.

    No autograd graph is recorded, whatever the grad mode: every tensor the step reads is
    detached (the parameters' views included), so its methods need no ``torch.no_grad``
    context, whose entry and exit cost about 3 us a call. Only an activation without a
    closed form builds, explicitly, a graph of that layer's activation alone."""

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
        self._rows: tuple[Tensor, Tensor] | None = None  # the train inputs, one row a sample
        # Views of the parameters and their gradients, made once: optimizers and checkpoint
        # loads update the parameters in place, so the views stay valid.
        S = model.num_seeds
        with torch.no_grad():
            weights = [w.detach() for w in model.weights]
            biases = [b.detach() for b in model.biases]
            D = weights[0].shape[2]
            grads = dict(zip(map(id, self._trainable), self.grads, strict=True))
            self.weight_grads = [grads[id(w)] for w in model.weights]
            self.bias_grads = [grads[id(b)] for b in model.biases]
            # Layer 1: one wide GEMM per seed, W1 viewed as (S, K/S * H, D).
            self.wide_weight = weights[0].view(S, -1, D)
            self.wide_bias = biases[0].view(S, -1, 1)
            self.wide_weight_grad = self.weight_grads[0].view(S, -1, D)
            self.weights = weights
            self.weights_t = [w.transpose(1, 2) for w in weights]
            self.biases = [b.unsqueeze(2) for b in biases]
        self.native = self._native_kernels()

    def _native_kernels(self):
        """The compiled kernels (actlab.engine.native) for this model on this device: the
        activations in closed form and CPU float32 tensors. Sets each member's activation
        code and parameters (code -1: an activation the kernels lack, which runs as its
        torch ops, `_uncoded`); returns the library or None."""
        model = self.model
        if self.closed_forms is None or not native.usable(self.weights[0]):
            return None
        lib = native.library()
        if lib is None:
            return None
        coded = [native.code_and_params(info.name, info.params) for info in model.infos]
        self._uncoded = [a for a, c in enumerate(coded) if c is None]
        coded = [(-1, 0.0, 0.0, 0.0) if c is None else c for c in coded]
        S, A, L = model.grid.shape
        member_group = [(k // L) % A for k in range(model.num_members)]  # k = (s*A + a)*L + l
        self._codes = torch.tensor([coded[a][0] for a in member_group], dtype=torch.int32)
        self._code_params = torch.tensor([coded[a][1:] for a in member_group], dtype=torch.float32)
        self._codes_ptr = self._codes.data_ptr()
        self._code_params_ptr = self._code_params.data_ptr()
        self._bias_grad_ptrs = [g.data_ptr() for g in self.bias_grads]
        # The bias gradients of an activation group (S, L, units), for the uncoded ones.
        self._bias_grad_groups = [
            list(g.view(S, A, L, g.shape[1]).unbind(1)) for g in self.bias_grads[:-1]
        ]
        return lib

    def describe_kernels(self) -> str | None:
        """``compiled (...)``, with the activations left to torch ops, or ``torch ops
        (why)``; None off the CPU."""
        if self.native is not None:
            text = f"compiled ({native.SOURCE.name}, fused activations and cross-entropy)"
            if self._uncoded:
                names = ", ".join(self.model.infos[a].name for a in self._uncoded)
                text += f"; torch ops for {names} (no compiled kernel)"
            return text
        if not native.usable(self.weights[0]):
            return None
        if self.closed_forms is None:
            return "torch ops (an activation is differentiated by autograd)"
        return f"torch ops ({native.why_off()})"

    def _native_for(self, batch: int):
        """The compiled kernels for a batch of `batch` samples, or None."""
        return self.native if batch <= native.MAX_BATCH else None

    def _workspace(self, batch: int) -> _Workspace:
        if batch not in self._workspaces:
            self._workspaces[batch] = _Workspace(self.model, batch)
        return self._workspaces[batch]

    # --- forward ------------------------------------------------------------------------

    def batch(self, x_train: Tensor, y_train: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """The batch `index` (S, B) of each seed, gathered into the workspace: inputs
        (S, B, C, H, W) and member targets (K, B), as ``Trainer._batch`` returns them."""
        S, B = index.shape
        ws = self._workspace(B)
        if self._rows is None or self._rows[0] is not x_train:
            self._rows = (x_train, x_train.view(x_train.shape[0], -1))
        flat = index.view(S * B) if index.is_contiguous() else index.reshape(S * B)
        torch.index_select(self._rows[1], 0, flat, out=ws.x_rows)
        torch.index_select(y_train, 0, flat, out=ws.labels_flat)
        ws.targets_per_seed.copy_(ws.labels_per_member)
        if ws.inputs is None or ws.inputs.shape[2:] != x_train.shape[1:]:
            ws.inputs = ws.x.view(S, B, *x_train.shape[1:])
        return ws.inputs, ws.targets_flat

    def forward(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, StepCache]:
        """inputs (S, B, C, H, W), targets (K, B). Returns logits (K, B, classes) (a view of
        the workspace, valid until the next step), the members' mean losses (K,) and the
        cache for `backward`."""
        model = self.model
        S, B = inputs.shape[:2]
        ws = self._workspace(B)
        if inputs is ws.inputs:  # gathered by `batch`
            x, x_t = ws.x, ws.x_t
        else:
            x = inputs.reshape(S, B, -1)
            x_t = x.transpose(1, 2)
        torch.baddbmm(self.wide_bias, self.wide_weight, x_t, out=ws.z0_wide)
        outs, masks, graphs = [], [], []
        for layer in range(model.num_hidden):
            if layer > 0:
                torch.baddbmm(self.biases[layer], self.weights[layer], outs[-1], out=ws.z[layer])
            h, graph = self._activate(layer, ws)
            mask = None
            if model.dropout > 0 and model.training:
                mask = model._dropout_mask(h.shape, h.dtype, h.device).transpose(1, 2)
                h = h * mask
            outs.append(h)
            masks.append(mask)
            graphs.append(graph)
        logits = torch.baddbmm(self.biases[-1], self.weights[-1], outs[-1], out=ws.logits)
        if targets is not ws.targets_flat:  # not gathered by `batch`
            ws.targets_flat.copy_(targets)
        lib = self._native_for(B)
        if lib is not None:
            # Loss, its gradient ws.d, the top bias gradient and the hits, in one pass.
            K, C = logits.shape[:2]
            lib.xent_forward_backward(
                K, C, B, ws.ptr.logits, ws.ptr.targets, ws.ptr.d, self._bias_grad_ptrs[-1],
                ws.ptr.losses, ws.ptr.correct, native.threads_for(K * C * B),
            )  # fmt: skip
            cache = StepCache(ws, x, outs, masks, graphs, None, ws.targets)
            return ws.logits_t, ws.losses, cache
        logp = torch.log_softmax(logits, dim=1, out=ws.logp)
        torch.gather(logp, 1, ws.targets, out=ws.picked)
        losses = ws.picked_flat.mean(dim=1).neg_()
        cache = StepCache(ws, x, outs, masks, graphs, logp, ws.targets)
        return ws.logits_t, losses, cache

    def count_correct(self, cache: StepCache, out: Tensor) -> None:
        """Add each member's correct predictions of the step to `out` (K,): the index of the
        largest logit (the first one, as ``Tensor.argmax``) over the classes of the
        feature-major logits (``max`` over a middle dim is vectorised; ``argmax`` is not,
        and is 6x slower there)."""
        ws = cache.workspace
        if cache.logp is None:  # counted by the compiled kernel
            out += ws.correct
            return
        torch.max(ws.logits, dim=1, out=(ws.top, ws.predicted))
        torch.eq(ws.predicted, ws.targets_flat, out=ws.hits)
        out += ws.hits.sum(dim=1)

    def _activate(self, layer: int, ws: _Workspace) -> tuple[Tensor, tuple | None]:
        """The layer's activation of ws.z[layer]: (output, None) in closed form, written
        group by group into ws.h[layer]; else (output, (z leaf, output)) with a graph."""
        lib = self._native_for(ws.z[layer].shape[2])
        if lib is not None:
            K, units, B = ws.z[layer].shape
            lib.act_forward(
                K, units, B, self._codes_ptr, self._code_params_ptr, ws.ptr.z[layer],
                ws.ptr.h[layer], native.threads_for(K * units * B),
            )  # fmt: skip
            z_groups, h_groups = ws.z_groups[layer], ws.h_groups[layer]
            for a in self._uncoded:  # left untouched by the kernel
                self.closed_forms[a].forward(z_groups[a], self.params[a], h_groups[a])
            return ws.h[layer], None
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

    def backward(self, cache: StepCache, alive: Tensor | None = None) -> None:
        """Write every parameter's gradient of sum_k L_k (over members `alive`, a (K,) bool
        tensor; None for all) into its ``.grad``."""
        model = self.model
        for p, grad in zip(self._trainable, self.grads, strict=True):
            if p.grad is not grad:  # the engine sets them to None between epochs
                p.grad = grad
        ws = cache.workspace
        K, _, B = ws.d.shape
        fused = cache.logp is None  # the compiled kernels: d and every bias gradient
        if not fused:
            # d = (softmax - onehot(y)) / B, the gradient of the mean cross-entropy.
            d = torch.exp(cache.logp, out=ws.d)
            d.scatter_add_(1, cache.targets, ws.minus_one)
            d.mul_(1.0 / B)
        else:
            d = ws.d  # written with the top bias gradient by xent_forward_backward
        if alive is not None:
            dead = ~alive
            d.masked_fill_(dead.view(K, 1, 1), 0.0)  # a select: NaN * 0 would be NaN
            if fused:
                self.bias_grads[-1].masked_fill_(dead.view(K, 1), 0.0)
        for layer in range(model.num_hidden, 0, -1):
            below = layer - 1
            h = cache.outs[below]
            h_t = ws.h_t[below] if h is ws.h[below] else h.mT  # not after dropout/autograd
            torch.bmm(d, h_t, out=self.weight_grads[layer])
            if not fused:
                torch.sum(d, dim=2, out=self.bias_grads[layer])
            dh = torch.bmm(self.weights_t[layer], d, out=ws.dh[below])
            if cache.masks[below] is not None:
                dh.mul_(cache.masks[below])
            d = self._activation_backward(below, cache, dh)
        d_wide = ws.dz0_wide if d is ws.dz[0] else d.reshape(ws.dz0_wide.shape)
        torch.bmm(d_wide, cache.x, out=self.wide_weight_grad)
        if not fused:
            torch.sum(d, dim=2, out=self.bias_grads[0])

    def _activation_backward(self, layer: int, cache: StepCache, dh: Tensor) -> Tensor:
        """dz = dh * f'(z): group by group in closed form, or through the layer's graph."""
        graph = cache.graphs[layer]
        if graph is not None:
            leaf, h = graph
            (dz,) = torch.autograd.grad(h, leaf, dh)
            return dz
        ws = cache.workspace
        if cache.logp is None:  # the compiled kernels: dz and this layer's bias gradient
            K, units, B = dh.shape
            self.native.act_backward(
                K, units, B, self._codes_ptr, self._code_params_ptr, ws.ptr.dh[layer],
                ws.ptr.z[layer], ws.ptr.h[layer], ws.ptr.dz[layer], self._bias_grad_ptrs[layer],
                native.threads_for(K * units * B),
            )  # fmt: skip
            for a in self._uncoded:  # left untouched by the kernel
                dz_group = self.closed_forms[a].backward(
                    ws.dh_groups[layer][a], ws.z_groups[layer][a], ws.h_groups[layer][a],
                    self.params[a], ws.dz_groups[layer][a],
                )  # fmt: skip
                torch.sum(dz_group, dim=-1, out=self._bias_grad_groups[layer][a])
            return ws.dz[layer]
        z_groups, h_groups = ws.z_groups[layer], ws.h_groups[layer]
        dh_groups, dz_groups = ws.dh_groups[layer], ws.dz_groups[layer]
        for a, form in enumerate(self.closed_forms):
            form.backward(dh_groups[a], z_groups[a], h_groups[a], self.params[a], dz_groups[a])
        return ws.dz[layer]
