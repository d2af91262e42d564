"""`native.CODES` (catalog name -> kernel code) against the C enum in native_step.c, parsed
from the source: the two are written by hand in two languages, so a test keeps them one."""

import re
from pathlib import Path

from actlab.catalog.registry import resolve
from actlab.engine import native

SOURCE = Path(native.__file__).with_name("native_step.c").read_text()
# Entries that run on another entry's kernel with parameters (native.kernel_args): relu6 is
# hardtanh on [0, 6]; selu and celu are aten.elu with their alpha, scale and input scale.
SHARED = {"relu6": "HARDTANH", "selu": "ELU", "celu": "ELU"}


def c_enum() -> dict[str, int]:
    """NAME -> value of the C source's activation enum (every member has an explicit value)."""
    body = re.search(r"enum\s*\{([^}]*)\}", SOURCE).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    members = [part.strip() for part in body.split(",") if part.strip()]
    enum = {}
    for member in members:
        name, value = (piece.strip() for piece in member.split("="))
        enum[name] = int(value)
    return enum


def switch_cases(function: str) -> set[str]:
    """The case labels in the body of the C function `function` (to its closing brace at
    the start of a line)."""
    start = SOURCE.index(f" {function}(")
    end = SOURCE.index("\n}\n", start)
    body = SOURCE[start:end]
    cases = set(re.findall(r"case ([A-Z_0-9]+):", body))
    return cases | set(re.findall(r"default: /\* ([A-Z_0-9]+) \*/", body))


def test_every_code_is_the_enum_member_of_its_name():
    enum = c_enum()
    assert len(set(enum.values())) == len(enum), "two enum members share a value"
    for name, code in native.CODES.items():
        member = SHARED.get(name, name.upper())
        assert enum.get(member.replace("_", "")) == code or enum.get(member) == code, (
            f"native.CODES[{name!r}] = {code}, but the C enum has {member} = {enum.get(member)}"
        )
    assert set(native.CODES.values()) == set(enum.values()), "a C kernel no name reaches"


def test_every_code_names_a_catalog_entry_and_has_a_forward_and_a_backward_case():
    for name in native.CODES:
        assert resolve(name)[0].name == name
    enum = set(c_enum())
    for function in ("forward_row", "backward_row"):
        assert enum <= switch_cases(function), function
