"""What one catalog entry is: :class:`ActivationSpec`, the ``REQUIRED`` marker for a
parameter without a default, the :class:`Activation` module that wraps a function, and the
label text of a spec with parameters (``leaky_relu(negative_slope=0.2)``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn


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
    # Splits its input in halves [a, b] along dim and gates one by the other (GLU and its
    # kin): measured as a function of one variable on [x, x] (GLU -> x * sigmoid(x)).
    gated: bool = False
    formula: str = ""
    reference: str = ""
    keras_differences: tuple[str, ...] = ()
    keras_defaults: dict = field(default_factory=dict, compare=False)
    # Keras parameter names that mean a PyTorch one here ({"axis": "dim"}).
    param_aliases: dict = field(default_factory=dict, compare=False)
    notes: tuple[str, ...] = ()
    # Extra checks on resolved params: returns an error message or None.
    check: Callable[[dict], str | None] | None = field(default=None, compare=False, repr=False)
    # More names that resolve to this entry with preset parameters ({"Softmax2d": {"dim": -3}}).
    presets: dict = field(default_factory=dict, compare=False)
    # Values for the required parameters in `example` (threshold's threshold and value).
    example_params: dict = field(default_factory=dict, compare=False)

    @property
    def required(self) -> tuple[str, ...]:
        """Parameters the user must give (no default)."""
        return tuple(
            k for k, v in self.params.items() if v is REQUIRED or (k == "dim" and self.needs_dim)
        )

    @property
    def example(self) -> str:
        """A spec string that resolves: the name, with any required parameter filled in."""
        filled = dict(self.example_params)
        if self.needs_dim:
            filled.setdefault("dim", -1)
        return label(self.name, filled)


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


def wrapped(name: str, fn: Callable[..., Tensor]) -> Callable[..., nn.Module]:
    """A module builder for a function: ``build(**params) -> Activation(name, fn, params)``."""
    return lambda **params: Activation(name, fn, params)


def format_value(value: Any) -> str:
    """A parameter value as a label shows it: floats rounded to 10 digits, else repr."""
    if isinstance(value, float):
        return repr(round(value, 10))
    return repr(value)


def label(name: str, params: Mapping[str, Any]) -> str:
    """``leaky_relu`` + ``{"negative_slope": 0.2}`` -> ``leaky_relu(negative_slope=0.2)``."""
    if not params:
        return name
    return f"{name}({', '.join(f'{k}={format_value(v)}' for k, v in params.items())})"
