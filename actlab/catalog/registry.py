"""Every activation by name: PyTorch's, Keras 3's, and yours.

The public lookup API over the catalog (:mod:`actlab.catalog.entries` holds the entries as
data, :mod:`actlab.catalog.spec` parses specs, :mod:`actlab.catalog.properties` measures
range, monotonicity, saturation and smoothness from the function):

    >>> get("leaky_relu(negative_slope=0.2)")          # a fresh nn.Module
    LeakyReLU(negative_slope=0.2)
    >>> get_fn("expr:x * sigmoid(1.702 * x)")          # a callable on tensors
    >>> resolve("LeakyReLU")                           # (spec, {'negative_slope': 0.01})

A spec is a name or alias (case and ``_`` insensitive), a spec string with keyword
arguments, a dict ``{"name": ..., **params}``, ``"expr:<formula in x>"`` (see
:mod:`actlab.catalog.expr`), or a callable / module, which passes through.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from actlab.catalog import lookup
from actlab.catalog.activation import REQUIRED, Activation, ActivationSpec, label, wrapped
from actlab.catalog.spec import canonical_label, resolve
from actlab.errors import SpecError, UnknownActivationError

__all__ = [
    "REQUIRED",
    "Activation",
    "ActivationSpec",
    "SpecError",
    "UnknownActivationError",
    "canonical_label",
    "get",
    "get_fn",
    "list_activations",
    "register",
    "resolve",
    "unregister",
]


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
    activation.__doc__ = f"{label(entry.name, resolved)}: {entry.formula}"
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
) -> ActivationSpec:
    """Add a user activation. ``fn(x, **params)`` is its functional form; ``module(**params)``
    builds its module (default: ``fn`` wrapped). A duplicate name is refused unless
    ``overwrite``."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise SpecError(f"activation name {name!r} must be snake_case, e.g. 'my_relu'")
    if fn is None and module is None:
        raise SpecError(f"register({name!r}) needs fn or module")
    if lookup.has(name) and not overwrite:
        raise SpecError(
            f"activation {name!r} is already registered; pass overwrite=True to replace it"
        )
    if fn is None:
        fn = lambda x, _m=module, **p: _m(**p)(x)  # noqa: E731
    if module is None:
        module = wrapped(name, fn)
    spec = ActivationSpec(
        name=name,
        fn=fn,
        module=module,
        aliases=tuple(aliases),
        params=dict(params or {}),
        learnable=learnable,
        formula=formula,
        reference=reference,
    )
    if overwrite and lookup.has(name):
        unregister(name)
    return lookup.add(spec)


def unregister(name: str) -> None:
    """Remove a user-registered activation (and its aliases)."""
    spec, _ = resolve(name)
    lookup.remove(spec.name)


def list_activations() -> list[ActivationSpec]:
    """Every catalog entry, in catalog order."""
    return lookup.entries()
