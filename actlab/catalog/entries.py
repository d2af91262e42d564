"""The catalog's entries, as data: one :class:`ActivationSpec` per activation, in catalog
order (`actlab list` shows them in this order).

To add an activation, add one ``entry(...)`` to :data:`ENTRIES`: its canonical snake_case
name, its functional form ``fn(x, **params)`` (torch's, or one in
:mod:`actlab.catalog.functions`), the PyTorch class when there is one (the module is then
``torch.nn.<class>``, else ``fn`` wrapped), the Keras name, the parameters with PyTorch's
defaults, the formula and a reference. Properties are measured, never typed here
(:mod:`actlab.catalog.properties`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actlab.catalog.activation import REQUIRED, ActivationSpec, wrapped
from actlab.catalog.functions import (
    SwishBeta,
    exponential,
    linear,
    prelu,
    rrelu,
    sparse_plus,
    sparse_sigmoid,
    sparsemax,
    squareplus,
    swish_beta,
)

# Differences between Keras 3 and PyTorch that are not about one activation, but change the
# numbers when a Keras model is ported (shown by `actlab show` for every entry).
KERAS_NOTES: tuple[str, ...] = (
    "Dense init: Keras uses glorot_uniform weights and zero bias; torch.nn.Linear uses "
    "kaiming_uniform(a=sqrt(5)) weights and U(-1/sqrt(fan_in), 1/sqrt(fan_in)) bias",
    "Adam eps: 1e-7 in Keras, 1e-8 in torch.optim.Adam",
)

TORCH_DOCS = "https://pytorch.org/docs/stable/generated/torch.nn.{}.html"
KERAS_DOCS = "https://keras.io/api/layers/activations/"


def torch_module(class_name: str, **fixed: Any) -> Callable[..., nn.Module]:
    """A builder of ``torch.nn.<class_name>(**fixed, **params)``."""

    def build(**params: Any) -> nn.Module:
        return getattr(nn, class_name)(**fixed, **params)

    build.__name__ = class_name
    return build


def entry(
    name: str,
    fn: Callable[..., Tensor],
    *,
    torch_class: str | None = None,
    module: Callable[..., nn.Module] | None = None,
    params: dict | None = None,
    reference: str = "",
    param_aliases: dict | None = None,
    **fields: Any,
) -> ActivationSpec:
    """One entry, with the defaults every entry shares: the module is ``torch.nn.<class>``
    (else ``fn`` wrapped), the reference PyTorch's page of the class, and a ``dim``
    parameter is also spelled ``axis`` (Keras)."""
    if module is None:
        module = torch_module(torch_class) if torch_class else wrapped(name, fn)
    if not reference and torch_class:
        reference = TORCH_DOCS.format(torch_class)
    param_aliases = dict(param_aliases or {})
    if "dim" in (params or {}):
        param_aliases = {"axis": "dim", **param_aliases}
    return ActivationSpec(
        name=name,
        fn=fn,
        module=module,
        torch_class=torch_class,
        params=dict(params or {}),
        reference=reference,
        param_aliases=param_aliases,
        **fields,
    )


def check_gelu(params: dict) -> str | None:
    if params["approximate"] not in ("none", "tanh"):
        return f"gelu approximate must be 'none' or 'tanh', not {params['approximate']!r}"
    return None


def check_rrelu(params: dict) -> str | None:
    if not params["lower"] <= params["upper"]:
        return f"rrelu needs lower <= upper, got lower={params['lower']}, upper={params['upper']}"
    return None


def positive(*names: str) -> Callable[[dict], str | None]:
    """A check that the named parameters are > 0."""

    def check(params: dict) -> str | None:
        for name in names:
            if not params[name] > 0:
                return f"{name} must be > 0, got {params[name]}"
        return None

    return check


ENTRIES: tuple[ActivationSpec, ...] = (
    # --- rectifiers ---------------------------------------------------------------------
    entry(
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
    ),
    entry(
        "relu6",
        F.relu6,
        torch_class="ReLU6",
        keras_name="relu6",
        inplace=True,
        formula="min(max(0, x), 6)",
        reference="Krizhevsky 2010, 'Convolutional Deep Belief Networks on CIFAR-10'",
    ),
    entry(
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
    ),
    entry(
        "prelu",
        prelu,
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
        check=positive("num_parameters"),
    ),
    entry(
        "rrelu",
        rrelu,
        torch_class="RReLU",
        inplace=True,
        params={"lower": 1 / 8, "upper": 1 / 3},
        formula="x if x >= 0 else a * x; a ~ U(lower, upper) in training, (lower + upper) / 2 in eval",
        reference="Xu et al. 2015, 'Empirical Evaluation of Rectified Activations', arXiv:1505.00853",
        notes=(
            "random in training mode (a fresh slope per element and step); the functional form "
            "and the properties are the deterministic evaluation-mode function",
        ),
        check=check_rrelu,
    ),
    entry(
        "elu",
        F.elu,
        torch_class="ELU",
        keras_name="elu",
        inplace=True,
        params={"alpha": 1.0},
        formula="x if x > 0 else alpha * (exp(x) - 1)",
        reference="Clevert et al. 2015, 'Fast and Accurate Deep Network Learning by ELUs', arXiv:1511.07289",
    ),
    entry(
        "selu",
        F.selu,
        torch_class="SELU",
        keras_name="selu",
        inplace=True,
        formula="scale * (x if x > 0 else alpha * (exp(x) - 1)), alpha=1.6733, scale=1.0507",
        reference="Klambauer et al. 2017, 'Self-Normalizing Neural Networks', arXiv:1706.02515",
    ),
    entry(
        "celu",
        F.celu,
        torch_class="CELU",
        keras_name="celu",
        inplace=True,
        params={"alpha": 1.0},
        formula="max(0, x) + min(0, alpha * (exp(x / alpha) - 1))",
        reference="Barron 2017, 'Continuously Differentiable Exponential Linear Units', arXiv:1704.07483",
        check=positive("alpha"),
    ),
    # --- smooth gates -------------------------------------------------------------------
    entry(
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
        check=check_gelu,
    ),
    entry(
        "gelu_tanh",
        lambda x: F.gelu(x, approximate="tanh"),
        torch_class="GELU",
        module=torch_module("GELU", approximate="tanh"),
        aliases=("gelu_approximate", "approximate_gelu"),
        formula="x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))",
        reference="Hendrycks & Gimpel 2016, arXiv:1606.08415; torch.nn.GELU(approximate='tanh')",
        keras_differences=(
            "Keras spells it keras.activations.gelu(x, approximate=True), the default of keras.ops.gelu",
        ),
    ),
    entry(
        "silu",
        F.silu,
        torch_class="SiLU",
        keras_name="silu",
        inplace=True,
        aliases=("swish",),
        formula="x * sigmoid(x)",
        reference="Elfwing et al. 2017, arXiv:1702.03118; Ramachandran et al. 2017, arXiv:1710.05941",
    ),
    entry(
        "swish_beta",
        swish_beta,
        module=lambda beta=1.0: SwishBeta(beta),
        learnable=True,
        aliases=("swish_learnable",),
        params={"beta": 1.0},
        formula="x * sigmoid(beta * x), beta learnable (initial value given)",
        reference="Ramachandran et al. 2017, 'Searching for Activation Functions', arXiv:1710.05941",
    ),
    entry(
        "mish",
        F.mish,
        torch_class="Mish",
        keras_name="mish",
        inplace=True,
        formula="x * tanh(softplus(x))",
        reference="Misra 2019, 'Mish: A Self Regularized Non-Monotonic Activation', arXiv:1908.08681",
    ),
    entry(
        "hard_swish",
        F.hardswish,
        torch_class="Hardswish",
        keras_name="hard_silu",
        inplace=True,
        aliases=("hard_swish", "hardswish"),
        formula="x * relu6(x + 3) / 6",
        reference="Howard et al. 2019, 'Searching for MobileNetV3', arXiv:1905.02244",
    ),
    # --- sigmoids -----------------------------------------------------------------------
    entry(
        "sigmoid",
        torch.sigmoid,
        torch_class="Sigmoid",
        keras_name="sigmoid",
        aliases=("logistic",),
        formula="1 / (1 + exp(-x))",
        reference="https://pytorch.org/docs/stable/generated/torch.nn.Sigmoid.html",
    ),
    entry(
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
    ),
    entry(
        "log_sigmoid",
        F.logsigmoid,
        torch_class="LogSigmoid",
        keras_name="log_sigmoid",
        formula="log(1 / (1 + exp(-x))) = -softplus(-x)",
    ),
    entry(
        "tanh",
        torch.tanh,
        torch_class="Tanh",
        keras_name="tanh",
        formula="(exp(x) - exp(-x)) / (exp(x) + exp(-x))",
        reference="LeCun et al. 1998, 'Efficient BackProp'",
    ),
    entry(
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
    ),
    entry(
        "softsign",
        F.softsign,
        torch_class="Softsign",
        keras_name="softsign",
        formula="x / (1 + |x|)",
        reference="Bergstra et al. 2009, 'Quadratic Polynomials Learn Better Image Features'",
    ),
    entry(
        "softplus",
        F.softplus,
        torch_class="Softplus",
        keras_name="softplus",
        params={"beta": 1.0, "threshold": 20.0},
        formula="log(1 + exp(beta * x)) / beta; x when beta * x > threshold",
        reference="Dugas et al. 2001, 'Incorporating Second-Order Functional Knowledge'",
        keras_differences=("Keras softplus has no beta or threshold (beta=1)",),
        check=positive("beta"),
    ),
    # --- shrinkage and thresholds -------------------------------------------------------
    entry(
        "hard_shrink",
        F.hardshrink,
        torch_class="Hardshrink",
        keras_name="hard_shrink",
        params={"lambd": 0.5},
        param_aliases={"threshold": "lambd"},
        formula="x if |x| > lambd else 0",
        keras_differences=("Keras names the parameter threshold (default 0.5)",),
        check=lambda p: None if p["lambd"] >= 0 else "hard_shrink needs lambd >= 0",
    ),
    entry(
        "soft_shrink",
        F.softshrink,
        torch_class="Softshrink",
        keras_name="soft_shrink",
        params={"lambd": 0.5},
        param_aliases={"threshold": "lambd"},
        formula="x - lambd if x > lambd; x + lambd if x < -lambd; 0 otherwise",
        keras_differences=("Keras names the parameter threshold (default 0.5)",),
        check=lambda p: None if p["lambd"] >= 0 else "soft_shrink needs lambd >= 0",
    ),
    entry(
        "tanh_shrink",
        F.tanhshrink,
        torch_class="Tanhshrink",
        keras_name="tanh_shrink",
        formula="x - tanh(x)",
    ),
    entry(
        "threshold",
        F.threshold,
        torch_class="Threshold",
        keras_name="threshold",
        inplace=True,
        params={"threshold": REQUIRED, "value": REQUIRED},
        example_params={"threshold": 0.0, "value": 0.0},
        param_aliases={"default_value": "value"},
        formula="x if x > threshold else value",
        keras_differences=("Keras names the replacement default_value; both need it given",),
    ),
    # --- Keras-only elementwise functions -------------------------------------------------
    entry(
        "exponential",
        exponential,
        keras_name="exponential",
        aliases=("exp",),
        formula="exp(x)",
        reference=KERAS_DOCS,
    ),
    entry(
        "linear",
        linear,
        torch_class="Identity",
        keras_name="linear",
        aliases=("identity", "none"),
        formula="x",
        reference=KERAS_DOCS,
        module=lambda: nn.Identity(),
    ),
    entry(
        "sparse_plus",
        sparse_plus,
        keras_name="sparse_plus",
        formula="0 if x <= -1; (x + 1)^2 / 4 if -1 < x < 1; x if x >= 1",
        reference="Blondel et al. 2020, 'Learning with Fenchel-Young Losses', arXiv:1901.02324",
    ),
    entry(
        "sparse_sigmoid",
        sparse_sigmoid,
        keras_name="sparse_sigmoid",
        formula="0 if x <= -1; (x + 1) / 2 if -1 < x < 1; 1 if x >= 1",
        reference="Blondel et al. 2020, arXiv:1901.02324",
    ),
    entry(
        "squareplus",
        squareplus,
        keras_name="squareplus",
        params={"b": 4.0},
        formula="(x + sqrt(x^2 + b)) / 2",
        reference="Barron 2021, 'Squareplus: A Softplus-Like Algebraic Rectifier', arXiv:2112.11687",
        check=lambda p: None if p["b"] >= 0 else f"squareplus needs b >= 0, got {p['b']}",
    ),
    # --- functions that mix units along a dim -------------------------------------------
    entry(
        "glu",
        F.glu,
        torch_class="GLU",
        keras_name="glu",
        elementwise=False,
        gated=True,
        params={"dim": -1},
        formula="a * sigmoid(b), where x = [a, b] is split in halves along dim",
        reference="Dauphin et al. 2016, 'Language Modeling with Gated Convolutional Networks', arXiv:1612.08083",
        keras_differences=("Keras calls dim axis (default -1, as torch)",),
    ),
    entry(
        "softmax",
        F.softmax,
        torch_class="Softmax",
        keras_name="softmax",
        elementwise=False,
        needs_dim=True,
        params={"dim": None},
        formula="exp(x_i) / sum_j exp(x_j) along dim",
        presets={"Softmax2d": {"dim": -3}},
        keras_defaults={"dim": -1},
        keras_differences=(
            "Keras softmax takes axis=-1 by default; PyTorch needs dim (no implicit dim here)",
        ),
    ),
    entry(
        "softmin",
        F.softmin,
        torch_class="Softmin",
        elementwise=False,
        needs_dim=True,
        params={"dim": None},
        formula="exp(-x_i) / sum_j exp(-x_j) along dim",
    ),
    entry(
        "log_softmax",
        F.log_softmax,
        torch_class="LogSoftmax",
        keras_name="log_softmax",
        elementwise=False,
        needs_dim=True,
        params={"dim": None},
        formula="x_i - log(sum_j exp(x_j)) along dim",
        keras_defaults={"dim": -1},
        keras_differences=(
            "Keras log_softmax takes axis=-1 by default; PyTorch needs dim (no implicit dim here)",
        ),
    ),
    entry(
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
    ),
)
