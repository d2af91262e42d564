"""The safe expression language for custom activations: ``"expr:x * sigmoid(1.702 * x)"``.

The text is parsed with :mod:`ast` and checked node by node against a whitelist: numbers,
the variable ``x``, the constants ``pi`` and ``e``, ``+ - * / **``, unary ``+ -``, and the
functions in :data:`FUNCTIONS`. The checked tree is turned into a closure of torch ops; the
text is never passed to ``eval``, ``exec`` or ``compile``. Derivatives come from autograd.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from actlab.errors import SpecError

MAX_LENGTH = 500  # long enough for any formula a person types; bounds parse time

# name -> (number of arguments, torch implementation)
FUNCTIONS: dict[str, tuple[int, Callable[..., Tensor]]] = {
    "exp": (1, torch.exp),
    "expm1": (1, torch.expm1),
    "log": (1, torch.log),
    "log1p": (1, torch.log1p),
    "sqrt": (1, torch.sqrt),
    "abs": (1, torch.abs),
    "sign": (1, torch.sign),
    "sin": (1, torch.sin),
    "cos": (1, torch.cos),
    "atan": (1, torch.atan),
    "sinh": (1, torch.sinh),
    "cosh": (1, torch.cosh),
    "tanh": (1, torch.tanh),
    "erf": (1, torch.erf),
    "sigmoid": (1, torch.sigmoid),
    "softplus": (1, F.softplus),
    "relu": (1, torch.relu),
    "min": (2, torch.minimum),
    "max": (2, torch.maximum),
    "clamp": (3, lambda v, lo, hi: torch.minimum(torch.maximum(v, lo), hi)),
}
CONSTANTS = {"pi": math.pi, "e": math.e}

_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}
_UNARY = {ast.USub: lambda a: -a, ast.UAdd: lambda a: a}

_HELP = "use numbers, x, pi, e, + - * / ** and the functions " + ", ".join(FUNCTIONS)

Node = Callable[[Tensor], Tensor]


def parse_expression(text: str) -> Callable[[Tensor], Tensor]:
    """Parse ``text`` (a formula in ``x``) into an elementwise function of a tensor.

    >>> f = parse_expression("x * sigmoid(1.702 * x)")   # the GELU approximation of Hendrycks & Gimpel 2016
    >>> f(torch.tensor([0.0]))
    tensor([0.])

    Raises :class:`SpecError` (one line) for anything outside the whitelist.
    """
    if not isinstance(text, str) or not text.strip():
        raise SpecError(
            f"empty expression {text!r}; write a formula in x, e.g. 'expr:x * sigmoid(x)'"
        )
    if len(text) > MAX_LENGTH:
        raise SpecError(f"expression is {len(text)} characters long; the limit is {MAX_LENGTH}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise SpecError(
            f"bad expression {text!r}: invalid syntax at column {error.offset}; {_HELP}"
        ) from None
    body = _build(tree.body, text)
    if not any(isinstance(n, ast.Name) and n.id == "x" for n in ast.walk(tree)):
        raise SpecError(
            f"bad expression {text!r}: it does not use x, so it is a constant (no gradient "
            "would flow through it); write a formula in x, e.g. 'x * sigmoid(x)'"
        )

    def activation(x: Tensor) -> Tensor:
        return body(x)

    # Catch wrong shapes or types now, not in the middle of a training run.
    try:
        probe = activation(torch.linspace(-2.0, 2.0, 5, dtype=torch.float64))
    except (RuntimeError, TypeError, ValueError) as error:
        raise SpecError(f"bad expression {text!r}: {str(error).splitlines()[0]}") from None
    if probe.shape != (5,):
        raise SpecError(f"bad expression {text!r}: it does not give one value per input")
    return activation


def _build(node: ast.AST, text: str) -> Node:
    """Turn one checked AST node into a closure ``x -> Tensor``."""
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"bad expression {text!r}: {value!r} is not a number; {_HELP}")
        try:
            number = float(value)
        except OverflowError:
            raise SpecError(
                f"bad expression {text!r}: the number {str(value)[:12]}... is too large for a float"
            ) from None
        return lambda x: torch.tensor(number, dtype=x.dtype, device=x.device)
    if isinstance(node, ast.Name):
        if node.id == "x":
            return lambda x: x
        if node.id in CONSTANTS:
            number = CONSTANTS[node.id]
            return lambda x: torch.tensor(number, dtype=x.dtype, device=x.device)
        raise SpecError(f"bad expression {text!r}: unknown name {node.id!r}; {_HELP}")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op, left, right = _BINARY[type(node.op)], _build(node.left, text), _build(node.right, text)
        return lambda x: op(left(x), right(x))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        op, operand = _UNARY[type(node.op)], _build(node.operand, text)
        return lambda x: op(operand(x))
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS:
            shown = name or ast.unparse(node.func)
            raise SpecError(
                f"bad expression {text!r}: {shown!r} is not an allowed function; {_HELP}"
            )
        arity, function = FUNCTIONS[name]
        if node.keywords or len(node.args) != arity:
            raise SpecError(f"bad expression {text!r}: {name} takes {arity} positional argument(s)")
        args = [_build(arg, text) for arg in node.args]
        return lambda x: function(*(arg(x) for arg in args))
    shown = type(node).__name__
    raise SpecError(f"bad expression {text!r}: {shown} is not allowed; {_HELP}")
