"""Every activation by name: PyTorch's, Keras 3's, and yours.

One :class:`ActivationSpec` per activation holds its names (canonical snake_case, the
PyTorch class, the Keras name, common aliases), its functional and ``nn.Module`` forms, its
parameters with PyTorch defaults, the formula and a reference, and what Keras 3 does
differently. Properties (range, monotonic, saturation, smoothness) are not typed by hand:
:func:`properties` measures them from the function.

    >>> get("leaky_relu(negative_slope=0.2)")          # a fresh nn.Module
    LeakyReLU(negative_slope=0.2)
    >>> get_fn("expr:x * sigmoid(1.702 * x)")          # a callable on tensors
    >>> resolve("LeakyReLU")                           # (spec, {'negative_slope': 0.01})

A spec is a name or alias (case and ``_`` insensitive), a spec string with keyword
arguments, a dict ``{"name": ..., **params}``, ``"expr:<formula in x>"`` (see
:mod:`actlab.catalog.expr`), or a callable / module, which passes through.
"""

from __future__ import annotations

import ast
import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actlab.catalog.expr import parse_expression
from actlab.errors import SpecError, UnknownActivationError, control_characters

# Differences between Keras 3 and PyTorch that are not about one activation, but change the
# numbers when a Keras model is ported (shown by `actlab show` for every entry).
KERAS_NOTES: tuple[str, ...] = (
    "Dense init: Keras uses glorot_uniform weights and zero bias; torch.nn.Linear uses "
    "kaiming_uniform(a=sqrt(5)) weights and U(-1/sqrt(fan_in), 1/sqrt(fan_in)) bias",
    "Adam eps: 1e-7 in Keras, 1e-8 in torch.optim.Adam",
)

_TORCH_DOCS = "https://pytorch.org/docs/stable/generated/torch.nn.{}.html"
_KERAS_DOCS = "https://keras.io/api/layers/activations/"


