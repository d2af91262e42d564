"""The safe expression language: what it accepts, what it refuses, and that refused text
never runs."""

import math

import pytest
import torch

from actlab.catalog import registry as catalog
from actlab.catalog.expr import FUNCTIONS, parse_expression
from actlab.errors import SpecError

X = torch.linspace(-4, 4, 17, dtype=torch.float64)


@pytest.mark.parametrize(
    "text, reference",
    [
        ("x * sigmoid(1.702 * x)", lambda x: x * torch.sigmoid(1.702 * x)),
        ("x / (1 + abs(x))", lambda x: x / (1 + x.abs())),
        ("-x ** 2 + 3", lambda x: -(x**2) + 3),
        ("+x - 2 * x", lambda x: -x),
        ("max(x, 0.1 * x)", lambda x: torch.maximum(x, 0.1 * x)),
        ("clamp(x, -1, 1)", lambda x: x.clamp(-1, 1)),
        ("x * tanh(softplus(x))", lambda x: x * torch.tanh(torch.nn.functional.softplus(x))),
        ("0.5 * x * (1 + erf(x / sqrt(2)))", lambda x: torch.nn.functional.gelu(x)),
        (
            "exp(-x ** 2) * cos(pi * x) + e",
            lambda x: torch.exp(-(x**2)) * torch.cos(math.pi * x) + math.e,
        ),
        ("log1p(exp(x))", lambda x: torch.log1p(torch.exp(x))),
        ("relu(x) + min(x, 0) / 4", lambda x: torch.relu(x) + torch.clamp(x, max=0) / 4),
        ("x * 0 + 2", lambda x: torch.full_like(x, 2.0)),
    ],
)
def test_expressions_compute_their_formula(text, reference):
    torch.testing.assert_close(parse_expression(text)(X), reference(X))


def test_expression_keeps_dtype_and_shape():
    f = parse_expression("x * sigmoid(x) + 1")
    x = torch.randn(2, 3, 4)
    y = f(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert parse_expression("0 * x + 3")(x).shape == x.shape


@pytest.mark.parametrize("text", ["2", "pi", "9 ** 9 ** 9", "exp(e) - 1"])
def test_a_constant_expression_is_refused(text):
    """A constant activation passes no gradient (autograd has nothing to differentiate):
    refused in one line rather than failing later in `show` or in training (issue 11)."""
    with pytest.raises(SpecError, match="it does not use x, so it is a constant"):
        parse_expression(text)


def test_derivatives_come_from_autograd():
    x = X.clone().requires_grad_(True)
    f = catalog.get_fn("expr:x * sigmoid(x)")
    assert torch.autograd.gradcheck(f, (x,))
    (slope,) = torch.autograd.grad(f(x).sum(), x)
    s = torch.sigmoid(X)
    torch.testing.assert_close(slope, s + X * s * (1 - s))


def test_expression_is_a_catalog_spec():
    module = catalog.get("expr:x * sigmoid(1.702 * x)")
    assert isinstance(module, torch.nn.Module)
    torch.testing.assert_close(module(X), X * torch.sigmoid(1.702 * X))
    entry, params = catalog.resolve({"name": "expr:x*x"})
    assert entry.name == "expr:x*x" and params == {}


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('touch /tmp/actlab_probe/pwned')",
        "x.__class__",
        "open('/etc/passwd')",
        "[x for x in ()]",
        "lambda: 1",
        "x if x else 1",
        "x > 0",
        "'a' * 3",
        "y + 1",
        "exp(x, x)",
        "exp(x=x)",
        "x @ x",
        "x +",
        "",
        "True + x",
        "1j * x",
        "x" + " + x" * 300,
    ],
)
def test_refused_expressions_raise_spec_errors(text):
    with pytest.raises(SpecError) as error:
        catalog.get("expr:" + text)
    assert "\n" not in str(error.value)


def test_refused_text_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    calls = []
    monkeypatch.setattr("os.system", lambda *a: calls.append(a))
    for text in (
        f"__import__('os').system('touch {marker}')",
        f"exp(__import__('pathlib').Path('{marker}').touch())",
    ):
        with pytest.raises(SpecError):
            catalog.get_fn("expr:" + text)
    assert not marker.exists() and calls == []


def test_parser_never_evaluates_the_text(monkeypatch):
    """eval/exec are never called; compile only as ast.parse uses it (to an AST, not code)."""
    import ast
    import builtins

    real_compile = builtins.compile

    def refuse(*args, **kwargs):
        raise AssertionError("eval/exec called")

    def parse_only(source, filename, mode, flags=0, *args, **kwargs):
        assert flags & ast.PyCF_ONLY_AST, "compile to code called"
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    monkeypatch.setattr(builtins, "compile", parse_only)
    assert parse_expression("x * sigmoid(x)")(torch.zeros(1)).item() == 0.0
    with pytest.raises(SpecError):
        parse_expression("__import__('os')")


def test_every_function_in_the_whitelist_is_callable():
    x = torch.linspace(0.1, 2.0, 5)
    for name, (arity, _) in FUNCTIONS.items():
        args = ", ".join(["x"] * arity)
        y = parse_expression(f"{name}({args})")(x)
        assert y.shape == x.shape and torch.isfinite(y).all(), name
