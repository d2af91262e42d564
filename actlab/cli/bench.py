"""`actlab bench`: time each activation's forward and forward+backward; peak memory."""

from __future__ import annotations

import argparse

from actlab.cli.base import EXIT_OK, add_command


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "bench",
        "Time forward and forward+backward of each activation; peak memory with/without inplace.",
        "  actlab bench\n  actlab bench relu gelu tanh --size 4194304 --dtype bfloat16\n",
    )
    p.add_argument("names", nargs="*", help="activation specs (default: the whole catalog)")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="elements per tensor; default 4 Mi on a GPU, 1 Mi on a CPU",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to time")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16", "float64"),
        help="element type",
    )
    p.add_argument("-o", "--output", default="bench.csv", help="CSV file to write")
    p.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    import time

    from actlab.engine.bench import check_output, describe_run, format_table, run_bench, write_csv

    check_output(args.output)  # before minutes of timing, not after
    start = time.perf_counter()
    rows = run_bench(args.names, args.size, args.device, args.dtype)
    print(format_table(rows))
    print(describe_run(rows, time.perf_counter() - start))
    print(
        f"wrote {write_csv(rows, args.output)} (every column, memory in bytes; -o FILE to choose)"
    )
    return EXIT_OK
