"""mkdocs hook: the API page lists actlab's public names (`actlab.__all__`) where they are
defined today, so a module that moves inside the package moves its page entry with it."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

MARKER = "<!-- actlab-public-api -->"


def public_api() -> dict[str, str]:
    """`{name: defining module}` of `import actlab`'s public names (functions and classes)."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    actlab = importlib.import_module("actlab")
    found = {}
    for name in actlab.__all__:
        value = getattr(actlab, name)
        if callable(value):
            found[name] = value.__module__
    return found


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if MARKER not in markdown:
        return markdown
    blocks = [f"::: {module}.{name}\n" for name, module in public_api().items()]
    return markdown.replace(MARKER, "\n".join(blocks))
