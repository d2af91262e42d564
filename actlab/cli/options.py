"""Command-line options generated from dataclass fields (see actlab.config.option).

A field's metadata holds its help text, choices, group and how its text is parsed; its
default is the dataclass default. `add_options` turns the fields of a dataclass into argparse
options, `values_from` turns the parsed arguments back into the dataclass's keyword values.
So a new option of `actlab compare` is a new field of ExperimentConfig (or of the command's
own run options) with `option(...)` metadata; nothing here changes.

Text forms: a bool field is a switch (``--NAME``, or ``--no-NAME`` when its default is True);
``ints``/``floats``/``specs`` are comma-separated lists; ``seeds`` is a count, a range A..B
or a list (`parse_seeds`). A tuple field's default is shown in --help as it is typed.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable

from actlab.config import MAX_MEMBERS
from actlab.errors import ConfigError

GROUPS = {
    "data": "data",
    "model": "model",
    "members": "members (every activation x seed x lr is one network of the stacked model)",
    "training": "training",
    "analysis": "analysis",
    "execution": "execution",
    "run": "run directory and output",
}


# --- text to values ----------------------------------------------------------------------


def split_specs(text: str) -> tuple[str, ...]:
    """Split comma-separated activation specs, keeping commas inside parentheses:
    ``relu,elu(alpha=0.5),expr:max(x, 0)`` -> three specs."""
    specs, depth, current = [], 0, []
    for char in text:
        if char == "," and depth == 0:
            specs.append("".join(current).strip())
            current = []
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current.append(char)
    specs.append("".join(current).strip())
    return tuple(spec for spec in specs if spec)


def parse_seeds(text: str, start: int = 0) -> tuple[int, ...]:
    """``3`` means seeds 0, 1, 2 (``start``, start+1, ... with --seed-start); ``3..4`` is the
    inclusive range 3, 4; ``0,5,7`` (or ``7,``) is a list of seeds."""
    text = text.strip()
    if ".." in text:
        low, _, high = text.partition("..")
        first, last = parse_ints(low, "--seeds")[:1], parse_ints(high, "--seeds")[:1]
        if not first or not last or not 0 <= first[0] <= last[0] < 2**63:
            raise ConfigError(
                f"--seeds {text}: a range is FIRST..LAST with 0 <= FIRST <= LAST, e.g. 3..4"
            )
        if last[0] - first[0] + 1 > MAX_MEMBERS:
            raise ConfigError(f"--seeds {text}: at most {MAX_MEMBERS} seeds")
        return tuple(range(first[0], last[0] + 1))
    if "," not in text:
        counts = parse_ints(text, "--seeds")
        if len(counts) != 1 or not 1 <= counts[0] <= MAX_MEMBERS:
            raise ConfigError(
                f"--seeds {text}: give a count from 1 to {MAX_MEMBERS}, a range like 3..4 "
                "or a list like 0,5,7"
            )
        if not 0 <= start < 2**63 - counts[0]:
            raise ConfigError(f"--seed-start {start}: seeds are integers from 0 to 2**63 - 1")
        return tuple(range(start, start + counts[0]))
    seeds = parse_ints(text, "--seeds")
    if any(not 0 <= seed < 2**63 for seed in seeds):
        raise ConfigError(f"--seeds {text}: seeds must be integers from 0 to 2**63 - 1")
    return seeds


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected integers separated by commas") from None


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected numbers like 1e-3,3e-3") from None


def float_text(value: float) -> str:
    """The shorter of ``0.001`` and ``1e-3`` (as a user would type it), exact either way."""
    plain = f"{value:g}"
    mantissa, _, exponent = f"{value:.15e}".partition("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    scientific = f"{mantissa}e{int(exponent)}"
    if len(scientific) < len(plain) and float(scientific) == value:
        return scientific
    return plain


def seeds_text(seeds: tuple[int, ...]) -> str:
    """``10`` for seeds 0..9 (the count that --seeds takes), else the list."""
    if seeds == tuple(range(len(seeds))):
        return str(len(seeds))
    return ",".join(map(str, seeds))


# kind -> (text -> value, given the option's flag and every parsed argument; value -> text)
Parser = Callable[[str, str, argparse.Namespace], object]
PARSERS: dict[str, tuple[Parser, Callable[[tuple], str]]] = {
    "specs": (lambda text, flag, args: split_specs(text), ",".join),
    "ints": (lambda text, flag, args: parse_ints(text, flag), lambda v: ",".join(map(str, v))),
    "floats": (
        lambda text, flag, args: parse_floats(text, flag),
        lambda v: ",".join(map(float_text, v)),
    ),
    "seeds": (lambda text, flag, args: parse_seeds(text, args.seed_start), seeds_text),
}


# --- fields to options -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Option:
    """One command-line option, as a dataclass field describes it."""

    name: str  # the field, and the argparse dest
    flag: str
    field_type: object
    default: object
    metadata: dict

    @property
    def negated(self) -> bool:
        return self.field_type is bool and self.default is True


def options_of(cls: type) -> list[Option]:
    """The fields of dataclass `cls` that carry option metadata, in field order."""
    hints = typing.get_type_hints(cls)
    found = []
    for item in dataclasses.fields(cls):
        meta = dict(item.metadata)
        if "help" not in meta:
            continue  # not a command-line option (e.g. a user model's source hash)
        kind = hints[item.name]
        negated = kind is bool and item.default is True
        flag = meta.get("flag") or ("--no-" if negated else "--") + item.name.replace("_", "-")
        found.append(Option(item.name, flag, kind, item.default, meta))
    return found


def _scalar_type(kind: object) -> type:
    """int for `int` and `int | None`, likewise float and str."""
    for candidate in (int, float, str):
        if kind is candidate or candidate in typing.get_args(kind):
            return candidate
    raise TypeError(f"no command-line type for {kind!r}; give the field a `kind`")


def add_options(parser: argparse.ArgumentParser, cls: type, groups: dict | None = None) -> dict:
    """Add an option to `parser` for every option field of `cls`, each in the argument group
    its metadata names (created on first use and kept in `groups`). Returns `groups`."""
    groups = {} if groups is None else groups
    for option in options_of(cls):
        meta = option.metadata
        title = meta["group"]
        if title not in groups:
            groups[title] = parser.add_argument_group(GROUPS.get(title, title))
        settings: dict = {"dest": option.name, "help": meta["help"], **meta["argparse"]}
        if meta.get("metavar"):
            settings["metavar"] = meta["metavar"]
        elif option.flag != "--" + option.name.replace("_", "-") and not (
            meta.get("choices") or option.field_type is bool
        ):
            settings["metavar"] = option.flag.lstrip("-").replace("-", "_").upper()  # --lr LR
        if option.field_type is bool:
            settings.update(action="store_true", default=False)
        elif meta.get("kind"):
            # typed as text and parsed by `values_from`; the default shown as one would type it
            settings["default"] = PARSERS[meta["kind"]][1](option.default) or None
        elif settings.get("action") != "append":
            settings.update(type=_scalar_type(option.field_type), default=option.default)
            if meta.get("choices"):
                settings["choices"] = meta["choices"]
        else:
            settings["default"] = list(option.default)
        groups[title].add_argument(option.flag, *meta.get("aliases", ()), **settings)
    return groups


def values_from(args: argparse.Namespace, cls: type) -> dict:
    """The keyword values of `cls` that the parsed `args` give, in field order: text parsed
    by the field's kind (a ConfigError names the option), switches turned back into bools."""
    values = {}
    for option in options_of(cls):
        value = getattr(args, option.name)
        kind = option.metadata.get("kind")
        if option.negated:
            value = not value
        elif kind:
            value = option.default if value is None else PARSERS[kind][0](value, option.flag, args)
        elif isinstance(option.default, tuple):
            value = tuple(value)
        values[option.name] = value
    return values
