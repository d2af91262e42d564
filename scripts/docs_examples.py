"""Run every command the documentation shows and write what it prints into docs/examples/.

    python scripts/docs_examples.py               # all examples (a few minutes on 2 cores)
    python scripts/docs_examples.py compare-digits list   # only these
    python scripts/docs_examples.py --fast        # only the quick ones (digits, the catalog)

Each example is one real run with a small budget (sklearn's digits, or a subset of
Fashion-MNIST), in a scratch directory, so the paths in the commands are the ones shown.
docs/examples/NAME.txt holds `$ COMMAND` and then the output (stdout and stderr as a
terminal shows them); the pages include these files (pymdownx.snippets, `--8<--`), and the
README's example blocks between `<!-- example: NAME -->` and `<!-- /example -->` are
rewritten from them. `tests/test_docs.py` runs the commands again and compares the *form*
of each committed file with what the program prints today (`form()` below: numbers masked,
spacing and wrapping ignored), so a changed output format fails until this script is
rerun. `--screenshot` also renders the study's report.html into docs/report.png with
headless Chromium.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = ROOT / "docs" / "examples"
README = ROOT / "README.md"


@dataclass(frozen=True)
class Example:
    """One documented command. `setup` commands run first in the same scratch directory
    (their output is not shown); `fast` examples are checked by the quick test suite;
    `check`, when given, is a cheaper command whose output has the same form, which the
    test runs instead of a long `command`."""

    name: str
    command: str
    fast: bool = False
    setup: tuple[str, ...] = field(default_factory=tuple)
    check: str | None = None


FASHION = "--dataset fashion-mnist"
EXAMPLES: tuple[Example, ...] = (
    Example("list", "actlab list", fast=True),
    Example("show-leaky-relu", "actlab show leaky_relu", fast=True),
    Example(
        "plot",
        "actlab plot relu sigmoid tanh leaky_relu gelu -o activations.png --derivatives 0,1",
    ),
    # The README's study: the classic protocol on Fashion-MNIST (10 seeds, 10 epochs).
    Example(
        "compare-fashion",
        f"actlab compare {FASHION} --quiet",
        check=f"actlab compare {FASHION} --limit-train 2000 --limit-test 1000 --epochs 2 --quiet",
    ),
    Example("compare-digits", "actlab compare --dataset digits --epochs 2 --seeds 2", fast=True),
    Example(
        "compare-lr",
        "actlab compare --dataset digits --lr 3e-4,1e-3,3e-3 --seeds 3 --epochs 5 --quiet",
    ),
    Example(
        "compare-depths",
        "actlab compare --dataset digits --depths 2,4,8 --activations relu,sigmoid,tanh "
        "--seeds 3 --epochs 5 --quiet",
        check="actlab compare --dataset digits --depths 2,4,8 --activations relu,sigmoid,tanh "
        "--seeds 3 --epochs 2 --quiet",
    ),
    Example(
        "resume",
        "actlab compare --dataset digits --seeds 2 --epochs 3",
        setup=("actlab compare --dataset digits --seeds 2 --epochs 2 --quiet",),
    ),
    Example(
        "report-merge",
        "actlab report runs/seeds-0-2 runs/seeds-3-4 -o runs/merged/report.html",
        setup=(
            "actlab compare --dataset digits --epochs 3 --seeds 3 --quiet --out runs/seeds-0-2",
            "actlab compare --dataset digits --epochs 3 --seeds 3..4 --quiet --out runs/seeds-3-4",
        ),
    ),
    Example(
        "own-model-builder",
        "actlab compare --model docs/examples/my_net.py:build --dataset digits "
        "--activations relu,gelu,silu --seeds 5 --epochs 5 --quiet",
        check="actlab compare --model docs/examples/my_net.py:build --dataset digits "
        "--activations relu,gelu,silu --seeds 5 --epochs 2 --quiet",
    ),
    Example(
        "own-model-swap",
        "actlab compare --model examples/keras_mlp.py:KerasMLP --swap relu "
        f"{FASHION} --limit-train 5000 --activations relu,gelu,tanh --seeds 3 --epochs 2 --quiet",
    ),
    Example("python-api", "python docs/examples/python_api.py"),
)

# Output lines that depend on the machine and the moment (thread timings and their
# re-measurement under load, `the step time degraded: threads: ...`, the time estimate,
# progress): the form comparison leaves them out.
VOLATILE = re.compile(r"^(?:[\w ]+: )?(?:threads|step kernels|estimate|progress):")
# Lines that open a paragraph of prose whose wording follows the data (which pairs were
# resolved): the indented lines under it are compared by their first sentence only.
PROSE_HEADERS = ("verdict:",)
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def form(text: str) -> list[str]:
    """The shape of a program's output, without its numbers: what must not change unless the
    output format changes.

    Numbers become `#` (`# min # s` and `# h # min` become `# s`), runs of spaces and of
    dashes shrink to one, consecutive equal items of a comma-separated list merge (a list of
    per-seed values has the same form whatever its length), and machine-dependent lines
    (VOLATILE) are left out. The indented
    paragraph under a PROSE_HEADERS line is joined (a wrap moved by a longer number is no
    change) and kept to its first sentence: the rest of its wording follows the data."""
    lines: list[str] = []
    prose: set[int] = set()  # indices of the joined paragraphs
    in_prose = False
    for raw in text.splitlines():
        if not raw.strip():
            continue
        line = NUMBER.sub("#", raw.rstrip())
        line = re.sub(r"(# (h|min) )+# (s|min)", "# s", line)
        line = re.sub(r"-{2,}", "-", line)
        stripped = line.strip()
        if VOLATILE.match(stripped):
            continue
        items = " ".join(stripped.split()).split(", ")
        body = ", ".join(item for i, item in enumerate(items) if i == 0 or item != items[i - 1])
        indented = raw.startswith(" ")
        if in_prose and indented:
            lines[-1] = body if lines[-1] == "" else lines[-1] + " " + body
            continue
        in_prose = stripped in PROSE_HEADERS
        lines.append(("  " if indented else "") + body)
        if in_prose:
            prose.add(len(lines))
            lines.append("")
    return [_first_sentence(line) if i in prose else line for i, line in enumerate(lines)]


def _first_sentence(line: str) -> str:
    head, dot, _ = line.partition(". ")
    return head + dot


def run_example(example: Example, workdir: Path, env: dict[str, str] | None = None) -> str:
    """What `example.command` prints in `workdir` (after its setup commands), as shown."""
    env = {**os.environ, **(env or {})}
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("COLUMNS", "100")
    for link in ("examples", "docs"):
        target = workdir / link
        if not target.exists():
            target.symlink_to(ROOT / link)
    for command in example.setup:
        subprocess.run(shlex.split(command), cwd=workdir, env=env, check=True, capture_output=True)
    done = subprocess.run(
        shlex.split(example.command),
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"`{example.command}` exited {done.returncode}:\n{done.stdout}")
    return done.stdout


def shown(example: Example, output: str) -> str:
    """The text of docs/examples/NAME.txt: the command as typed, then its output."""
    return f"$ {example.command}\n{output.rstrip()}\n"


def output_of(text: str) -> str:
    """The output part of a docs/examples/NAME.txt (everything after the `$ ...` line)."""
    return text.split("\n", 1)[1] if text.startswith("$ ") else text


def readme_blocks(readme: str) -> dict[str, str]:
    """The README's example blocks by name: the text inside the ```text fence."""
    pattern = re.compile(r"<!-- example: (\S+) -->\n```text\n(.*?)```\n<!-- /example -->", re.S)
    return {match.group(1): match.group(2) for match in pattern.finditer(readme)}


