"""`actlab list`, `actlab show`, `actlab plot`: the catalog of activations."""

from __future__ import annotations

import argparse

from actlab.cli.base import EXIT_OK, add_command
from actlab.errors import ConfigError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "list", "Table of every activation in the catalog.", "  actlab list\n")
    p.set_defaults(handler=cmd_list)

    p = add_command(
        sub,
        "show",
        "Formula, defaults, Keras differences and properties of one activation.",
        "  actlab show gelu\n  actlab show 'leaky_relu(negative_slope=0.2)'\n  actlab show 'expr:x * sigmoid(1.702 * x)'\n",
    )
    p.add_argument("name", help="a catalog name, alias, Keras name, spec string or expr:...")
    p.set_defaults(handler=cmd_show)

    p = add_command(
        sub,
        "plot",
        "Plot activations and their derivatives (by autograd) into one figure file.",
        "  actlab plot relu sigmoid tanh leaky_relu -o act.png\n"
        "  actlab plot gelu silu mish --range -4,4 --derivatives 0,1,2 -o smooth.svg\n",
    )
    p.add_argument("names", nargs="+", help="activation specs")
    p.add_argument(
        "--range",
        nargs="+",
        default="-5,5",
        metavar="LO,HI",
        help="x range, as LO,HI (--range -6,6 or --range=-6,6) or LO HI (--range -6 6)",
    )
    p.add_argument("--derivatives", default="0,1", help="orders to draw, from 0,1,2")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="the figure file: .png, .svg, .pdf, .jpg; default activations.png",
    )
    p.set_defaults(handler=cmd_plot)


def cmd_list(args: argparse.Namespace) -> int:
    from actlab.cli.catalog_text import list_text

    print(list_text())
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from actlab.cli.catalog_text import describe

    print(describe(args.name))
    return EXIT_OK


def parse_range(values: str | list[str]) -> tuple[float, float]:
    """``-6,6`` or ``["-6", "6"]`` -> (-6.0, 6.0); one line naming --range otherwise."""
    parts = values.split(",") if isinstance(values, str) else list(values)
    if len(parts) == 1:
        parts = parts[0].split(",")
    try:
        low, high = (float(part) for part in parts)
    except ValueError:
        raise ConfigError(
            f"--range {' '.join(values) if isinstance(values, list) else values}: give the x "
            "range as LO,HI, e.g. --range -6,6"
        ) from None
    return low, high


def cmd_plot(args: argparse.Namespace) -> int:
    from actlab.report.plots import plot_activations, save_figure

    try:
        orders = tuple(int(part) for part in args.derivatives.split(","))
    except ValueError:
        raise ConfigError(
            f"--derivatives {args.derivatives!r} must be orders from 0,1,2 separated by commas, e.g. 0,1"
        ) from None
    figure = plot_activations(args.names, parse_range(args.range), orders)
    path = save_figure(figure, args.output or "activations.png")
    print(f"wrote {path}" + ("" if args.output else " (choose the file with -o FILE)"))
    return EXIT_OK
