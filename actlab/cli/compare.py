"""`actlab compare`: train the same network once per activation (x lr x seed) as one stacked
model, then print the report's summary table and verdict.

Its options are generated (actlab.cli.options) from the fields of ExperimentConfig, which
decide the numbers, and of RunOptions below, which decide where and how the study runs: a
new option is a new field with `option(...)` metadata. `actlab compare` with no options and
`actlab.compare()` with no arguments run the same study.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from actlab.cli.base import (
    EXIT_DIVERGED,
    EXIT_OK,
    add_command,
    note,
    quiet_store_logs,
    warn,
)
from actlab.cli.options import add_options, values_from
from actlab.cli.progress import CompareProgress, print_shards
from actlab.config import ExperimentConfig, option
from actlab.errors import ConfigError

EXAMPLES = (
    "  actlab compare                                   # the classic protocol on MNIST\n"
    "  actlab compare --dataset fashion-mnist --seeds 3 --epochs 3\n"
    "  actlab compare --activations relu,gelu,'expr:x*sigmoid(1.702*x)' --seeds 5\n"
    "  actlab compare --lr 3e-4,1e-3,3e-3 --select val --val-size 5000\n"
    "  actlab compare --depths 2,4,8,16 --activations relu,sigmoid,tanh\n"
    "  actlab compare --model my_net.py:build --activations relu,gelu,silu --seeds 5\n"
    "  actlab compare --model my_net.py:Net --swap relu --activations relu,gelu,mish\n"
    "  actlab compare --seeds 5 --lr 3e-4,1e-3,3e-3 --ray HEAD:6379   # on a Ray cluster\n"
)


@dataclass(frozen=True)
class RunOptions:
    """The options of `actlab compare` that are not part of the study's configuration."""

    seed_start: int = option(
        0, "the first seed of a count: --seeds 2 --seed-start 3 means seeds 3,4", group="members"
    )
    out: str | None = option(None, "run directory; default runs/compare-<dataset>", group="run")
    resume: bool = option(
        False, "continue the run in --out from its last complete epoch", group="run"
    )
    report: bool = option(True, "do not write report.html at the end", group="run")
    ray: str | None = option(
        None,
        "train shards of members on a Ray cluster: auto (RAY_ADDRESS or a local "
        "`ray start --head`, the default with a bare --ray), local (a cluster for this run), "
        'or HOST:PORT; needs pip install "actlab[ray]"',
        group="execution",
        metavar="ADDRESS",
        nargs="?",
        const="auto",
    )
    shard_size: int | None = option(
        None,
        "with --ray: members per shard, rounded down to whole seeds (default: enough "
        "shards to fill the cluster's GPUs, else its CPUs)",
        group="execution",
    )
    checkpoint_every: int = option(
        1, "with --ray: epochs between shard checkpoints sent to the driver", group="execution"
    )
    log: tuple[str, ...] = option(
        (),
        "also log each epoch live to tensorboard[=DIR] (default runs/tb) and/or "
        "mlflow[=URI] (default $MLFLOW_TRACKING_URI, else MLflow's default); repeatable",
        group="run",
        metavar="TARGET",
        action="append",
    )
    quiet: bool = option(False, "no progress bar or per-epoch lines", group="run")
    verbose: bool = option(
        False, "each epoch, one line per member (losses and accuracy), not one in all", group="run"
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "compare",
        "Train the same network once per activation (x lr x seed) as one stacked model.",
        EXAMPLES,
    )
    groups = add_options(p, ExperimentConfig)
    add_options(p, RunOptions, groups)
    p.set_defaults(handler=cmd_compare)


def config_from_args(args: argparse.Namespace, user=None) -> ExperimentConfig:
    """The study's configuration from parsed arguments (and the user's loaded model)."""
    values = values_from(args, ExperimentConfig)
    if user is not None:
        from actlab.nn.user_model import own_objective

        values.update(model_source=user.source, model_sha256=user.sha256)
        for name, value in own_objective(user).items():  # --loss/--metric given win
            if values.get(name) is None:
                values[name] = value
    return ExperimentConfig(**values)


