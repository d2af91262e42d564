"""The `actlab` command: parse, call one library function, print. Nothing else lives here.

One module per verb (catalog: list/show/plot; datasets; compare; report; export; extract; bench),
each with its parser and its one handler; `actlab compare`'s options are generated from
ExperimentConfig (actlab.cli.options). Exit codes are in actlab.cli.base. A closed stdout
(``actlab list | head -1``) never stops the work: output is dropped, the run directory and
report are still written.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Sequence

from actlab.cli import bench, catalog, compare, datasets, export, extract, report
from actlab.cli.base import (
    EXIT_DIVERGED,
    EXIT_ENVIRONMENT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USER_ERROR,
    OneLineParser,
    PipeSafe,
    one_line,
    os_error_text,
)
from actlab.cli.compare import default_out
from actlab.cli.options import parse_seeds, split_specs
from actlab.cli.report import merge_line
from actlab.errors import ActlabError

__all__ = [
    "EXIT_DIVERGED", "EXIT_ENVIRONMENT", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USER_ERROR",
    "build_parser", "default_out", "main", "merge_line", "parse_seeds", "split_specs",
]  # fmt: skip

EPILOG = """examples:
  actlab list
  actlab show leaky_relu
  actlab plot relu sigmoid tanh leaky_relu -o act.png
  actlab datasets
  actlab compare --dataset fashion-mnist --seeds 3 --epochs 3
  actlab report runs/compare-fashion-mnist
  actlab export runs/compare-fashion-mnist --tensorboard runs/tb --mlflow sqlite:///mlflow.db
  actlab bench relu gelu tanh
"""


def build_parser() -> argparse.ArgumentParser:
    from actlab import __version__

    parser = OneLineParser(
        prog="actlab",
        description="The activation-function laboratory for PyTorch.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"actlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb in (catalog, datasets, compare, report, export, extract, bench):
        verb.add_parsers(sub)
    return parser


# A value that starts like a negative number and holds a comma (``--range -6,6``): argparse
# takes it for an option; written ``--range=-6,6`` it is the option's value.
_NEGATIVE_LIST = re.compile(r"-\.?\d[\w.+-]*,")


def attach_negative_values(argv: Sequence[str]) -> list[str]:
    """``--range -6,6`` -> ``--range=-6,6`` (the value of a long option, not an option)."""
    out: list[str] = []
    for arg in argv:
        previous = out[-1] if out else ""
        if previous.startswith("--") and "=" not in previous and _NEGATIVE_LIST.match(arg):
            out[-1] = f"{previous}={arg}"
        else:
            out.append(arg)
    return out


def _show_notices(message, category, filename, lineno, file=None, line=None) -> None:
    """actlab's notices (e.g. members trained one by one) as one line, without the source
    location; other warnings as Python shows them."""
    from actlab.errors import ModelNotice

    if issubclass(category, ModelNotice):
        print(f"actlab: note: {message}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(attach_negative_values(sys.argv[1:] if argv is None else argv))
    if args.command is None:  # `actlab` alone: what it can do, not an error
        parser.print_help()
        return EXIT_OK
    stdout = sys.stdout
    sys.stdout = PipeSafe(stdout)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_notices
            return args.handler(args)
    except ActlabError as error:
        print(f"actlab: error: {one_line(str(error))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as error:
        print(f"actlab: error: {os_error_text(error)}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt as interrupt:
        print(f"actlab: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        sys.stdout.flush()
        sys.stdout = stdout


if __name__ == "__main__":
    raise SystemExit(main())
