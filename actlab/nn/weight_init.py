"""Weight initialisation for stacked models: one draw per seed, then each member's gain.

Every layer's weight is drawn once per seed from ``torch.Generator().manual_seed(seed)``
with the shape of ONE member's layer (``(out, in)`` or ``(out, in, kh, kw)``), so the fan
computation is exactly PyTorch's. Members sharing a seed then share these random numbers,
each multiplied by its own gain (see :func:`gain_for`).

Inits (``config.init``):

- ``pytorch``: ``nn.Linear`` / ``nn.Conv2d``'s ``reset_parameters``:
  ``W ~ U(-b, b)`` with ``b = 1/sqrt(fan_in)`` (``kaiming_uniform_(a=sqrt(5))``) and
  ``bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, drawn weight then bias, layer by layer,
  so the draws equal ``torch.manual_seed(seed)`` followed by building the plain modules.
- ``glorot``: ``W ~ U(-a, a)``, ``a = gain * sqrt(6 / (fan_in + fan_out))``, zero bias
  (Glorot & Bengio 2010; the Keras default).
- ``kaiming``: ``W ~ N(0, gain^2 / fan_in)`` with ``gain = sqrt(2)`` (ReLU) unless
  ``init_gain`` asks for the activation's gain; zero bias (He et al. 2015).
- ``lecun``: ``W ~ N(0, gain^2 / fan_in)`` with ``gain = 1``, zero bias (LeCun et al. 1998;
  the normal, not truncated, form used by Klambauer et al. 2017 for SELU).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from actlab.errors import ConfigError

INITS = ("pytorch", "glorot", "kaiming", "lecun")

# Gain each init uses when `init_gain` is off (the torch function's own default).
DEFAULT_GAIN = {"pytorch": 1.0, "glorot": 1.0, "kaiming": math.sqrt(2.0), "lecun": 1.0}

# Catalog names that torch.nn.init.calculate_gain knows.
_GAIN_NONLINEARITIES = {
    "relu": "relu",
    "leaky_relu": "leaky_relu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "selu": "selu",
    "linear": "linear",
    "identity": "linear",
}


def draw_weight(shape: tuple[int, ...], init: str, generator: torch.Generator) -> Tensor:
    """One member's weight of `shape` for `init`, at unit gain (kaiming: at gain 1 too;
    the caller multiplies by :func:`layer_gain`)."""
    weight = torch.empty(shape)
    if init == "pytorch":
        return torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if init == "glorot":
        return torch.nn.init.xavier_uniform_(weight, gain=1.0, generator=generator)
    if init in ("kaiming", "lecun"):
        return torch.nn.init.kaiming_normal_(
            weight, mode="fan_in", nonlinearity="linear", generator=generator
        )
    raise ConfigError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")


def draw_bias(weight_shape: tuple[int, ...], init: str, generator: torch.Generator) -> Tensor:
    """One member's bias: PyTorch's ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for ``pytorch``
    (no draw for a zero fan-in), zeros otherwise (no random numbers drawn)."""
    bias = torch.zeros(weight_shape[0])
    if init == "pytorch":
        fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(weight_shape))
        if fan_in > 0:
            bound = 1.0 / math.sqrt(fan_in)
            torch.nn.init.uniform_(bias, -bound, bound, generator=generator)
    return bias


def gain_for(name: str, params: dict | None = None) -> float:
    """``torch.nn.init.calculate_gain`` for a catalog activation name.

    relu: sqrt(2); leaky_relu(negative_slope=a): sqrt(2 / (1 + a^2)); tanh: 5/3;
    sigmoid, linear, identity: 1; selu: 3/4. Every other activation (gelu, silu, elu,
    prelu, expr:..., ...) has no gain in torch and gets 1.

    Note torch's selu gain (3/4) is not the self-normalising init: for SELU as in
    Klambauer et al. 2017 use ``lecun`` without ``init_gain`` (std 1/sqrt(fan_in)).
    """
    nonlinearity = _GAIN_NONLINEARITIES.get(name)
    if nonlinearity is None:
        return 1.0
    if nonlinearity == "leaky_relu":
        slope = (params or {}).get("negative_slope", 0.01)
        return float(torch.nn.init.calculate_gain("leaky_relu", slope))
    return float(torch.nn.init.calculate_gain(nonlinearity))


def layer_gain(init: str, init_gain: bool, activation_gain: float | None) -> float:
    """The factor a member's drawn weight is multiplied by. `activation_gain` is the gain of
    the activation that follows the layer (None for the output layer, which gives logits:
    gain 1 with `init_gain`, the init's default otherwise)."""
    if not init_gain:
        return DEFAULT_GAIN[init]
    return 1.0 if activation_gain is None else activation_gain
