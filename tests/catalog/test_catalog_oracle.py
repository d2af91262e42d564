"""Every catalog entry against an independent oracle (NumPy/SciPy formulas), its module form
against its functional form, and its gradient against finite differences (gradcheck)."""

import math

import numpy as np
import pytest
import torch
from scipy import special

from actlab.catalog import registry as catalog
from actlab.catalog.registry import get, get_fn, list_activations

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _sparsemax_rows(z: np.ndarray) -> np.ndarray:
    """Sparsemax along the last axis, row by row (Martins & Astudillo 2016, Algorithm 1)."""
    out = np.empty_like(z)
    for index in np.ndindex(z.shape[:-1]):
        row = z[index]
        ordered = np.sort(row)[::-1]
        cumulative = np.cumsum(ordered)
        k = np.arange(1, row.size + 1)
        support = k[1 + k * ordered > cumulative].max()
        tau = (cumulative[support - 1] - 1) / support
        out[index] = np.maximum(row - tau, 0)
    return out


def _glu(x, dim):
    a, b = np.split(x, 2, axis=dim)
    return a * special.expit(b)


def _gated(gate):
    """a * gate(b), [a, b] the halves of x along dim (Shazeer 2020)."""

    def oracle(x, dim):
        a, b = np.split(x, 2, axis=dim)
        return a * gate(b)

    return oracle


# name -> oracle(x, **params) on float64 NumPy arrays; written from the formulas, not torch.
ORACLES = {
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "leaky_relu": lambda x, negative_slope: np.where(x >= 0, x, negative_slope * x),
    "prelu": lambda x, num_parameters, init: np.where(x >= 0, x, init * x),
    "rrelu": lambda x, lower, upper: np.where(x >= 0, x, (lower + upper) / 2 * x),
    "elu": lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
    "selu": lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
    "celu": lambda x, alpha: (
        np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(np.minimum(x, 0) / alpha))
    ),
    "gelu": lambda x, approximate: x / 2 * (1 + special.erf(x / math.sqrt(2))),
    "gelu_tanh": lambda x: x / 2 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x * special.expit(x),
    "swish_beta": lambda x, beta: x * special.expit(beta * x),
    "mish": lambda x: x * np.tanh(np.logaddexp(0, x)),
    "hard_swish": lambda x: x * np.clip(x + 3, 0, 6) / 6,
    "sigmoid": special.expit,
    "hard_sigmoid": lambda x: np.clip(x + 3, 0, 6) / 6,
    "log_sigmoid": lambda x: -np.logaddexp(0, -x),
    "tanh": np.tanh,
    "hard_tanh": lambda x, min_val, max_val: np.clip(x, min_val, max_val),
    "softsign": lambda x: x / (1 + np.abs(x)),
    "softplus": lambda x, beta, threshold: np.where(
        beta * x > threshold, x, np.logaddexp(0, beta * x) / beta
    ),
    "hard_shrink": lambda x, lambd: np.where(np.abs(x) > lambd, x, 0),
    "soft_shrink": lambda x, lambd: np.where(
        x > lambd, x - lambd, np.where(x < -lambd, x + lambd, 0)
    ),
    "tanh_shrink": lambda x: x - np.tanh(x),
    "threshold": lambda x, threshold, value: np.where(x > threshold, x, value),
    "exponential": np.exp,
    "linear": lambda x: x,
    "sparse_plus": lambda x: np.where(x <= -1, 0, np.where(x >= 1, x, (x + 1) ** 2 / 4)),
    "sparse_sigmoid": lambda x: np.clip((x + 1) / 2, 0, 1),
    "squareplus": lambda x, b: (x + np.sqrt(x * x + b)) / 2,
    "glu": lambda x, dim: _glu(x, dim),
    "bilinear": _gated(lambda b: b),
    "reglu": _gated(lambda b: np.maximum(b, 0)),
    "geglu": _gated(lambda b: b * 0.5 * (1 + special.erf(b / np.sqrt(2)))),
    "swiglu": _gated(lambda b: b * special.expit(b)),
    "relu2": lambda x: np.maximum(x, 0) ** 2,
    "softmax": lambda x, dim: special.softmax(x, axis=dim),
    "softmin": lambda x, dim: special.softmax(-x, axis=dim),
    "log_softmax": lambda x, dim: special.log_softmax(x, axis=dim),
    "sparsemax": lambda x, dim: np.moveaxis(_sparsemax_rows(np.moveaxis(x, dim, -1)), -1, dim),
}