def update_readme(readme: str, texts: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1)
        body = texts.get(name, match.group(2))
        return f"<!-- example: {name} -->\n```text\n{body}```\n<!-- /example -->"

    pattern = re.compile(r"<!-- example: (\S+) -->\n```text\n(.*?)```\n<!-- /example -->", re.S)
    return pattern.sub(replace, readme)


def screenshot(report: Path, target: Path) -> None:
    """The top of report.html as a reader sees it, rendered by headless Chromium."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from check_report import chromium_command, find_chromium

    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("no chromium found (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="actlab-shot-") as profile:
        command = chromium_command(
            chromium,
            profile,
            "--hide-scrollbars",
            "--window-size=1280,1190",
            f"--screenshot={target.resolve()}",
            report.resolve().as_uri(),
        )
        subprocess.run(command, check=True, capture_output=True, timeout=180)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="only these examples (default: all)")
    parser.add_argument("--fast", action="store_true", help="only the quick examples")
    parser.add_argument(
        "--screenshot", action="store_true", help="also render docs/report.png (needs chromium)"
    )
    args = parser.parse_args(argv)
    known = {example.name: example for example in EXAMPLES}
    unknown = [name for name in args.names if name not in known]
    if unknown:
        parser.error(f"unknown example(s) {', '.join(unknown)}; known: {', '.join(known)}")
    chosen = [known[name] for name in args.names] if args.names else list(EXAMPLES)
    if args.fast:
        chosen = [example for example in chosen if example.fast]
    EXAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    for example in chosen:
        with tempfile.TemporaryDirectory(prefix="actlab-docs-") as folder:
            start = time.perf_counter()
            text = shown(example, run_example(example, Path(folder)))
            (EXAMPLES_DIR / f"{example.name}.txt").write_text(text, encoding="utf-8")
            print(f"{example.name}: {time.perf_counter() - start:.1f} s", flush=True)
            if example.name == "plot":
                shutil.copyfile(Path(folder) / "activations.png", ROOT / "docs" / "activations.png")
            if example.name == "compare-fashion" and args.screenshot:
                report = Path(folder) / "runs" / "compare-fashion-mnist" / "report.html"
                screenshot(report, ROOT / "docs" / "report.png")
                print("report screenshot: docs/report.png", flush=True)
    # Every README block from its committed file, run now or before.
    texts = {path.stem: path.read_text(encoding="utf-8") for path in EXAMPLES_DIR.glob("*.txt")}
    README.write_text(update_readme(README.read_text(encoding="utf-8"), texts), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
