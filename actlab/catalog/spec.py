"""Specs: what a user writes for an activation, resolved to a catalog entry and its full
parameters.

A spec is a name or alias (case and ``_`` insensitive), a spec string with keyword
arguments (``leaky_relu(negative_slope=0.2)``, parsed with :mod:`ast`, literals only), a
dict ``{"name": ..., **params}``, an :class:`ActivationSpec`, or ``"expr:<formula in x>"``
(see :mod:`actlab.catalog.expr`). Keras spellings of parameters are translated or refused
with the PyTorch spec to use instead.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from typing import Any

from actlab.catalog.activation import REQUIRED, Activation, ActivationSpec, label
from actlab.catalog.expr import parse_expression
from actlab.catalog.lookup import find
from actlab.errors import SpecError, control_characters


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
    spec, _ = find(name)
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
        return label(spec.name, {key: default * 2 if default else 0.1})
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
    entry, preset = find(name)
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
    return label(entry.name, changed)
