"""`actlab datasets`: where each dataset was found (or how to get it)."""

from __future__ import annotations

import argparse

from actlab.cli.base import EXIT_OK, add_command


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "datasets",
        "List datasets: where each was found (or how to get it), sizes, checksum status.",
        "  actlab datasets\n  actlab datasets --data-dir ~/data\n",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="look here first (then $ACTLAB_DATA, ~/.cache/actlab, system folders)",
    )
    p.set_defaults(handler=cmd_datasets)


def cmd_datasets(args: argparse.Namespace) -> int:
    from actlab.data.datasets import format_dataset_table, list_datasets

    print(format_dataset_table(list_datasets(args.data_dir)))
    print(
        "also: --dataset text:PATH (any UTF-8 file; with --net gpt), npz:FILE and idx:FOLDER "
        "(your own arrays)"
    )
    return EXIT_OK
