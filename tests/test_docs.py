"""The documentation's example outputs keep the form of what the program prints today.

docs/examples/*.txt are written by `python scripts/docs_examples.py` from real runs; the
pages and the README show them. Here each documented command runs again (or its cheaper
`check` twin) and the form of its output (numbers masked, spacing and wrapping ignored:
`docs_examples.form`) must equal the committed file's, so a changed output format fails
until the examples are regenerated. The quick examples run in the fast suite; the others
are marked slow.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location(
    "docs_examples", ROOT / "scripts" / "docs_examples.py"
)
docs_examples = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = docs_examples  # dataclasses look their module up there
SPEC.loader.exec_module(docs_examples)

REGENERATE = "python scripts/docs_examples.py"


FASHION = Path("/usr/share/datasets/fashion-mnist")


def example_params():
    for example in docs_examples.EXAMPLES:
        marks = [] if example.fast else [pytest.mark.slow]
        if "fashion-mnist" in (example.check or example.command):
            marks += [
                pytest.mark.realdata,
                pytest.mark.skipif(
                    not FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist"
                ),
            ]
        yield pytest.param(example, id=example.name, marks=marks)


def one_thread(command: str) -> str:
    """`actlab compare` at one thread: the thread count is not part of the output's form
    (its line is left out), and measuring it would make the test depend on the machine's
    load and compete with the other tests for the cores."""
    if command.startswith("actlab compare") and "--threads" not in command:
        return command + " --threads 1"
    return command


def committed(name: str) -> str:
    path = docs_examples.EXAMPLES_DIR / f"{name}.txt"
    assert path.is_file(), f"{path} is missing: run `{REGENERATE} {name}`"
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("example", example_params())
def test_example_has_the_form_the_program_prints_today(example, tmp_path):
    text = committed(example.name)
    assert text.startswith(f"$ {example.command}\n"), (
        f"docs/examples/{example.name}.txt was written for another command: run "
        f"`{REGENERATE} {example.name}`"
    )
    today = dataclasses.replace(
        example,
        command=one_thread(example.check or example.command),
        setup=tuple(one_thread(command) for command in example.setup),
    )
    output = docs_examples.run_example(today, tmp_path)
    expected, actual = docs_examples.form(docs_examples.output_of(text)), docs_examples.form(output)
    diff = "\n".join(difflib.unified_diff(expected, actual, "committed", "today", lineterm=""))
    assert expected == actual, (
        f"the output of `{today.command}` changed form since docs/examples/{example.name}.txt "
        f"was written; regenerate it with `{REGENERATE} {example.name}`:\n{diff}"
    )


def test_form_ignores_numbers_wrapping_and_the_data_dependent_wording():
    before = (
        "threads: 1 of 2 CPUs, the fastest measured (1: 4.9 ms/step, 2: 46.0 ms/step; 0.1 s)\n"
        "estimate: 1 min 5 s for 9380 steps\n"
        "activation  lr     seeds  final test acc  per seed %\n"
        "----------  -----  -----  --------------  ------------\n"
        "relu        0.001  3      80.97% ± 1.77   79.94, 83.01, 79.94\n"
        "verdict:\n"
        "  4 activations on digits, 3 seeds each. The best is tanh; it is\n"
        "  significantly better than sigmoid.\n"
    )
    after = (
        "threads: 4 of 8 CPUs, the fastest measured (1: 9.1 ms/step, 2: 5.0 ms/step, 4: 3.1"
        " ms/step; 0.2 s)\n"
        "estimate: 12 s for 23 steps\n"
        "the step time degraded: threads: 1 of 8 CPUs, the fastest measured (1: 9.1 ms/step)\n"
        "activation  lr      seeds  final test acc  per seed %\n"
        "----------  ------  -----  --------------  ------------------\n"
        "relu        0.0003  3      100.00% ± 0.00  100.00, 100.00, 100.00\n"
        "verdict:\n"
        "  4 activations on digits, 10 seeds each. The best is relu; it is not resolved\n"
        "  against tanh.\n"
    )
    assert docs_examples.form(before) == docs_examples.form(after)


@pytest.mark.parametrize(
    "changed",
    [
        ("final test acc", "final test accuracy"),  # a renamed column
        ("relu        0.001  3      80.97% ± 1.77", "relu        0.001  3      80.97%"),
        ("4 activations on digits", "4 activation functions on digits"),  # the verdict's opening
        ("estimate:", "time estimate:"),  # a renamed progress line
    ],
)
def test_form_sees_a_changed_format(changed):
    text = (
        "estimate: 1 min 5 s for 9380 steps\n"
        "activation  lr     seeds  final test acc\n"
        "relu        0.001  3      80.97% ± 1.77\n"
        "verdict:\n"
        "  4 activations on digits, 3 seeds each. The best is tanh.\n"
    )
    assert changed[0] in text
    assert docs_examples.form(text) != docs_examples.form(text.replace(*changed))


def test_every_example_is_shown_by_a_page_or_the_readme():
    pages = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "docs").glob("*.md")) + (
        ROOT / "README.md"
    ).read_text(encoding="utf-8")
    for example in docs_examples.EXAMPLES:
        assert f"examples/{example.name}.txt" in pages or (
            f"<!-- example: {example.name} -->" in pages
        ), f"docs/examples/{example.name}.txt is shown nowhere"
    included = set(re.findall(r'--8<-- "examples/([^"]+)\.txt"', pages))
    unknown = included - {example.name for example in docs_examples.EXAMPLES}
    assert not unknown, (
        f"pages include examples that scripts/docs_examples.py does not write: {unknown}"
    )


def test_readme_examples_are_the_committed_outputs():
    blocks = docs_examples.readme_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert blocks, "the README shows no example output from scripts/docs_examples.py"
    for name, body in blocks.items():
        assert body == committed(name), (
            f"the README's `{name}` block differs from docs/examples/{name}.txt: run `{REGENERATE}`"
        )


def test_readme_is_short_and_opens_with_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = readme.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the manual belongs in docs/"
    head = "\n".join(lines[:12])
    assert 'pip install torch==2.13.0 -e ".[dev]" && actlab compare --dataset fashion-mnist' in head
    assert "python -m pytest" in head
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^python -m pytest$", ci, flags=re.M), ".ci/run must run the README's tests"
    assert "mkdocs build --strict" in ci
