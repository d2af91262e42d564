"""The name index of the catalog: canonical names, aliases, PyTorch class names and Keras
names -> entries. Case, ``_``, ``-`` and spaces do not matter (``LeakyReLU`` ==
``leaky_relu``). Filled with :data:`actlab.catalog.entries.ENTRIES` and the gated units of
:data:`actlab.catalog.gated.GATED_ENTRIES` at import; users add
to it with :func:`actlab.catalog.registry.register`."""

from __future__ import annotations

import difflib
import re

from actlab.catalog.activation import ActivationSpec
from actlab.catalog.entries import ENTRIES as _CORE_ENTRIES
from actlab.catalog.gated import GATED_ENTRIES
from actlab.errors import SpecError, UnknownActivationError

ENTRIES = (*_CORE_ENTRIES, *GATED_ENTRIES)
_REGISTRY: dict[str, ActivationSpec] = {}  # canonical name -> spec
_LOOKUP: dict[str, tuple[str, dict]] = {}  # normalised name/alias -> (canonical, preset params)
BUILTIN: dict[str, ActivationSpec] = {spec.name: spec for spec in ENTRIES}


def key(name: str) -> str:
    """Lookup key: case, '_', '-' and spaces do not matter (``LeakyReLU`` == ``leaky_relu``)."""
    return re.sub(r"[\s_\-]", "", name.lower())


def add(spec: ActivationSpec) -> ActivationSpec:
    """Index ``spec`` under its names; a name that another entry owns is refused."""
    names = [spec.name, *spec.aliases, spec.torch_class, spec.keras_name]
    names = [n for n in names if n]
    for name in names:
        owner = _LOOKUP.get(key(name), (spec.name,))[0]
        # A torch class shared by two entries (GELU) belongs to the first one.
        if owner != spec.name and name != spec.torch_class:
            raise SpecError(f"name {name!r} is already used by activation {owner!r}; pick another")
    _REGISTRY[spec.name] = spec
    for name in names:
        _LOOKUP.setdefault(key(name), (spec.name, {}))
    for alias, preset in spec.presets.items():
        _LOOKUP[key(alias)] = (spec.name, dict(preset))
    return spec


def remove(name: str) -> None:
    """Drop the entry with canonical ``name`` and every name that leads to it."""
    del _REGISTRY[name]
    for lookup_key in [k for k, (owner, _) in _LOOKUP.items() if owner == name]:
        del _LOOKUP[lookup_key]


def find(name: str) -> tuple[ActivationSpec, dict]:
    """The entry for a bare name or alias and the parameters its alias presets
    (``Softmax2d`` -> softmax, ``{"dim": -3}``); unknown names raise with suggestions."""
    found = _LOOKUP.get(key(name))
    if found is None:
        raise unknown(name)
    canonical, preset = found
    return _REGISTRY[canonical], dict(preset)


def has(name: str) -> bool:
    """Whether ``name`` is a canonical name in the catalog."""
    return name in _REGISTRY


def entries() -> list[ActivationSpec]:
    """Every entry, in catalog order."""
    return list(_REGISTRY.values())


def is_builtin(spec: ActivationSpec) -> bool:
    """Whether ``spec`` is the catalog's own entry (not one a user registered or replaced)."""
    return BUILTIN.get(spec.name) is spec and _REGISTRY.get(spec.name) is spec


def unknown(name: str) -> UnknownActivationError:
    """The error for an unknown name, suggesting up to three close names."""
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


for _spec in ENTRIES:
    add(_spec)
del _spec
