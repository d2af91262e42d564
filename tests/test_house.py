"""The house rules of the code base, checked over the source (AST), not by review:

- no Python file in actlab/ over 700 lines, no function over 80 lines (the catalog's entries
  are data, not a function): split a module by concept, a function by step, when one grows
  past the limit;
- a test never imports another test module: shared helpers live in tests/fixtures/;
- the tests mirror the package: tests/<subpackage>/ holds the tests of actlab/<subpackage>/.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "actlab"
MAX_FILE_LINES = 700
MAX_FUNCTION_LINES = 80


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def functions(path: Path) -> dict[str, int]:
    """Qualified name -> length in lines (decorators excluded) of every function in `path`."""
    found: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = prefix + child.name
                found[name] = child.end_lineno - child.lineno + 1
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return found


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_no_file_is_over_700_lines():
    sizes = {relative(p): len(p.read_text(encoding="utf-8").splitlines()) for p in source_files()}
    over = {p: n for p, n in sizes.items() if n > MAX_FILE_LINES}
    assert not over, f"files over {MAX_FILE_LINES} lines: split them by concept: {over}"


def test_no_function_is_over_80_lines():
    sizes = {
        f"{relative(path)}::{name}": n
        for path in source_files()
        for name, n in functions(path).items()
    }
    over = {f: n for f, n in sizes.items() if n > MAX_FUNCTION_LINES}
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines: split them: {over}"


def test_the_function_measure_sees_methods_and_nested_functions(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "class A:\n    def f(self):\n        def g():\n            pass\n        return 1\n"
    )
    assert functions(path) == {"A.f": 4, "A.f.g": 2}


def test_no_test_imports_another_test_module():
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{relative(path)}:{node.lineno} imports {name}"
                for name in names
                if name.split(".")[-1].startswith(("test_", "conftest"))
            ]
    assert not offenders, "import shared helpers from tests/fixtures/ instead: " + "; ".join(
        offenders
    )


# Tests of the project as a whole (packaging, docs, layering, examples, benchmarks) and of
# the top-level modules (config, tasks) sit in tests/ itself; every other test sits in the
# folder named for the subpackage it tests.
PROJECT_TESTS = {
    "test_benchmarks.py", "test_config.py", "test_docs.py", "test_examples.py",
    "test_house.py", "test_layers.py", "test_packaging.py", "test_tasks.py",
}  # fmt: skip


def test_tests_mirror_the_package():
    tests = ROOT / "tests"
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert folders - {"fixtures"} <= subpackages, folders - subpackages
    assert {p.name for p in tests.glob("test_*.py")} == PROJECT_TESTS
    for folder in folders - {"fixtures"}:
        assert list((tests / folder).glob("test_*.py")), f"tests/{folder} holds no test"
