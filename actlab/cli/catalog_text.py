"""The text of `actlab list` (one row per catalog entry) and `actlab show NAME` (one entry
in full: formula, reference, names, defaults, Keras differences, measured properties).

The catalog (and with it torch) is imported inside the functions: `actlab list` prints
from the catalog's disk cache (:mod:`actlab.catalog.cache`) when this installation has
printed it before, without importing torch."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actlab.catalog import cache

if TYPE_CHECKING:
    from actlab.catalog.activation import ActivationSpec

MEAN_NORMAL_NOTE = (
    "E f(z): the mean output for a standard-normal input z ~ N(0, 1); 0 for a zero-centred "
    "output (tanh), 0.399 for relu"
)


def _number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def list_text() -> str:
    """`actlab list`'s whole output: the table, then what its E f(z) column means. Read
    from the disk cache when there (keyed by versions and the catalog's and this module's
    source, so never stale), else computed and cached. A process whose catalog holds a
    user's entries (register) gets its own table, never the cached one."""
    lookup = sys.modules.get("actlab.catalog.lookup")  # loaded: user entries may be in it
    if lookup is not None:
        entries = lookup.entries()
        if len(entries) != len(lookup.BUILTIN) or not all(map(lookup.is_builtin, entries)):
            return f"{format_table()}\n\n{MEAN_NORMAL_NOTE}"
    sources = (Path(__file__),)
    text = cache.read("list", sources)
    if not isinstance(text, str):
        text = f"{format_table()}\n\n{MEAN_NORMAL_NOTE}"
        cache.write("list", text, sources)
    return text


def _params_text(params: Mapping[str, Any]) -> str:
    from actlab.catalog.activation import REQUIRED

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
    from actlab.catalog.properties import properties
    from actlab.catalog.registry import list_activations

    header = (
        "name",
        "aliases",
        "keras",
        "parameters",
        "range",
        "monotonic",
        "E f(z)",
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
                _number(props["mean_normal"]),
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
    from actlab.catalog.entries import KERAS_NOTES
    from actlab.catalog.lookup import find
    from actlab.catalog.properties import properties
    from actlab.catalog.registry import canonical_label, resolve
    from actlab.errors import SpecError

    note = None
    try:
        entry, params = resolve(spec)
        label = canonical_label(spec)
    except SpecError:
        # A bare name that needs a parameter (softmax needs dim): show it at its example.
        if not (isinstance(spec, str) and "(" not in spec and not spec.startswith("expr:")):
            raise
        entry, _ = find(spec)
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
        view = "[x, x]" if entry.gated else "[x, 0]"
        lines.append(f"    (mixes units along dim: measured on unit 0 of {view})")
    lines += [
        f"    range:          [{_number(props['range'][0])}, {_number(props['range'][1])}]",
        f"    monotonic:      {yes[props['monotonic']]}",
        f"    mean at N(0,1): {_number(props['mean_normal'])}  (E f(z), z ~ N(0, 1); 0 for a zero-centred output)",
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