# Negative, near-zero, positive and large inputs (none on a kink of the default parameters
# except 0 itself, where every entry is defined).
POINTS = np.array(
    [-60.0, -7.5, -2.2, -1.3, -0.7, -0.4, -1e-3, 0.0, 1e-3, 0.3, 0.8, 1.7, 4.2, 7.5, 60.0]
)
# Points of non-differentiability of the default parameters: gradcheck stays away from them.
KINKS = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, 6.0])

ENTRIES = [spec for spec in list_activations() if not spec.name.startswith("expr:")]
IDS = [spec.name for spec in ENTRIES]


def _input(spec, rng: np.random.Generator) -> np.ndarray:
    if spec.elementwise:
        return POINTS
    x = rng.normal(scale=3.0, size=(3, 8))
    x[0, 0], x[1, 1] = 40.0, -40.0  # large inputs
    x[2] = rng.normal(scale=1e-3, size=8)  # near zero
    return x


def test_every_entry_has_an_oracle():
    missing = sorted(set(IDS) - set(ORACLES))
    assert not missing, f"add a NumPy oracle for {missing}"


@pytest.mark.parametrize("spec", ENTRIES, ids=IDS)
def test_function_matches_oracle(spec):
    rng = np.random.default_rng(0)
    entry, params = catalog.resolve(spec.example)
    x = _input(spec, rng)
    expected = ORACLES[entry.name](x, **params)
    got = get_fn(spec.example)(torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("spec", ENTRIES, ids=IDS)
def test_module_matches_function(spec):
    rng = np.random.default_rng(1)
    x = torch.tensor(_input(spec, rng), dtype=torch.float32)
    module = get(spec.example).eval()  # eval: RReLU is random in training mode
    assert isinstance(module, torch.nn.Module)
    with torch.no_grad():
        np.testing.assert_allclose(
            module(x).numpy(), get_fn(spec.example)(x).numpy(), rtol=1e-6, atol=1e-6
        )


@pytest.mark.parametrize("spec", ENTRIES, ids=IDS)
def test_gradcheck_float64(spec):
    generator = torch.Generator().manual_seed(2)
    shape = (64,) if spec.elementwise else (4, 6)
    x = (torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5) * 10
    if spec.elementwise:
        distance = (x.unsqueeze(-1) - torch.tensor(KINKS, dtype=torch.float64)).abs().min(-1).values
        x = x[distance > 0.05]
    x.requires_grad_(True)
    fn = get_fn(spec.example)
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("spec", [s for s in ENTRIES if s.learnable], ids=lambda s: s.name)
def test_learnable_parameters_get_gradients(spec):
    module = get(spec.name).double()
    parameters = list(module.parameters())
    assert parameters, f"{spec.name} is learnable but has no parameters"
    x = torch.linspace(-3, 3, 40, dtype=torch.float64).unsqueeze(0).requires_grad_(True)  # not 0
    assert torch.autograd.gradcheck(module, (x,))
    module(x).pow(2).sum().backward()
    for parameter in parameters:  # the autograd gradient against a central difference
        eps = 1e-6
        with torch.no_grad():
            parameter += eps
            up = module(x).pow(2).sum().item()
            parameter -= 2 * eps
            down = module(x).pow(2).sum().item()
            parameter += eps
        assert parameter.grad.sum().item() == pytest.approx((up - down) / (2 * eps), rel=1e-5)


def test_rrelu_training_mode_slopes_lie_in_lower_upper():
    module = get("rrelu(lower=0.1, upper=0.3)").train()
    torch.manual_seed(0)
    slopes = -module(-torch.ones(20_000))
    assert slopes.min() >= 0.1 and slopes.max() <= 0.3
    assert slopes.std() > 0.03  # random, not the eval-mode constant 0.2
    module.eval()
    assert torch.allclose(module(-torch.ones(5)), torch.full((5,), -0.2))


def test_softmax_family_normalises_along_dim():
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(3))
    for name in ("softmax", "softmin", "sparsemax"):
        y = get_fn(f"{name}(dim=0)")(x)
        assert torch.allclose(y.sum(0), torch.ones(5), atol=1e-6)
        assert (y >= 0).all()
    assert (get_fn("sparsemax(dim=-1)")(x * 5) == 0).any()  # sparse, unlike softmax