class _Required:
    """Marks a parameter without a default (Threshold's threshold and value)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class ActivationSpec:
    """One catalog entry. ``fn(x, **params)`` is the functional form and
    ``module(**params)`` builds a fresh ``nn.Module``; both take the PyTorch parameter names."""

    name: str
    fn: Callable[..., Tensor] = field(compare=False, repr=False)
    module: Callable[..., nn.Module] = field(compare=False, repr=False)
    aliases: tuple[str, ...] = ()
    torch_class: str | None = None
    keras_name: str | None = None
    params: dict = field(default_factory=dict, compare=False)
    learnable: bool = False
    inplace: bool = False
    elementwise: bool = True
    needs_dim: bool = False
    formula: str = ""
    reference: str = ""
    keras_differences: tuple[str, ...] = ()
    keras_defaults: dict = field(default_factory=dict, compare=False)
    # Keras parameter names that mean a PyTorch one here ({"axis": "dim"}).
    param_aliases: dict = field(default_factory=dict, compare=False)
    notes: tuple[str, ...] = ()
    # Extra checks on resolved params: returns an error message or None.
    check: Callable[[dict], str | None] | None = field(default=None, compare=False, repr=False)

    @property
    def required(self) -> tuple[str, ...]:
        """Parameters the user must give (no default)."""
        return tuple(
            k for k, v in self.params.items() if v is REQUIRED or (k == "dim" and self.needs_dim)
        )

    @property
    def example(self) -> str:
        """A spec string that resolves: the name, with any required parameter filled in."""
        filled = dict(_EXAMPLE_PARAMS.get(self.name, {}))
        if self.needs_dim:
            filled.setdefault("dim", -1)
        return _label(self.name, filled)


# === modules that torch.nn lacks ========================================================


class Activation(nn.Module):
    """An elementwise (or per-dim) function as a module: ``forward(x) = fn(x, **params)``."""

    def __init__(
        self, name: str, fn: Callable[..., Tensor], params: Mapping[str, Any] | None = None
    ):
        super().__init__()
        self.name = name
        self.fn = fn
        self.params = dict(params or {})

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x, **self.params)

    def extra_repr(self) -> str:
        return ", ".join([repr(self.name)] + [f"{k}={v!r}" for k, v in self.params.items()])


class SwishBeta(nn.Module):
    """Swish with a learnable beta: ``x * sigmoid(beta * x)`` (Ramachandran et al. 2017)."""

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = nn.Parameter(torch.tensor(float(beta)))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.beta.to(x.dtype) * x)

    def extra_repr(self) -> str:
        return f"beta={self.beta.item():.4g}"


# === functional forms torch lacks (NumPy-checked in the tests) ==========================


def exponential(x: Tensor) -> Tensor:
    """``exp(x)`` (Keras ``exponential``)."""
    return torch.exp(x)


def linear(x: Tensor) -> Tensor:
    """``x`` (Keras ``linear``, ``nn.Identity``)."""
    return x


def sparse_plus(x: Tensor) -> Tensor:
    """0 for x <= -1, (x + 1)^2 / 4 for -1 < x < 1, x for x >= 1 (Keras ``sparse_plus``)."""
    return torch.where(x <= -1, torch.zeros_like(x), torch.where(x >= 1, x, (x + 1) ** 2 / 4))


def sparse_sigmoid(x: Tensor) -> Tensor:
    """0 for x <= -1, (x + 1) / 2 for -1 < x < 1, 1 for x >= 1 (Keras ``sparse_sigmoid``)."""
    return torch.clamp((x + 1) / 2, 0.0, 1.0)


def squareplus(x: Tensor, b: float = 4.0) -> Tensor:
    """``(x + sqrt(x^2 + b)) / 2`` (Barron 2021, arXiv:2112.11687)."""
    return (x + torch.sqrt(x * x + b)) / 2


def sparsemax(x: Tensor, dim: int = -1) -> Tensor:
    """Euclidean projection onto the simplex along ``dim``: ``max(x - tau, 0)`` with tau such
    that the outputs sum to 1 (Martins & Astudillo 2016, arXiv:1602.02068)."""
    z = x.movedim(dim, -1)
    sorted_z, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    cumsum = sorted_z.cumsum(-1)
    support = (1 + k * sorted_z) > cumsum
    k_z = support.sum(-1, keepdim=True)
    tau = (cumsum.gather(-1, k_z - 1) - 1) / k_z.to(z.dtype)
    return torch.clamp(z - tau, min=0.0).movedim(-1, dim)


def swish_beta(x: Tensor, beta: float = 1.0) -> Tensor:
    """``x * sigmoid(beta * x)`` at a fixed beta."""
    return x * torch.sigmoid(beta * x)


def _prelu(x: Tensor, num_parameters: int = 1, init: float = 0.25) -> Tensor:
    # At initialisation every channel has the same slope, so one weight is exact.
    return F.prelu(x, torch.full((1,), float(init), dtype=x.dtype, device=x.device))


def _rrelu(x: Tensor, lower: float = 1 / 8, upper: float = 1 / 3) -> Tensor:
    # The deterministic (evaluation-mode) form: slope (lower + upper) / 2.
    return F.rrelu(x, lower, upper, training=False)


def _torch_module(class_name: str, **fixed: Any) -> Callable[..., nn.Module]:
    def build(**params: Any) -> nn.Module:
        return getattr(nn, class_name)(**fixed, **params)

    build.__name__ = class_name
    return build


def _wrapped(name: str, fn: Callable[..., Tensor]) -> Callable[..., nn.Module]:
    return lambda **params: Activation(name, fn, params)


# === the registry =======================================================================

_REGISTRY: dict[str, ActivationSpec] = {}  # canonical name -> spec
_LOOKUP: dict[str, tuple[str, dict]] = {}  # normalised name/alias -> (canonical, preset params)
_PROPERTIES_CACHE: dict[str, dict] = {}
_EXAMPLE_PARAMS = {"threshold": {"threshold": 0.0, "value": 0.0}}


def _key(name: str) -> str:
    """Lookup key: case, '_', '-' and spaces do not matter (``LeakyReLU`` == ``leaky_relu``)."""
    return re.sub(r"[\s_\-]", "", name.lower())


def _add(spec: ActivationSpec, presets: Mapping[str, dict] | None = None) -> ActivationSpec:
    names = [spec.name, *spec.aliases, spec.torch_class, spec.keras_name]
    names = [n for n in names if n]
    for name in names:
        owner = _LOOKUP.get(_key(name), (spec.name,))[0]
        # A torch class shared by two entries (GELU) belongs to the first one.
        if owner != spec.name and name != spec.torch_class:
            raise SpecError(f"name {name!r} is already used by activation {owner!r}; pick another")
    _REGISTRY[spec.name] = spec
    for name in names:
        _LOOKUP.setdefault(_key(name), (spec.name, {}))
    for alias, preset in (presets or {}).items():
        _LOOKUP[_key(alias)] = (spec.name, dict(preset))
    return spec


def unregister(name: str) -> None:
    """Remove a user-registered activation (and its aliases)."""
    spec, _ = resolve(name)
    del _REGISTRY[spec.name]
    for key in [k for k, (owner, _) in _LOOKUP.items() if owner == spec.name]:
        del _LOOKUP[key]
    for key in [k for k in _PROPERTIES_CACHE if k.split("(")[0] == spec.name]:
        del _PROPERTIES_CACHE[key]


def _entry(
    name: str,
    fn: Callable[..., Tensor],
    *,
    torch_class: str | None = None,
    module: Callable[..., nn.Module] | None = None,
    aliases: tuple[str, ...] = (),
    keras_name: str | None = None,
    params: dict | None = None,
    presets: Mapping[str, dict] | None = None,
    reference: str = "",
    **fields: Any,
) -> ActivationSpec:
    if module is None:
        module = _torch_module(torch_class) if torch_class else _wrapped(name, fn)
    if not reference and torch_class:
        reference = _TORCH_DOCS.format(torch_class)
    param_aliases = fields.pop("param_aliases", {})
    if "dim" in (params or {}):
        param_aliases = {"axis": "dim", **param_aliases}
    spec = ActivationSpec(
        name=name,
        fn=fn,
        module=module,
        aliases=aliases,
        torch_class=torch_class,
        keras_name=keras_name,
        params=dict(params or {}),
        reference=reference,
        param_aliases=param_aliases,
        **fields,
    )
    return _add(spec, presets)


def _check_gelu(params: dict) -> str | None:
    if params["approximate"] not in ("none", "tanh"):
        return f"gelu approximate must be 'none' or 'tanh', not {params['approximate']!r}"
    return None


def _check_rrelu(params: dict) -> str | None:
    if not params["lower"] <= params["upper"]:
        return f"rrelu needs lower <= upper, got lower={params['lower']}, upper={params['upper']}"
    return None


def _positive(*names: str) -> Callable[[dict], str | None]:
    def check(params: dict) -> str | None:
        for name in names:
            if not params[name] > 0:
                return f"{name} must be > 0, got {params[name]}"
        return None

    return check


def _build_catalog() -> None:
    # --- rectifiers ---------------------------------------------------------------------
    _entry(
        "relu",
        F.relu,
        torch_class="ReLU",
        keras_name="relu",
        inplace=True,
        formula="max(0, x)",
        reference="Nair & Hinton 2010, 'Rectified Linear Units Improve Restricted Boltzmann Machines'",
        keras_differences=(
            "keras.activations.relu also takes negative_slope, max_value and threshold (defaults give plain ReLU)",
        ),
    )
    _entry(
        "relu6",
        F.relu6,
        torch_class="ReLU6",
        keras_name="relu6",
        inplace=True,
        formula="min(max(0, x), 6)",
        reference="Krizhevsky 2010, 'Convolutional Deep Belief Networks on CIFAR-10'",
    )
    _entry(
        "leaky_relu",
        F.leaky_relu,
        torch_class="LeakyReLU",
        keras_name="leaky_relu",
        inplace=True,
        aliases=("lrelu",),
        params={"negative_slope": 0.01},
        formula="x if x >= 0 else negative_slope * x",
        reference="Maas et al. 2013, 'Rectifier Nonlinearities Improve Neural Network Acoustic Models'",
        keras_defaults={"negative_slope": 0.2},
        keras_differences=(
            "negative_slope: 0.01 in torch.nn.LeakyReLU, 0.2 in keras.activations.leaky_relu, "
            "0.3 in keras.layers.LeakyReLU",
        ),
    )
    _entry(
        "prelu",
        _prelu,
        torch_class="PReLU",
        learnable=True,
        params={"num_parameters": 1, "init": 0.25},
        formula="x if x >= 0 else a * x, a learnable (one per channel or shared)",
        reference="He et al. 2015, 'Delving Deep into Rectifiers', arXiv:1502.01852",
        keras_defaults={"init": 0.0},
        keras_differences=(
            "initial slope: 0.25 in torch.nn.PReLU, zeros in keras.layers.PReLU "
            "(alpha_initializer='zeros'); Keras has one slope per unit unless shared_axes",
        ),
        check=_positive("num_parameters"),
    )
    _entry(
        "rrelu",
        _rrelu,
        torch_class="RReLU",
        inplace=True,
        params={"lower": 1 / 8, "upper": 1 / 3},
        formula="x if x >= 0 else a * x; a ~ U(lower, upper) in training, (lower + upper) / 2 in eval",
        reference="Xu et al. 2015, 'Empirical Evaluation of Rectified Activations', arXiv:1505.00853",
        notes=(
            "random in training mode (a fresh slope per element and step); the functional form "
            "and the properties are the deterministic evaluation-mode function",
        ),
        check=_check_rrelu,
    )
    _entry(
        "elu",
        F.elu,
        torch_class="ELU",
        keras_name="elu",
        inplace=True,
        params={"alpha": 1.0},
        formula="x if x > 0 else alpha * (exp(x) - 1)",
        reference="Clevert et al. 2015, 'Fast and Accurate Deep Network Learning by ELUs', arXiv:1511.07289",
    )
    _entry(
        "selu",
        F.selu,
        torch_class="SELU",
        keras_name="selu",
        inplace=True,
        formula="scale * (x if x > 0 else alpha * (exp(x) - 1)), alpha=1.6733, scale=1.0507",
        reference="Klambauer et al. 2017, 'Self-Normalizing Neural Networks', arXiv:1706.02515",
    )
    _entry(
        "celu",
        F.celu,
        torch_class="CELU",
        keras_name="celu",
        inplace=True,
        params={"alpha": 1.0},
        formula="max(0, x) + min(0, alpha * (exp(x / alpha) - 1))",
        reference="Barron 2017, 'Continuously Differentiable Exponential Linear Units', arXiv:1704.07483",
        check=_positive("alpha"),
    )
    # --- smooth gates -------------------------------------------------------------------
    _entry(
        "gelu",
        F.gelu,
        torch_class="GELU",
        keras_name="gelu",
        params={"approximate": "none"},
        formula="x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2)))",
        reference="Hendrycks & Gimpel 2016, 'Gaussian Error Linear Units', arXiv:1606.08415",
        keras_differences=(
            "keras.ops.gelu uses the tanh approximation by default (approximate=True); "
            "keras.activations.gelu and activation='gelu' are exact (approximate=False), as torch",
        ),
        check=_check_gelu,
    )
    _entry(
        "gelu_tanh",
        lambda x: F.gelu(x, approximate="tanh"),
        torch_class="GELU",
        module=_torch_module("GELU", approximate="tanh"),
        aliases=("gelu_approximate", "approximate_gelu"),
        formula="x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))",
        reference="Hendrycks & Gimpel 2016, arXiv:1606.08415; torch.nn.GELU(approximate='tanh')",
        keras_differences=(
            "Keras spells it keras.activations.gelu(x, approximate=True), the default of keras.ops.gelu",
        ),
    )
    _entry(
        "silu",
        F.silu,
        torch_class="SiLU",
        keras_name="silu",
        inplace=True,
        aliases=("swish",),
        formula="x * sigmoid(x)",
        reference="Elfwing et al. 2017, arXiv:1702.03118; Ramachandran et al. 2017, arXiv:1710.05941",
    )
    _entry(
        "swish_beta",
        swish_beta,
        module=lambda beta=1.0: SwishBeta(beta),
        learnable=True,
        aliases=("swish_learnable",),
        params={"beta": 1.0},
        formula="x * sigmoid(beta * x), beta learnable (initial value given)",
        reference="Ramachandran et al. 2017, 'Searching for Activation Functions', arXiv:1710.05941",
    )
    _entry(
        "mish",
        F.mish,
        torch_class="Mish",
        keras_name="mish",
        inplace=True,
        formula="x * tanh(softplus(x))",
        reference="Misra 2019, 'Mish: A Self Regularized Non-Monotonic Activation', arXiv:1908.08681",
    )
    _entry(
        "hard_swish",
        F.hardswish,
        torch_class="Hardswish",
        keras_name="hard_silu",
        inplace=True,
        aliases=("hard_swish", "hardswish"),
        formula="x * relu6(x + 3) / 6",
        reference="Howard et al. 2019, 'Searching for MobileNetV3', arXiv:1905.02244",
    )
    # --- sigmoids -----------------------------------------------------------------------
    _entry(
        "sigmoid",
        torch.sigmoid,
        torch_class="Sigmoid",
        keras_name="sigmoid",
        aliases=("logistic",),
        formula="1 / (1 + exp(-x))",
        reference="https://pytorch.org/docs/stable/generated/torch.nn.Sigmoid.html",
    )
    _entry(
        "hard_sigmoid",
        F.hardsigmoid,
        torch_class="Hardsigmoid",
        keras_name="hard_sigmoid",
        inplace=True,
        formula="relu6(x + 3) / 6",
        reference="Courbariaux et al. 2015, 'BinaryConnect', arXiv:1511.00363; Howard et al. 2019",
        keras_differences=(
            "Keras 3 is relu6(x + 3) / 6 as torch; Keras 2 was clip(0.2 * x + 0.5, 0, 1)",
        ),
    )
    _entry(
        "log_sigmoid",
        F.logsigmoid,
        torch_class="LogSigmoid",
        keras_name="log_sigmoid",
        formula="log(1 / (1 + exp(-x))) = -softplus(-x)",
    )
    _entry(
        "tanh",
        torch.tanh,
        torch_class="Tanh",
        keras_name="tanh",
        formula="(exp(x) - exp(-x)) / (exp(x) + exp(-x))",
        reference="LeCun et al. 1998, 'Efficient BackProp'",
    )
    _entry(
        "hard_tanh",
        F.hardtanh,
        torch_class="Hardtanh",
        keras_name="hard_tanh",
        inplace=True,
        params={"min_val": -1.0, "max_val": 1.0},
        formula="clip(x, min_val, max_val)",
        reference="Collobert 2004, 'Large Scale Machine Learning' (PhD thesis)",
        check=lambda p: (
            None if p["min_val"] < p["max_val"] else "hard_tanh needs min_val < max_val"
        ),
    )
    _entry(
        "softsign",
        F.softsign,
        torch_class="Softsign",
        keras_name="softsign",
        formula="x / (1 + |x|)",
        reference="Bergstra et al. 2009, 'Quadratic Polynomials Learn Better Image Features'",
    )
    _entry(
        "softplus",
        F.softplus,
        torch_class="Softplus",
        keras_name="softplus",
        params={"beta": 1.0, "threshold": 20.0},
        formula="log(1 + exp(beta * x)) / beta; x when beta * x > threshold",
        reference="Dugas et al. 2001, 'Incorporating Second-Order Functional Knowledge'",
        keras_differences=("Keras softplus has no beta or threshold (beta=1)",),
        check=_positive("beta"),
    )
    # --- shrinkage and thresholds -------------------------------------------------------
    _entry(
        "hard_shrink",
        F.hardshrink,
        torch_class="Hardshrink",
        keras_name="hard_shrink",
        params={"lambd": 0.5},
        param_aliases={"threshold": "lambd"},
        formula="x if |x| > lambd else 0",
        keras_differences=("Keras names the parameter threshold (default 0.5)",),
        check=lambda p: None if p["lambd"] >= 0 else "hard_shrink needs lambd >= 0",
    )
    _entry(
        "soft_shrink",
        F.softshrink,
        torch_class="Softshrink",
        keras_name="soft_shrink",
        params={"lambd": 0.5},
        param_aliases={"threshold": "lambd"},
        formula="x - lambd if x > lambd; x + lambd if x < -lambd; 0 otherwise",
        keras_differences=("Keras names the parameter threshold (default 0.5)",),
        check=lambda p: None if p["lambd"] >= 0 else "soft_shrink needs lambd >= 0",
    )
    _entry(
        "tanh_shrink",
        F.tanhshrink,
        torch_class="Tanhshrink",
        keras_name="tanh_shrink",
        formula="x - tanh(x)",
    )
    _entry(
        "threshold",
        F.threshold,
        torch_class="Threshold",
        keras_name="threshold",
        inplace=True,
        params={"threshold": REQUIRED, "value": REQUIRED},
        param_aliases={"default_value": "value"},
        formula="x if x > threshold else value",
        keras_differences=("Keras names the replacement default_value; both need it given",),
    )
    # --- Keras-only elementwise functions -------------------------------------------------
    _entry(
        "exponential",
        exponential,
        keras_name="exponential",
        aliases=("exp",),
        formula="exp(x)",
        reference=_KERAS_DOCS,
    )
    _entry(
        "linear",
        linear,
        torch_class="Identity",
        keras_name="linear",
        aliases=("identity", "none"),
        formula="x",
        reference=_KERAS_DOCS,
        module=lambda: nn.Identity(),
    )
    _entry(
        "sparse_plus",
        sparse_plus,
        keras_name="sparse_plus",
        formula="0 if x <= -1; (x + 1)^2 / 4 if -1 < x < 1; x if x >= 1",
        reference="Blondel et al. 2020, 'Learning with Fenchel-Young Losses', arXiv:1901.02324",
    )
    _entry(
        "sparse_sigmoid",
        sparse_sigmoid,
        keras_name="sparse_sigmoid",
        formula="0 if x <= -1; (x + 1) / 2 if -1 < x < 1; 1 if x >= 1",
        reference="Blondel et al. 2020, arXiv:1901.02324",
    )
    _entry(
        "squareplus",
        squareplus,
        keras_name="squareplus",
        params={"b": 4.0},
        formula="(x + sqrt(x^2 + b)) / 2",
        reference="Barron 2021, 'Squareplus: A Softplus-Like Algebraic Rectifier', arXiv:2112.11687",
        check=lambda p: None if p["b"] >= 0 else f"squareplus needs b >= 0, got {p['b']}",
    )
    # --- functions that mix units along a dim -------------------------------------------
    _entry(
        "glu",
        F.glu,
        torch_class="GLU",
        keras_name="glu",
        elementwise=False,
        params={"dim": -1},
        formula="a * sigmoid(b), where x = [a, b] is split in halves along dim",
        reference="Dauphin et al. 2016, 'Language Modeling with Gated Convolutional Networks', arXiv:1612.08083",
        keras_differences=("Keras calls dim axis (default -1, as torch)",),
    )
    for name, fn, cls, keras, formula in (
        ("softmax", F.softmax, "Softmax", "softmax", "exp(x_i) / sum_j exp(x_j) along dim"),
        ("softmin", F.softmin, "Softmin", None, "exp(-x_i) / sum_j exp(-x_j) along dim"),
        (
            "log_softmax",
            F.log_softmax,
            "LogSoftmax",
            "log_softmax",
            "x_i - log(sum_j exp(x_j)) along dim",
        ),
    ):
        _entry(
            name,
            fn,
            torch_class=cls,
            keras_name=keras,
            elementwise=False,
            needs_dim=True,
            params={"dim": None},
            formula=formula,
            presets={"Softmax2d": {"dim": -3}} if name == "softmax" else None,
            keras_defaults={"dim": -1} if keras else {},
            keras_differences=(
                (
                    f"Keras {keras} takes axis=-1 by default; PyTorch needs dim (no implicit dim here)",
                )
                if keras
                else ()
            ),
        )
    _entry(
        "sparsemax",
        sparsemax,
        keras_name="sparsemax",
        elementwise=False,
        needs_dim=True,
        params={"dim": None},
        formula="max(x - tau, 0), tau such that the outputs sum to 1 along dim",
        reference="Martins & Astudillo 2016, 'From Softmax to Sparsemax', arXiv:1602.02068",
        keras_defaults={"dim": -1},
        keras_differences=(
            "Keras sparsemax takes axis=-1 by default; here dim must be given",
            "Keras 3.15 computes tau from the sum of the cumulative sums over the support, so "
            "its outputs do not sum to 1 when two or more units are in the support; actlab "
            "follows the paper",
        ),
    )


# === resolving specs ====================================================================


def _unknown(name: str) -> UnknownActivationError:
    pool: dict[str, str] = {}
    for spec in _REGISTRY.values():
        for alias in (spec.name, *spec.aliases, spec.keras_name, spec.torch_class):
            if alias:
                pool.setdefault(alias.lower(), spec.name)
    word = name.lower()
    scored = []
    for alias, canonical in pool.items():
        score = difflib.SequenceMatcher(None, word, alias).ratio()
        if score >= 0.6:
            # Ties go to names with the same first letter and length, then alphabetical.
            tie = (alias[:1] != word[:1], abs(len(alias) - len(word)), canonical)
            scored.append((-round(score, 6), *tie))
    suggestions: list[str] = []
    for *_, canonical in sorted(scored):
        if canonical not in suggestions:
            suggestions.append(canonical)
    hint = f"did you mean {', '.join(suggestions[:3])}?" if suggestions else "see `actlab list`"
    return UnknownActivationError(f"unknown activation {name!r}; {hint}")


def _lookup(name: str) -> tuple[ActivationSpec, dict]:
    found = _LOOKUP.get(_key(name))
    if found is None:
        raise _unknown(name)
    canonical, preset = found
    return _REGISTRY[canonical], dict(preset)


def _parse_spec_string(text: str) -> tuple[str, dict]:
    """``"leaky_relu(negative_slope=0.2)"`` -> ``("leaky_relu", {"negative_slope": 0.2})``.
    Parsed with ast; values must be literals (numbers, strings, booleans, None)."""
    if "(" not in text:
        return text.strip(), {}
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise SpecError(
            f"bad activation spec {text!r}; write name(param=value, ...), e.g. 'leaky_relu(negative_slope=0.2)'"
        ) from None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name)):
        raise SpecError(
            f"bad activation spec {text!r}; write name(param=value, ...), e.g. 'leaky_relu(negative_slope=0.2)'"
        )
    name = tree.func.id
    spec, _ = _lookup(name)
    values: dict = {}
    positional = [k for k in spec.params]
    if len(tree.args) > len(positional):
        raise SpecError(
            f"{spec.name} takes at most {len(positional)} parameter(s), got {len(tree.args)} in {text!r}"
        )
    pairs = list(zip(positional[: len(tree.args)], tree.args, strict=True)) + [
        (kw.arg, kw.value) for kw in tree.keywords
    ]
    for key, node in pairs:
        if key is None:
            raise SpecError(f"bad activation spec {text!r}: ** is not allowed; name each parameter")
        try:
            value = ast.literal_eval(node)
        except ValueError:
            raise SpecError(
                f"bad value {ast.unparse(node)!r} for {key!r} in {text!r}: use a number, a quoted "
                f"string, True/False or None, e.g. {_example_with(spec, key)!r}"
            ) from None
        if key in values:
            raise SpecError(f"parameter {key!r} given twice in {text!r}")
        values[key] = value
    return name, values


def _example_with(spec: ActivationSpec, key: str) -> str:
    default = spec.params.get(key)
    if (
        isinstance(default, (int, float))
        and not isinstance(default, bool)
        and default is not REQUIRED
    ):
        return _label(spec.name, {key: default * 2 if default else 0.1})
    return spec.example


def _coerce(spec: ActivationSpec, key: str, value: Any, source: str) -> Any:
    default = spec.params[key]
    bad = None
    if key == "dim":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            bad = "an integer"
    elif default is REQUIRED or (isinstance(default, float) and not isinstance(default, bool)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad = "a number"
        elif not math.isfinite(value):
            bad = "a finite number"
        else:
            value = float(value)
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            bad = "True or False"
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            bad = "an integer"
    elif isinstance(default, str) and not isinstance(value, str):
        bad = "a string"
    if bad:
        raise SpecError(
            f"bad value {value!r} for {key!r} in {source!r}: expected {bad}, e.g. {_example_with(spec, key)!r}"
        )
    return value


def resolve(
    spec: Any, *, keras_defaults: bool = False, **params: Any
) -> tuple[ActivationSpec, dict]:
    """The catalog entry for ``spec`` and its full parameters (defaults filled in).

    Precedence: PyTorch defaults < Keras defaults (when ``keras_defaults``) < parameters in the
    spec < keyword ``params``. Raises :class:`UnknownActivationError` or :class:`SpecError`.
    """
    source = spec
    if isinstance(spec, ActivationSpec):
        entry, given = spec, {}
    elif isinstance(spec, Mapping):
        given = dict(spec)
        name = given.pop("name", None)
        if not isinstance(name, str):
            raise SpecError(
                f"activation dict {dict(spec)!r} needs a 'name' key, e.g. {{'name': 'relu'}}"
            )
        entry, given = _resolve_text(name, given)
    elif isinstance(spec, str):
        entry, given = _resolve_text(spec, {})
    else:
        raise SpecError(
            f"cannot use {spec!r} as an activation; give a name, 'name(param=value)', a dict, "
            "'expr:...', a callable or an nn.Module"
        )
    given.update(params)
    resolved = {} if keras_defaults is False else dict(entry.keras_defaults)
    resolved = {**entry.params, **resolved}
    for key, value in given.items():
        key, value = _keras_parameter(entry, key, value, source)
        key = entry.param_aliases.get(key, key)
        if key == "inplace" and entry.inplace:
            if not isinstance(value, bool):
                raise SpecError(
                    f"bad value {value!r} for 'inplace' in {source!r}: expected True or False"
                )
            resolved["inplace"] = value
            continue
        if key not in entry.params:
            known = ", ".join([*entry.params, *(["inplace"] if entry.inplace else [])])
            known = f"its parameters are {known}" if known else "it takes no parameters"
            raise SpecError(f"{entry.name} has no parameter {key!r} (in {source!r}); {known}")
        resolved[key] = _coerce(entry, key, value, str(source))
    missing = [
        k
        for k in entry.params
        if resolved[k] is REQUIRED or (k == "dim" and entry.needs_dim and resolved[k] is None)
    ]
    if missing:
        if entry.needs_dim:
            raise SpecError(f"{entry.name} needs dim, e.g. '{entry.name}(dim=-1)'")
        raise SpecError(f"{entry.name} needs {' and '.join(missing)}, e.g. {entry.example!r}")
    if entry.check is not None:
        problem = entry.check(resolved)
        if problem:
            raise SpecError(f"{problem} (in {source!r})")
    return entry, resolved


def _keras_parameter(entry: ActivationSpec, key: str, value: Any, source: Any) -> tuple[str, Any]:
    """A parameter as a Keras user writes it, translated to PyTorch's name and value, or
    refused with the PyTorch spec to use instead (keras.activations.relu, leaky_relu, gelu;
    Keras 2's LeakyReLU(alpha=...)). Other names pass through unchanged."""
    where = f"(in {source!r})"
    if entry.name == "leaky_relu" and key == "alpha":  # Keras 2 LeakyReLU(alpha=0.3)
        return "negative_slope", value
    if entry.name == "gelu" and key == "approximate" and isinstance(value, bool):
        return key, "tanh" if value else "none"  # Keras' approximate=True is torch's 'tanh'
    if entry.name == "relu" and key in ("max_value", "negative_slope", "threshold"):
        instead = {
            "max_value": "'relu6'" if value == 6 else f"'hardtanh(min_val=0, max_val={value})'",
            "negative_slope": f"'leaky_relu(negative_slope={value})'",
            "threshold": f"'threshold(threshold={value}, value=0)'",
        }[key]
        raise SpecError(
            f"relu has no parameter {key!r} {where}; Keras' relu({key}={value}) is {instead} here"
        )
    if entry.name == "silu" and key == "beta":
        raise SpecError(
            f"silu has no parameter 'beta' {where}; x * sigmoid(beta * x) is "
            f"'expr:x * sigmoid({value} * x)' here, or 'swish_beta' with a learnable beta"
        )
    return key, value


def _resolve_text(text: str, given: dict) -> tuple[ActivationSpec, dict]:
    bad = control_characters(text)
    if bad:
        raise SpecError(
            f"activation spec {text!r} contains control characters ({', '.join(bad)}); "
            "write it on one line without them"
        )
    text = text.strip()
    if text.startswith("expr:"):
        if given:
            raise SpecError(
                f"expressions take no parameters; put numbers in the formula ({text!r})"
            )
        return _expression_entry(text[len("expr:") :].strip()), {}
    name, values = _parse_spec_string(text)
    entry, preset = _lookup(name)
    return entry, {**preset, **values, **given}


_EXPRESSIONS: dict[str, ActivationSpec] = {}


def _expression_entry(formula: str) -> ActivationSpec:
    if formula not in _EXPRESSIONS:
        function = parse_expression(formula)
        name = f"expr:{formula}"
        _EXPRESSIONS[formula] = ActivationSpec(
            name=name,
            fn=lambda x, _f=function: _f(x),
            module=lambda _n=name, _f=function: Activation(_n, lambda x: _f(x)),
            formula=formula,
            reference="user expression (actlab.catalog.expr)",
        )
    return _EXPRESSIONS[formula]


# === the public lookup API ==============================================================


def get(spec: Any, *, keras_defaults: bool = False, **params: Any) -> nn.Module:
    """A fresh ``nn.Module`` for ``spec``; learnable entries get their own parameters.

    A module passes through unchanged; an ``nn.Module`` class is instantiated with
    ``params``; a plain callable is wrapped in a module.
    """
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        return spec(**params)
    if callable(spec) and not isinstance(spec, (str, Mapping, ActivationSpec)):
        return Activation(getattr(spec, "__name__", "callable"), lambda x, _f=spec: _f(x))
    entry, resolved = resolve(spec, keras_defaults=keras_defaults, **params)
    try:
        return entry.module(**resolved)
    except (TypeError, ValueError, RuntimeError) as error:
        raise SpecError(
            f"cannot build {canonical_label(spec)}: {str(error).splitlines()[0]}"
        ) from None


def get_fn(spec: Any, *, keras_defaults: bool = False, **params: Any) -> Callable[[Tensor], Tensor]:
    """A function ``Tensor -> Tensor`` for ``spec``. Learnable entries give the function at
    their initial parameters; RReLU gives its deterministic evaluation-mode form."""
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        return spec(**params)
    if callable(spec) and not isinstance(spec, (str, Mapping, ActivationSpec, type)):
        return spec
    entry, resolved = resolve(spec, keras_defaults=keras_defaults, **params)
    resolved.pop("inplace", None)
    fn = entry.fn

    def activation(x: Tensor) -> Tensor:
        return fn(x, **resolved)

    activation.__name__ = entry.name
    activation.__doc__ = f"{_label(entry.name, resolved)}: {entry.formula}"
    return activation


def register(
    name: str,
    fn: Callable[..., Tensor] | None = None,
    *,
    module: Callable[..., nn.Module] | None = None,
    aliases: tuple[str, ...] = (),
    formula: str = "",
    reference: str = "",
    params: dict | None = None,
    learnable: bool = False,
    overwrite: bool = False,
    elementwise: bool = True,
) -> ActivationSpec:
    """Add a user activation. ``fn(x, **params)`` is its functional form; ``module(**params)``
    builds its module (default: ``fn`` wrapped). A duplicate name is refused unless
    ``overwrite``. ``elementwise=False``: the function mixes units (a gated unit halves the
    last dim), so the elementwise-only layers refuse it."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise SpecError(f"activation name {name!r} must be snake_case, e.g. 'my_relu'")
    if fn is None and module is None:
        raise SpecError(f"register({name!r}) needs fn or module")
    if name in _REGISTRY and not overwrite:
        raise SpecError(
            f"activation {name!r} is already registered; pass overwrite=True to replace it"
        )
    if fn is None:
        fn = lambda x, _m=module, **p: _m(**p)(x)  # noqa: E731
    if module is None:
        module = _wrapped(name, fn)
    spec = ActivationSpec(
        name=name,
        fn=fn,
        module=module,
        aliases=tuple(aliases),
        params=dict(params or {}),
        learnable=learnable,
        elementwise=elementwise,
        formula=formula,
        reference=reference,
    )
    if overwrite and name in _REGISTRY:
        unregister(name)
    return _add(spec)


def list_activations() -> list[ActivationSpec]:
    """Every catalog entry, in catalog order."""
    return list(_REGISTRY.values())


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(round(value, 10))
    return repr(value)


def _label(name: str, params: Mapping[str, Any]) -> str:
    if not params:
        return name
    return f"{name}({', '.join(f'{k}={_format_value(v)}' for k, v in params.items())})"


def canonical_label(spec: Any, **params: Any) -> str:
    """A short stable label: the canonical name plus the parameters that differ from the
    PyTorch defaults, e.g. ``leaky_relu(negative_slope=0.2)``; ``expr:<formula>``."""
    if callable(spec) and not isinstance(spec, (str, Mapping, ActivationSpec)):
        return getattr(spec, "__name__", type(spec).__name__)
    entry, resolved = resolve(spec, **params)
    changed = {
        k: v
        for k, v in resolved.items()
        if (
            v is not False
            if k not in entry.params
            else entry.params[k] is REQUIRED or entry.params[k] != v
        )
    }  # inplace=False is the default of every module that has it
    if entry.needs_dim:
        changed["dim"] = resolved["dim"]
    return _label(entry.name, changed)


# === properties, measured ===============================================================

# Smoothness is judged on a grid shifted off the round numbers where kinks sit (0, +-1, 6);
# range and slopes also use the round grid, which hits extremes such as hard_swish(-1.5).
_GRID = np.linspace(-20.0, 20.0, 40001) + 0.000371
_ROUND_GRID = np.linspace(-20.0, 20.0, 4001)
_PROBES = np.array([-1e12, -1e6, -1e4, -1e3, -1e2, 1e2, 1e3, 1e4, 1e6, 1e12])


def scalar_view(spec: Any, **params: Any) -> Callable[[Tensor], Tensor]:
    """A function of one variable for any entry. Elementwise entries are themselves; entries
    that mix units are read on a two-unit input: softmax-like ones as unit 0 of [x, 0]
    (softmax -> sigmoid(x)), GLU as [x, x] (-> x * sigmoid(x))."""
    fn = get_fn(spec, **params)
    if not callable(spec) or isinstance(spec, (str, Mapping, ActivationSpec)):
        entry, resolved = resolve(spec, **params)
        if not entry.elementwise:
            if entry.name == "glu":
                return lambda x: entry.fn(torch.stack([x, x], -1), dim=-1)[..., 0]
            extra = {k: v for k, v in resolved.items() if k != "dim"}
            return lambda x: entry.fn(torch.stack([x, torch.zeros_like(x)], -1), dim=-1, **extra)[
                ..., 0
            ]
    return fn


def _value_and_slope(
    fn: Callable[[Tensor], Tensor], xs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    x = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        y = fn(x)
        (slope,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
    if slope is None:
        slope = torch.zeros_like(x)
    return y.detach().numpy(), slope.numpy()


def _spikes(values: np.ndarray, scale: float) -> bool:
    """True when some step between neighbours jumps out of line with the steps beside it:
    a jump in a sampled function that does not shrink with the grid."""
    steps = np.abs(np.diff(values))
    steps = np.where(np.isfinite(steps), steps, 0.0)
    if steps.size < 3:
        return False
    inner = steps[1:-1]
    around = np.maximum(steps[:-2], steps[2:])
    return bool(np.any((inner > 1e-6 * (1.0 + scale)) & (inner > 10.0 * around)))


@np.errstate(all="ignore")  # extreme parameters overflow the probes: measured, not warned
def properties(spec: Any, **params: Any) -> dict:
    """Properties measured numerically from the function, in float64 (cached per label).

    On a grid of step 1e-3 over [-20, 20] plus probes at |x| = 1e2..1e6, with f' by autograd:

    - ``range``: (lo, hi) over the grids and probes up to |x| = 1e12; +-inf when f still
      grows by more than 1 from |x| = 1e4 to 1e6;
    - ``monotonic``: f never decreases (or never increases) on the grid and probes;
    - ``zero_centred``: f(0) == 0 and f takes both signs;
    - ``saturating_left`` / ``saturating_right``: |f'(-+1e6)| < 1e-5;
    - ``continuous`` / ``smooth``: no jump in f / in f' (a step between neighbouring grid
      points that is 10x the steps beside it);
    - ``max_slope``: max |f'|; ``f0``, ``df0``: f(0) and the autograd f'(0).
    Entries that mix units are measured on :func:`scalar_view`.
    """
    cacheable = isinstance(spec, (str, Mapping)) and not callable(spec)
    label = canonical_label(spec, **params) if cacheable else None
    if label is not None and label in _PROPERTIES_CACHE:
        return dict(_PROPERTIES_CACHE[label])
    fn = scalar_view(spec, **params)
    y, dy = _value_and_slope(fn, _GRID)
    ry, _ = _value_and_slope(fn, _ROUND_GRID)
    py, pdy = _value_and_slope(fn, _PROBES)
    (f0,), (df0,) = _value_and_slope(fn, np.array([0.0]))
    every = np.concatenate([py[:5], y, py[5:]])  # in x order
    finite = np.concatenate([every, ry])
    finite = finite[np.isfinite(finite)]
    lo = float(finite.min()) if finite.size else math.nan
    hi = float(finite.max()) if finite.size else math.nan
    for near, far in ((py[2], py[1]), (py[7], py[8])):  # f(+-1e4), f(+-1e6)
        if far == math.inf or (np.isfinite(far) and far > near + 1):
            hi = math.inf
        if far == -math.inf or (np.isfinite(far) and far < near - 1):
            lo = -math.inf
    ordered = every[np.isfinite(every)]
    steps = np.diff(ordered)
    tol = 1e-12 * (1.0 + np.abs(ordered[1:]) + np.abs(ordered[:-1]))  # rounding, not a trend
    monotonic = bool(np.all(steps >= -tol) or np.all(steps <= tol))
    # Not the round grid: there autograd sits on kinks, where its value is a convention.
    slopes = np.concatenate([dy, pdy[1:-1], [df0]])
    finite_slopes = np.abs(slopes[np.isfinite(slopes)])
    max_slope = float(finite_slopes.max()) if finite_slopes.size else math.nan
    if not np.all(np.isfinite(slopes)):
        max_slope = math.inf
    scale = float(np.nanmax(np.abs(y[np.isfinite(y)]))) if np.isfinite(y).any() else 0.0
    continuous = not _spikes(y, scale)
    result = {
        "range": (_tidy(lo), _tidy(hi)),
        "monotonic": monotonic,
        "zero_centred": bool(abs(f0) < 1e-9 and lo < 0 < hi),
        "saturating_left": bool(np.isfinite(pdy[1]) and abs(pdy[1]) < 1e-5),
        "saturating_right": bool(np.isfinite(pdy[-2]) and abs(pdy[-2]) < 1e-5),
        "continuous": continuous,
        "smooth": continuous and not _spikes(dy, max_slope if math.isfinite(max_slope) else 1.0),
        "max_slope": _tidy(max_slope),
        "f0": _tidy(float(f0)),
        "df0": _tidy(float(df0)),
    }
    if label is not None:
        _PROPERTIES_CACHE[label] = result
    return dict(result)


def _tidy(value: float) -> float:
    """Round away grid noise (1e-9) so that tables and tests see stable numbers."""
    if not math.isfinite(value):
        return value
    return float(round(value, 9)) + 0.0  # + 0.0 turns -0.0 into 0.0


_build_catalog()


# === text for `actlab list` and `actlab show` ===========================================


def _number(value: float) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def _params_text(params: Mapping[str, Any]) -> str:
    def text(value: Any) -> str:
        if value is REQUIRED or value is None:
            return "?"
        return f"{value:.6g}" if isinstance(value, float) else repr(value)

    shown = [f"{k}={text(v)}" for k, v in params.items()]
    return ", ".join(shown) or "-"


def _saturation_text(props: Mapping[str, Any]) -> str:
    sides = [
        side
        for side, key in (("left", "saturating_left"), ("right", "saturating_right"))
        if props[key]
    ]
    return "+".join(sides) or "no"


def format_table(specs: list[ActivationSpec] | None = None) -> str:
    """The `actlab list` table: one fixed-width row per entry (properties at the defaults;
    entries that need a parameter are measured at their example)."""
    header = (
        "name",
        "aliases",
        "keras",
        "parameters",
        "range",
        "monotonic",
        "zero-centred",
        "saturating",
    )
    rows = [header]
    for spec in specs if specs is not None else list_activations():
        props = properties(spec.example)
        aliases = [a for a in (spec.torch_class, *spec.aliases) if a and a != spec.name]
        rows.append(
            (
                spec.name,
                ", ".join(dict.fromkeys(aliases)) or "-",
                spec.keras_name or "-",
                _params_text(spec.params),
                f"{_number(props['range'][0])} .. {_number(props['range'][1])}",
                "yes" if props["monotonic"] else "no",
                "yes" if props["zero_centred"] else "no",
                _saturation_text(props),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def describe(spec: Any) -> str:
    """The `actlab show` text: formula, reference, names, defaults, Keras differences,
    measured properties, f(0) and f'(0)."""
    note = None
    try:
        entry, params = resolve(spec)
        label = canonical_label(spec)
    except SpecError:
        # A bare name that needs a parameter (softmax needs dim): show it at its example.
        if not (isinstance(spec, str) and "(" not in spec and not spec.startswith("expr:")):
            raise
        entry, _ = _lookup(spec)
        if not entry.required:
            raise
        label = entry.example
        params = resolve(label)[1]
        note = (
            f"needs {', '.join(entry.required)} everywhere (get, get_fn, plot, --activations): "
            f"give e.g. {label}; shown here at that value"
        )
    props = properties(label)
    yes = {True: "yes", False: "no"}
    lines = [label, ""]
    if note:
        lines += [f"  note:             {note}"]
    lines += [f"  formula:          {entry.formula}", f"  reference:        {entry.reference}"]
    if entry.torch_class:
        lines.append(f"  PyTorch:          torch.nn.{entry.torch_class}")
    if entry.keras_name:
        lines.append(f"  Keras:            keras.activations.{entry.keras_name}")
    if entry.aliases:
        lines.append(f"  aliases:          {', '.join(entry.aliases)}")
    if entry.params:
        lines.append(f"  parameters:       {_params_text(params)}")
        lines.append(f"  PyTorch defaults: {_params_text(entry.params)}")
    if entry.keras_defaults:
        lines.append(
            f"  Keras defaults:   {_params_text(entry.keras_defaults)}  (get(..., keras_defaults=True))"
        )
    lines.append(
        f"  learnable: {yes[entry.learnable]}   inplace: {yes[entry.inplace]}   "
        f"elementwise: {yes[entry.elementwise]}"
    )
    for text in entry.notes:
        lines.append(f"  note:             {text}")
    lines += ["", "  properties (measured numerically, float64):"]
    if not entry.elementwise:
        view = "[x, x]" if entry.name == "glu" else "[x, 0]"
        lines.append(f"    (mixes units along dim: measured on unit 0 of {view})")
    lines += [
        f"    range:          [{_number(props['range'][0])}, {_number(props['range'][1])}]",
        f"    monotonic:      {yes[props['monotonic']]}",
        f"    zero-centred:   {yes[props['zero_centred']]}",
        f"    saturating:     {_saturation_text(props)}",
        f"    continuous:     {yes[props['continuous']]}",
        f"    smooth (C1):    {yes[props['smooth']]}",
        f"    max |f'|:       {_number(props['max_slope'])}",
        f"    f(0) = {_number(props['f0'])}    f'(0) = {_number(props['df0'])}  (autograd; at a kink, PyTorch's convention)",
        "",
        "  Keras 3 vs PyTorch:",
    ]
    if entry.keras_differences:
        lines += [f"    - {text}" for text in entry.keras_differences]
    elif entry.keras_name:
        lines.append("    - same formula and defaults")
    else:
        lines.append("    - not in keras.activations")
    lines += ["  for every model ported from Keras:"]
    lines += [f"    - {text}" for text in KERAS_NOTES]
    return "\n".join(lines)
