"""`actlab export`: run directories to TensorBoard and/or MLflow."""

from __future__ import annotations

import argparse

from actlab.cli.base import EXIT_OK, add_command, quiet_store_logs


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "export",
        "Export run directories to TensorBoard and/or MLflow (what they already hold is skipped).",
        "  actlab export runs/compare-fashion-mnist --tensorboard runs/tb\n"
        "  actlab export runs/compare-fashion-mnist --mlflow sqlite:///mlflow.db\n"
        "  actlab export runs/a runs/b --mlflow      # $MLFLOW_TRACKING_URI, else MLflow's default\n",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument(
        "--tensorboard",
        default=None,
        metavar="DIR",
        help="TensorBoard log directory: one run per member, scalars and HParams",
    )
    p.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        default=None,
        metavar="URI",
        help="MLflow tracking URI (without one: $MLFLOW_TRACKING_URI, else MLflow's default); "
        "a parent run per study, a nested run per member",
    )
    p.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from actlab.export.targets import export_run

    targets = {
        kind: where
        for kind, where in (("tensorboard", args.tensorboard), ("mlflow", args.mlflow))
        if where is not None
    }
    quiet_store_logs()
    for run_dir in args.run_dirs:
        for line in export_run(run_dir, targets):
            print(f"{run_dir}: {line}")
    return EXIT_OK