def cmd_compare(args: argparse.Namespace) -> int:
    """Check everything that can be checked before the data are loaded, train (resuming
    the run directory), print the summary and verdict, write the report."""
    from actlab.config import MODELS
    from actlab.study.driver import load_study_dataset

    run = RunOptions(**values_from(args, RunOptions))
    user = None
    if args.model not in MODELS:
        from actlab.nn.user_model import load

        user = load(args.model)
    config = config_from_args(args, user)
    config.check_activations()
    if config.model == "gpt":
        from actlab.nn.gpt import parameter_line

        print(parameter_line(config))
    check_ray_options(run, config)
    out = run.out or default_out(config.dataset, user.name if user else None)
    if user is not None:
        from actlab.nn.user_model import describe, parameter_line

        print(describe(user, config.activations[0], config.swap))
        print(parameter_line(user, config.activations, config.swap))
    log_specs = None
    if run.log:
        from actlab.export.targets import parse_log_specs

        log_specs = parse_log_specs(list(run.log))  # a missing package fails before training
        quiet_store_logs()
    dataset = load_study_dataset(config, progress=not run.quiet)
    result, live_log = train_study(config, run, out, dataset, log_specs)
    if result.already_complete:
        print(f"{out}: already complete ({config.epochs} epochs); nothing to train")
    print_outcome(config, run, out)
    if live_log is not None:  # after the report: MLflow keeps it as an artifact
        for line in live_log.close():
            print(f"logged to {line}")
    if result.diverged:  # also when rerun on a finished run: the exit code is the study's
        print("some members diverged (loss NaN/inf or exploding); see status in metrics.csv")
        return EXIT_DIVERGED
    return EXIT_OK


def check_ray_options(run: RunOptions, config: ExperimentConfig) -> None:
    """Ray's options, before the dataset is loaded: bad options, no Ray, or no cluster at
    the address."""
    if run.ray is None and (run.shard_size is not None or run.checkpoint_every != 1):
        raise ConfigError("--shard-size and --checkpoint-every apply with --ray only; add --ray")
    if run.ray is not None:
        from actlab.study.cluster import check_options, check_reachable, import_ray

        check_options(run.ray, run.shard_size, run.checkpoint_every)
        import_ray()
        check_reachable(run.ray)


def train_study(config: ExperimentConfig, run: RunOptions, out: str, dataset, log_specs):
    """Run the study, locally or on Ray, with the progress lines and live logs asked for.
    Returns (StudyResult, the live log or None)."""
    progress = None if run.quiet else CompareProgress(verbose=run.verbose, task=config.task)
    live_log = None
    if log_specs:
        from actlab.export.live import LiveLog

        live_log = LiveLog(log_specs, out, warn=warn)
    on_epoch = [f for f in (progress and progress.epoch, live_log and live_log.on_epoch) if f]
    hooks = {
        "on_start": progress.start if progress else None,
        "on_epoch": (lambda r: [f(r) for f in on_epoch]) if on_epoch else None,
        "on_note": note,
    }
    try:
        if run.ray is not None:
            from actlab.study.cluster import run_study_on_ray

            result = run_study_on_ray(
                config, address=run.ray, out=out, resume=run.resume, dataset=dataset,
                shard_size=run.shard_size, checkpoint_every=run.checkpoint_every,
                on_progress=progress.advance if progress else None,
                on_shards=None if run.quiet else print_shards,
                on_resume=progress.write if progress else None, **hooks,
            )  # fmt: skip
        else:
            from actlab.study.driver import run_study

            result = run_study(
                config, out=out, resume=run.resume, dataset=dataset,
                on_step=progress.step if progress else None,
                on_plan=progress.plan if progress else None,
                on_threads=progress.threads if progress else None, **hooks,
            )  # fmt: skip
    except KeyboardInterrupt:
        if live_log is not None:
            live_log.close(stall_timeout=5.0)  # what the run directory holds, if quickly done
        raise KeyboardInterrupt(
            f"interrupted; the run directory {out} keeps every finished epoch: rerun the "
            "same command to resume"
        ) from None
    except BaseException:
        if live_log is not None:
            live_log.close(stall_timeout=5.0)
        raise
    finally:
        if progress is not None:
            progress.close()
    return result, live_log


def print_outcome(config: ExperimentConfig, run: RunOptions, out: str) -> None:
    """The report's summary table and verdict (from the report's own analysis, as
    report.html shows them); the report's path unless --no-report."""
    from actlab.cli.report import print_summary, print_verdict
    from actlab.report.render import with_min_gap, write_run_report
    from actlab.study.store import read_run

    data = with_min_gap(read_run(out), config.min_gap)
    print_summary(data)
    if run.report:
        print(f"report: {write_run_report(data)}")
    print_verdict(data)


def default_out(dataset: str, model: str | None = None) -> str:
    """runs/compare-<dataset>; for npz:PATH, idx:DIR and text:PATH, the file or folder name;
    a user model's NAME is appended (runs/compare-fashion-mnist-resnet8)."""
    name = dataset
    if dataset.startswith(("npz:", "idx:")):
        name = dataset[:3] + "-" + Path(dataset[4:]).stem
    elif dataset.startswith("text:"):  # text:corpus/shakespeare.txt -> text-shakespeare
        name = "text-" + Path(dataset[5:]).stem
    if model:
        name += "-" + model
    return "runs/compare-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
