"""The package's layers: every import goes down (or stays in its own room), never up.

errors < catalog, tasks < config, data < nn < engine < study < report < export < cli. A module may
import from its own subpackage and from any lower layer; `actlab/__init__.py` (the lazy
public API) and `actlab/__main__.py` are the roof and may import anything.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "actlab"
LAYERS = {
    "tasks": 1,
    "errors": 0,
    "catalog": 1,
    "config": 2,
    "data": 2,
    "nn": 3,
    "engine": 4,
    "study": 5,
    "report": 6,
    "export": 7,
    "cli": 8,
}


def room(module: str) -> str | None:
    """`actlab.engine.trainer` -> `engine`; None for `actlab` itself."""
    parts = module.split(".")
    return parts[1] if parts[0] == "actlab" and len(parts) > 1 else None


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported actlab module) of every import in `path`, in functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("actlab")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "actlab":
                found += [(node.lineno, f"actlab.{a.name}") for a in node.names]
            elif node.module.startswith("actlab."):
                found.append((node.lineno, node.module))
    return found


def test_every_module_lives_in_a_known_layer():
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.name in ("__init__.py", "__main__.py") and len(relative.parts) == 1:
            continue
        name = relative.parts[0].removesuffix(".py")
        assert name in LAYERS, f"{relative}: not in a layer of tests/test_layers.py"


def test_imports_only_go_down():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 1 and relative.name in ("__init__.py", "__main__.py"):
            continue
        own = relative.parts[0].removesuffix(".py")
        for line, module in imports_of(path):
            target = room(module)
            if target is None or target == own:
                continue
            if target == "__version__":  # `from actlab import __version__`
                continue
            if LAYERS.get(target, 99) >= LAYERS[own]:
                upward.append(f"actlab/{relative}:{line} ({own}) imports {module} ({target})")
    assert not upward, "imports that go up or sideways:\n" + "\n".join(upward)
