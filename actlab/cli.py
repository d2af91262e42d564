"""The `actlab` command: parse, call one library function, print. Nothing else lives here.

Exit codes: 0 success; 2 a user error (one line on stderr, no traceback);
3 the study finished but some members diverged; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from actlab.errors import ActlabError

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130

EPILOG = """examples:
  actlab list
  actlab show leaky_relu
  actlab plot relu sigmoid tanh leaky_relu -o act.png
  actlab datasets
  actlab compare --dataset fashion-mnist --seeds 3 --epochs 3
  actlab report runs/compare
  actlab bench relu gelu tanh
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actlab",
        description="The activation-function laboratory for PyTorch.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, examples: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=help,
            epilog="examples:\n" + examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    # --- catalog -------------------------------------------------------------------------
    p = command("list", "Table of every activation in the catalog.", "  actlab list\n")
    p.set_defaults(handler=cmd_list)

    p = command(
        "show",
        "Formula, defaults, Keras differences and properties of one activation.",
        "  actlab show gelu\n  actlab show 'leaky_relu(negative_slope=0.2)'\n  actlab show 'expr:x * sigmoid(1.702 * x)'\n",
    )
    p.add_argument("name", help="a catalog name, alias, Keras name, spec string or expr:...")
    p.set_defaults(handler=cmd_show)

    p = command(
        "plot",
        "Plot activations and their derivatives (by autograd) into one figure file.",
        "  actlab plot relu sigmoid tanh leaky_relu -o act.png\n"
        "  actlab plot gelu silu mish --range -4 4 --derivatives 0,1,2 -o smooth.svg\n",
    )
    p.add_argument("names", nargs="+", help="activation specs")
    p.add_argument("--range", nargs=2, type=float, default=(-5.0, 5.0), metavar=("LO", "HI"))
    p.add_argument("--derivatives", default="0,1", help="orders to draw, from 0,1,2 (default 0,1)")
    p.add_argument("-o", "--output", default="activations.png", help="out.png or out.svg")
    p.set_defaults(handler=cmd_plot)

    # --- data ----------------------------------------------------------------------------
    p = command(
        "datasets",
        "List datasets: where each was found (or how to get it), sizes, checksum status.",
        "  actlab datasets\n  actlab datasets --data-dir ~/data\n",
    )
    p.add_argument("--data-dir", default=None, help="look here first (then $ACTLAB_DATA, ~/.cache/actlab, system folders)")
    p.set_defaults(handler=cmd_datasets)

    # --- experiment ----------------------------------------------------------------------
    p = command(
        "compare",
        "Train the same network once per activation (x lr x seed) as one stacked model.",
        "  actlab compare                                   # the classic protocol on MNIST\n"
        "  actlab compare --dataset fashion-mnist --seeds 3 --epochs 3\n"
        "  actlab compare --activations relu,gelu,'expr:x*sigmoid(1.702*x)' --seeds 5\n"
        "  actlab compare --lr 3e-4,1e-3,3e-3 --select val --val-size 5000\n"
        "  actlab compare --depths 2,4,8,16 --activations relu,sigmoid,tanh\n",
    )
    add_compare_arguments(p)
    p.set_defaults(handler=cmd_compare)

    p = command(
        "report",
        "Rebuild report.html and report.md from one or more run directories.",
        "  actlab report runs/compare\n  actlab report runs/a runs/b -o merged.html\n",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--output", default=None, help="HTML file (default RUN_DIR/report.html)")
    p.set_defaults(handler=cmd_report)

    # --- explanation ---------------------------------------------------------------------
    p = command(
        "bench",
        "Time forward and forward+backward of each activation; peak memory with/without inplace.",
        "  actlab bench\n  actlab bench relu gelu tanh --size 4194304 --dtype bfloat16\n",
    )
    p.add_argument("names", nargs="*", help="activation specs (default: the whole catalog)")
    p.add_argument("--size", type=int, default=None, help="elements per tensor")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "float64"))
    p.add_argument("-o", "--output", default="bench.csv", help="CSV file to write")
    p.set_defaults(handler=cmd_bench)
    return parser


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist, kmnist, digits, cifar10, npz:PATH, idx:DIR")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-download", action="store_true", help="never download; fail if the files are not found")
    p.add_argument("--val-size", type=int, default=0, help="hold out this many train samples for validation")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N train samples (quick runs)")
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--standardize", action="store_true", help="standardise inputs with train mean/std (default: x/255)")
    p.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
    p.add_argument("--hidden", default="128,128", help="hidden widths, e.g. 128,128")
    p.add_argument("--depths", default=None, help="depth study, e.g. 2,4,8,16 (width = first --hidden)")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--init", default="pytorch", choices=("pytorch", "glorot", "kaiming", "lecun"))
    p.add_argument("--init-gain", action="store_true", help="scale init by the activation's recommended gain")
    p.add_argument("--activations", default="relu,sigmoid,tanh,leaky_relu", help="comma-separated catalog specs")
    p.add_argument("--seeds", default="1", help="a count N (seeds 0..N-1) or a list like 0,1,7")
    p.add_argument("--lr", default="1e-3", help="one lr or a list, e.g. 1e-4,3e-4,1e-3")
    p.add_argument("--select", default="final", choices=("final", "val"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd"))
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-diagnostics", action="store_true", help="skip gradient/dead-unit/saturation diagnostics")
    p.add_argument("--out", default=None, help="run directory (default runs/compare-<dataset>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last complete epoch")
    p.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


# --- handlers: each calls one library function and prints --------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from actlab.catalog import format_table

    print(format_table())
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from actlab.catalog import describe

    print(describe(args.name))
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from actlab.errors import ConfigError
    from actlab.plots import plot_activations, save_figure

    try:
        orders = tuple(int(part) for part in args.derivatives.split(","))
    except ValueError:
        raise ConfigError(
            f"--derivatives {args.derivatives!r} must be orders from 0,1,2 separated by commas, e.g. 0,1"
        ) from None
    figure = plot_activations(args.names, tuple(args.range), orders)
    print(save_figure(figure, args.output))
    return EXIT_OK


def cmd_datasets(args: argparse.Namespace) -> int:
    from actlab.data import format_dataset_table, list_datasets

    print(format_dataset_table(list_datasets(args.data_dir)))
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    raise NotImplementedError("actlab compare")


def cmd_report(args: argparse.Namespace) -> int:
    from actlab.report import write_run_report
    from actlab.store import merge_runs

    run = merge_runs(args.run_dirs)
    path = write_run_report(run, args.output)
    for problem in run.problems:
        print(f"actlab: warning: {problem}", file=sys.stderr)
    print(path)
    print(path.with_suffix(".md"))
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    import time

    from actlab.bench import check_output, describe_run, format_table, run_bench, write_csv

    check_output(args.output)  # before minutes of timing, not after
    start = time.perf_counter()
    rows = run_bench(args.names, args.size, args.device, args.dtype)
    print(format_table(rows))
    print(describe_run(rows, time.perf_counter() - start))
    print(f"wrote {write_csv(rows, args.output)}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ActlabError as error:
        print(f"actlab: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("actlab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
