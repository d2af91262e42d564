"""actlab: the activation-function laboratory for PyTorch.

>>> import actlab
>>> act = actlab.get("leaky_relu(negative_slope=0.2)")     # an nn.Module
>>> fn = actlab.get_fn("expr:x * sigmoid(1.702 * x)")       # a callable
>>> df = actlab.compare(dataset="fashion-mnist", epochs=1)  # a pandas DataFrame
>>> df = actlab.compare(model="my_net.py:build", dataset="fashion-mnist")  # your network
>>> net = actlab.swap_activations(Net(), "gelu", old="relu")  # says what it replaced
"""

from __future__ import annotations

import importlib

# The package's only version string: pyproject.toml reads it at build time
# ([tool.setuptools.dynamic]), so the wheel's metadata says the same.
__version__ = "0.1.0"

# Public names and the module that defines each. Imported lazily so that `import actlab`
# stays cheap and a module's import error names the module.
_EXPORTS = {
    "get": "actlab.catalog.registry",
    "get_fn": "actlab.catalog.registry",
    "register": "actlab.catalog.registry",
    "list_activations": "actlab.catalog.registry",
    "load_dataset": "actlab.data.datasets",
    "compare": "actlab.study.driver",
    "swap_activations": "actlab.nn.swap",
    "ExperimentConfig": "actlab.config",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'actlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API first among the module's names, so that dir(actlab) and tab
    completion show `get`, `compare`, ... although they are imported lazily."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
