"""Closed-form kernels of catalog activations, for the hand-written backward pass.

For an elementwise activation y = f(x), the backward pass needs dL/dx = dL/dy * f'(x).
Each entry holds the kernel the catalog's module runs for f, and the very kernel autograd
calls for its derivative (``torch.ops.aten.*_backward``, see PyTorch's
``tools/autograd/derivatives.yaml``), both in their ``out=`` form so the hand-written step
writes each activation group's slice in place. The numbers are those of the module and of
``loss.backward()``, one-sided slopes at kinks included (relu'(0) = 0, leaky_relu'(0) =
slope, hardtanh' = 0 at its edges):

    relu        f = max(0, x)         f' = 1[x > 0]             threshold_backward(g, y, 0)
    relu6       f = min(max(0,x), 6)  f' = 1[0 < x < 6]         hardtanh_backward
    leaky_relu  f = x or slope*x      f' = 1 or slope           leaky_relu_backward
    elu, selu, celu: f = scale*(x or alpha*(exp(s*x) - 1)/s)     elu_backward
    gelu (exact or tanh), silu, mish, hard_swish, hard_sigmoid, hard_tanh, softplus,
    soft_shrink, hard_shrink: their aten forward and *_backward kernels
    sigmoid     f = 1/(1+exp(-x))     f' = y (1 - y)            sigmoid_backward(g, y)
    tanh        f = tanh(x)           f' = 1 - y^2              tanh_backward(g, y)
    linear      f = x                 f' = 1

Activations without an entry (learnable, stochastic such as rrelu in training, expr:,
softmax-like, the rest) are differentiated by autograd instead; see actlab.engine.mlp_step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

aten = torch.ops.aten

# SELU's constants, as torch.selu uses them (it is elu with these).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


@dataclass(frozen=True)
class ClosedForm:
    """``forward(x, params, out)``: out = f(x). ``backward(g, x, y, params, out)``: out =
    g * f'(x), where y = f(x). Both return `out`."""

    forward: Callable[[Tensor, dict, Tensor], Tensor]
    backward: Callable[[Tensor, Tensor, Tensor, dict, Tensor], Tensor]


def elu_args(name: str, p: dict) -> tuple[float, float, float]:
    """(alpha, scale, input_scale) of aten's elu for elu, selu and celu."""
    if name == "selu":
        return SELU_ALPHA, SELU_SCALE, 1.0
    if name == "celu":
        return p["alpha"], 1.0, 1.0 / p["alpha"]
    return p["alpha"], 1.0, 1.0


def _elu_family(name: str) -> ClosedForm:
    return ClosedForm(
        lambda x, p, out: aten.elu.out(x, *elu_args(name, p), out=out),
        lambda g, x, y, p, out: aten.elu_backward.grad_input(
            g, *elu_args(name, p), False, x, grad_input=out
        ),
    )


def _gelu(approximate: str | None) -> ClosedForm:
    def mode(p: dict) -> str:
        return approximate or p["approximate"]

    return ClosedForm(
        lambda x, p, out: aten.gelu.out(x, approximate=mode(p), out=out),
        lambda g, x, y, p, out: aten.gelu_backward.grad_input(
            g, x, approximate=mode(p), grad_input=out
        ),
    )


def _hardtanh(low: Callable[[dict], float], high: Callable[[dict], float]) -> ClosedForm:
    return ClosedForm(
        lambda x, p, out: aten.hardtanh.out(x, low(p), high(p), out=out),
        lambda g, x, y, p, out: aten.hardtanh_backward.grad_input(
            g, x, low(p), high(p), grad_input=out
        ),
    )


CLOSED_FORMS: dict[str, ClosedForm] = {
    "relu": ClosedForm(
        lambda x, p, out: aten.clamp_min.out(x, 0, out=out),  # what torch.relu runs
        lambda g, x, y, p, out: aten.threshold_backward.grad_input(g, y, 0, grad_input=out),
    ),
    "relu6": _hardtanh(lambda p: 0.0, lambda p: 6.0),
    "leaky_relu": ClosedForm(
        lambda x, p, out: aten.leaky_relu.out(x, p["negative_slope"], out=out),
        lambda g, x, y, p, out: aten.leaky_relu_backward.grad_input(
            g, x, p["negative_slope"], False, grad_input=out
        ),
    ),
    "elu": _elu_family("elu"),
    "selu": _elu_family("selu"),
    "celu": _elu_family("celu"),
    "gelu": _gelu(None),
    "gelu_tanh": _gelu("tanh"),
    "silu": ClosedForm(
        lambda x, p, out: aten.silu.out(x, out=out),
        lambda g, x, y, p, out: aten.silu_backward.grad_input(g, x, grad_input=out),
    ),
    "mish": ClosedForm(
        lambda x, p, out: aten.mish.out(x, out=out),
        lambda g, x, y, p, out: out.copy_(aten.mish_backward(g, x)),  # no out= form
    ),
    "hard_swish": ClosedForm(
        lambda x, p, out: aten.hardswish.out(x, out=out),
        lambda g, x, y, p, out: aten.hardswish_backward.out(g, x, out=out),
    ),
    "sigmoid": ClosedForm(
        lambda x, p, out: aten.sigmoid.out(x, out=out),
        lambda g, x, y, p, out: aten.sigmoid_backward.grad_input(g, y, grad_input=out),
    ),
    "hard_sigmoid": ClosedForm(
        lambda x, p, out: aten.hardsigmoid.out(x, out=out),
        lambda g, x, y, p, out: aten.hardsigmoid_backward.grad_input(g, x, grad_input=out),
    ),
    "tanh": ClosedForm(
        lambda x, p, out: aten.tanh.out(x, out=out),
        lambda g, x, y, p, out: aten.tanh_backward.grad_input(g, y, grad_input=out),
    ),
    "hard_tanh": _hardtanh(lambda p: p["min_val"], lambda p: p["max_val"]),
    "softplus": ClosedForm(
        lambda x, p, out: aten.softplus.out(x, p["beta"], p["threshold"], out=out),
        lambda g, x, y, p, out: aten.softplus_backward.grad_input(
            g, x, p["beta"], p["threshold"], grad_input=out
        ),
    ),
    "soft_shrink": ClosedForm(
        lambda x, p, out: aten.softshrink.out(x, p["lambd"], out=out),
        lambda g, x, y, p, out: aten.softshrink_backward.grad_input(
            g, x, p["lambd"], grad_input=out
        ),
    ),
    "hard_shrink": ClosedForm(
        lambda x, p, out: aten.hardshrink.out(x, p["lambd"], out=out),
        lambda g, x, y, p, out: aten.hardshrink_backward.grad_input(
            g, x, p["lambd"], grad_input=out
        ),
    ),
    "linear": ClosedForm(
        lambda x, p, out: out.copy_(x),
        lambda g, x, y, p, out: out.copy_(g),
    ),
}


def closed_form(name: str) -> ClosedForm | None:
    """The closed-form kernels of catalog activation `name`, or None (use autograd)."""
    return CLOSED_FORMS.get(name)
