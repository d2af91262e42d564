"""The per-installation disk cache of what the catalog measures (properties, `actlab list`).

Files live in ``$XDG_CACHE_HOME/actlab/catalog`` (default ``~/.cache/actlab/catalog``), one
per name and key. The key hashes everything a cached value depends on: the Python, actlab,
torch and NumPy versions and the source of every module of :mod:`actlab.catalog` (plus any
extra source a caller names), so an upgrade or an edit starts a new file and a value read
back is always the one a fresh computation gives. Computing the key imports nothing heavy
(versions come from the installed distributions' metadata), so a cached value can be
served without importing torch. A cache that cannot be read is ignored; one that cannot be
written is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

CATALOG_SOURCES = Path(__file__).parent


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:  # e.g. a torch built from source, without metadata
        if name == "torch":
            import torch

            return torch.__version__
        return "unknown"


def key(extra_sources: Sequence[Path] = ()) -> str:
    """16 hex digits of the hash of the versions and sources a cached value depends on."""
    digest = hashlib.sha256(f"python={sys.version_info[:2]};".encode())
    for name in ("actlab", "torch", "numpy"):
        digest.update(f"{name}={_version(name)};".encode())
    for source in [*sorted(CATALOG_SOURCES.glob("*.py")), *extra_sources]:
        digest.update(source.name.encode() + b"\0" + Path(source).read_bytes())
    return digest.hexdigest()[:16]


def path(name: str, extra_sources: Sequence[Path] = ()) -> Path:
    """The cache file of ``name`` for this installation."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "actlab" / "catalog" / f"{name}-{key(extra_sources)}.json"


def read(name: str, extra_sources: Sequence[Path] = ()) -> Any | None:
    """The cached value of ``name``, or None when there is none readable."""
    try:
        return json.loads(path(name, extra_sources).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write(name: str, value: Any, extra_sources: Sequence[Path] = ()) -> None:
    """Store ``value`` (JSON) under ``name``, atomically; an unwritable cache is skipped."""
    target = path(name, extra_sources)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=target.parent, prefix=f".{name}-", suffix=".tmp", delete=False
        ) as handle:
            json.dump(value, handle)
        os.replace(handle.name, target)
    except OSError:
        return
