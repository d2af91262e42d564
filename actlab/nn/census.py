"""Which activation ops a network really runs: counted by aten op in a forward pass.

Reading the code (modules, fx graphs) misses what torch's own layers call inside (an
``nn.TransformerEncoderLayer(activation="relu")`` calls ``F.relu`` in torch.nn code, its
inference fast path runs relu inside one fused kernel) and what untraceable Python does. A
``TorchDispatchMode`` sees every aten op a forward executes, whoever called it; the ops run
inside the activation modules actlab placed are not counted (their forwards mark them), so
what is counted is what a swap or a builder's ``act()`` did not reach.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

# The aten ops (overload packets) each activation module class runs.
OPS_OF_CLASS = {
    "ReLU": ("relu", "relu_"),
    "ReLU6": ("hardtanh", "hardtanh_"),
    "Hardtanh": ("hardtanh", "hardtanh_"),
    "LeakyReLU": ("leaky_relu", "leaky_relu_"),
    "PReLU": ("_prelu_kernel", "prelu"),
    "RReLU": ("rrelu_with_noise", "rrelu_with_noise_", "leaky_relu", "leaky_relu_"),
    "ELU": ("elu", "elu_"),
    "SELU": ("elu", "elu_"),
    "CELU": ("elu", "elu_"),
    "GELU": ("gelu", "gelu_"),
    "SiLU": ("silu", "silu_"),
    "Mish": ("mish", "mish_"),
    "Hardswish": ("hardswish", "hardswish_"),
    "Sigmoid": ("sigmoid", "sigmoid_"),
    "Hardsigmoid": ("hardsigmoid", "hardsigmoid_"),
    "Tanh": ("tanh", "tanh_"),
    "Softplus": ("softplus",),
}
# Fused kernels with an activation baked in (reported whatever was asked to be replaced).
FUSED_OPS = ("_transformer_encoder_layer_fwd",)


def ops_for(class_names: Iterable[str]) -> frozenset[str]:
    """The aten op names of these activation classes (``nn.ReLU`` or ``ReLU``), plus the
    fused kernels that bake an activation in."""
    ops = set(FUSED_OPS)
    for name in class_names:
        ops.update(OPS_OF_CLASS.get(name.removeprefix("nn."), ()))
    return frozenset(ops)


class _Census(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in torch._dynamo.disable unless told not
        # to, and its first call then imports torch._dynamo (sympy, ...: 0.7 s of a study's
        # start-up). Nothing compiles this mode's code: there is nothing to disable.
        return False

    def __init__(self, ops: frozenset[str]) -> None:
        super().__init__()
        self.ops = ops
        self.inside = 0  # > 0 while an excluded module runs
        self.path: list[str] = []
        self.found: Counter[tuple[str, str]] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.inside and name in self.ops:
            self.found[(name, self.path[-1] if self.path else "forward")] += 1
        return func(*args, **(kwargs or {}))


def count_ops(
    model: nn.Module,
    run: Callable[[], object],
    ops: frozenset[str],
    exclude: Iterable[nn.Module] = (),
) -> list[tuple[str, str, int]]:
    """Run `run()` (a forward of `model`) and count the aten ops in `ops` it executes
    outside the `exclude` modules: (op, innermost module path, count), in order of first
    call. Exceptions of `run` propagate; hooks are removed either way."""
    census = _Census(ops)
    excluded = {id(m) for m in exclude}
    # Instance-level forward wrappers, not hooks: torch's transformer layers take their
    # fused fast path only when no module of theirs has a hook, and that path is counted.
    patched: list[tuple[nn.Module, object]] = []

    def wrap(module: nn.Module, name: str, skip: bool):
        original = module.forward

        def forward(*args, **kwargs):
            census.path.append(name)
            census.inside += skip
            try:
                return original(*args, **kwargs)
            finally:
                census.path.pop()
                census.inside -= skip

        return forward

    for name, module in model.named_modules():
        patched.append((module, module.__dict__.get("forward")))
        module.forward = wrap(module, name or "forward", id(module) in excluded)
    try:
        with census:
            run()
    finally:
        for module, before in patched:
            if before is None:
                del module.forward
            else:
                module.forward = before
    return [(op, where, count) for (op, where), count in census.found.items()]


def remaining_after_swap(
    model: nn.Module,
    run: Callable[[], object],
    class_names: Iterable[str],
    placed: Iterable[nn.Module],
) -> list[tuple[str, str, int]]:
    """The activation ops of `class_names` that `run()` still executes outside the
    activations actlab `placed`, in train mode with autograd and in eval mode under
    no_grad (where torch's fused inference paths run); the larger count of the two per
    (op, place)."""
    ops = ops_for(class_names)
    placed = list(placed)
    was_training = model.training
    counts: dict[tuple[str, str], int] = {}
    try:
        for training in (True, False):
            model.train(training)
            with torch.set_grad_enabled(training):
                for op, where, count in count_ops(model, run, ops, placed):
                    counts[(op, where)] = max(counts.get((op, where), 0), count)
    finally:
        model.train(was_training)
    return [(op, where, count) for (op, where), count in counts.items()]
