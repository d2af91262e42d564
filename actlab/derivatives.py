"""Closed-form derivatives of catalog activations, for the hand-written backward pass.

For an elementwise activation y = f(x), the backward pass needs dL/dx = dL/dy * f'(x).
Each entry here computes it with the very kernel autograd calls for that activation
(``torch.ops.aten.*_backward``, see PyTorch's ``tools/autograd/derivatives.yaml``), so a
hand-written backward gives the same numbers as ``loss.backward()``, one-sided slopes at
kinks included (e.g. relu'(0) = 0, leaky_relu'(0) = slope, hardtanh' = 0 at its edges).

    relu        f' = 1[x > 0]                          threshold_backward(g, y, 0)
    relu6       f' = 1[0 < x < 6]                      hardtanh_backward(g, x, 0, 6)
    leaky_relu  f' = 1 if x > 0 else slope             leaky_relu_backward
    elu, selu, celu   f' = scale if x > 0 else scale*alpha*s*exp(s*x)   elu_backward
    gelu        f' = Phi(x) + x phi(x) (exact or tanh) gelu_backward
    silu        f' = s(x) (1 + x (1 - s(x)))           silu_backward
    mish, hard_swish, hard_sigmoid, hard_tanh, softplus, soft_shrink, hard_shrink: theirs
    sigmoid     f' = y (1 - y)                         sigmoid_backward(g, y)
    tanh        f' = 1 - y^2                           tanh_backward(g, y)
    linear      f' = 1

Activations without an entry (learnable, stochastic such as rrelu in training, expr:,
softmax-like, the rest) are differentiated by autograd instead; see actlab.mlp_step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

aten = torch.ops.aten

# SELU's constants, as torch.nn.functional.selu uses them.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

# (grad, x, y, params, out) -> out = grad * f'(x); x is the input, y = f(x) the output.
Derivative = Callable[[Tensor, Tensor, Tensor, dict, Tensor], Tensor]


def _mish(g: Tensor, x: Tensor, y: Tensor, p: dict, out: Tensor) -> Tensor:
    return out.copy_(aten.mish_backward(g, x))


DERIVATIVES: dict[str, Derivative] = {
    "relu": lambda g, x, y, p, out: aten.threshold_backward.grad_input(g, y, 0, grad_input=out),
    "relu6": lambda g, x, y, p, out: aten.hardtanh_backward.grad_input(
        g, x, 0.0, 6.0, grad_input=out
    ),
    "leaky_relu": lambda g, x, y, p, out: aten.leaky_relu_backward.grad_input(
        g, x, p["negative_slope"], False, grad_input=out
    ),
    "elu": lambda g, x, y, p, out: aten.elu_backward.grad_input(
        g, p["alpha"], 1.0, 1.0, False, x, grad_input=out
    ),
    "selu": lambda g, x, y, p, out: aten.elu_backward.grad_input(
        g, SELU_ALPHA, SELU_SCALE, 1.0, False, x, grad_input=out
    ),
    "celu": lambda g, x, y, p, out: aten.elu_backward.grad_input(
        g, p["alpha"], 1.0, 1.0 / p["alpha"], False, x, grad_input=out
    ),
    "gelu": lambda g, x, y, p, out: aten.gelu_backward.grad_input(
        g, x, approximate=p["approximate"], grad_input=out
    ),
    "gelu_tanh": lambda g, x, y, p, out: aten.gelu_backward.grad_input(
        g, x, approximate="tanh", grad_input=out
    ),
    "silu": lambda g, x, y, p, out: aten.silu_backward.grad_input(g, x, grad_input=out),
    "mish": _mish,
    "hard_swish": lambda g, x, y, p, out: aten.hardswish_backward.out(g, x, out=out),
    "sigmoid": lambda g, x, y, p, out: aten.sigmoid_backward.grad_input(g, y, grad_input=out),
    "hard_sigmoid": lambda g, x, y, p, out: aten.hardsigmoid_backward.grad_input(
        g, x, grad_input=out
    ),
    "tanh": lambda g, x, y, p, out: aten.tanh_backward.grad_input(g, y, grad_input=out),
    "hard_tanh": lambda g, x, y, p, out: aten.hardtanh_backward.grad_input(
        g, x, p["min_val"], p["max_val"], grad_input=out
    ),
    "softplus": lambda g, x, y, p, out: aten.softplus_backward.grad_input(
        g, x, p["beta"], p["threshold"], grad_input=out
    ),
    "soft_shrink": lambda g, x, y, p, out: aten.softshrink_backward.grad_input(
        g, x, p["lambd"], grad_input=out
    ),
    "hard_shrink": lambda g, x, y, p, out: aten.hardshrink_backward.grad_input(
        g, x, p["lambd"], grad_input=out
    ),
    "linear": lambda g, x, y, p, out: out.copy_(g),
}


def derivative_for(name: str) -> Derivative | None:
    """The closed-form derivative of catalog activation `name`, or None (use autograd)."""
    return DERIVATIVES.get(name)
