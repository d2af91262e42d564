"""The `actlab` command: parse, call one library function, print. Nothing else lives here.

Exit codes: 0 success; 1 an environment failure (a full disk, a read-only or missing
path: one line on stderr naming the path); 2 a user error (one line on stderr, no
traceback); 3 the study finished but some members diverged; 130 interrupted (Ctrl-C).
A closed stdout (``actlab list | head -1``) never stops the work: output is dropped, the
run directory and report are still written.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from actlab.config import ExperimentConfig
from actlab.errors import ActlabError, ConfigError

EXIT_OK = 0
EXIT_ENVIRONMENT = 1
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
# `actlab compare`'s seeds: with 3, the paired tests over 6 pairs (Holm) detect only gaps of
# several SDs of the per-seed differences; see docs/statistics.md and benchmarks/stats_power.py.
DEFAULT_SEEDS = 10

EPILOG = """examples:
  actlab list
  actlab show leaky_relu
  actlab plot relu sigmoid tanh leaky_relu -o act.png
  actlab datasets
  actlab compare --dataset fashion-mnist --seeds 3 --epochs 3
  actlab report runs/compare
  actlab export runs/compare --tensorboard runs/tb --mlflow sqlite:///mlflow.db
  actlab bench relu gelu tanh
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written, and every option's default shown in --help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if isinstance(action, argparse._StoreTrueAction | argparse._VersionAction):
            return action.help  # "(default: False)" says nothing
        if action.default is None:
            return action.help  # "(default: None)" says nothing; the help says what it means
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (exit 2) that says where help is, like every
    other error of actlab, instead of the usage block followed by the error."""

    def error(self, message: str):
        self.exit(
            EXIT_USER_ERROR, f"{self.prog}: error: {one_line(message)}; see `{self.prog} --help`\n"
        )


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

    def command(name: str, help: str, examples: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=help,
            epilog="examples:\n" + examples,
            formatter_class=HelpFormatter,
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
    p.add_argument(
        "--range", nargs=2, type=float, default=(-5.0, 5.0), metavar=("LO", "HI"), help="x range"
    )
    p.add_argument("--derivatives", default="0,1", help="orders to draw, from 0,1,2")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="the figure file: .png, .svg, .pdf, .jpg; default activations.png",
    )
    p.set_defaults(handler=cmd_plot)

    # --- data ----------------------------------------------------------------------------
    p = command(
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

    # --- experiment ----------------------------------------------------------------------
    p = command(
        "compare",
        "Train the same network once per activation (x lr x seed) as one stacked model.",
        "  actlab compare                                   # the classic protocol on MNIST\n"
        "  actlab compare --dataset fashion-mnist --seeds 3 --epochs 3\n"
        "  actlab compare --activations relu,gelu,'expr:x*sigmoid(1.702*x)' --seeds 5\n"
        "  actlab compare --lr 3e-4,1e-3,3e-3 --select val --val-size 5000\n"
        "  actlab compare --depths 2,4,8,16 --activations relu,sigmoid,tanh\n"
        "  actlab compare --model my_net.py:build --activations relu,gelu,silu --seeds 5\n"
        "  actlab compare --model my_net.py:Net --swap relu --activations relu,gelu,mish\n"
        "  actlab compare --seeds 5 --lr 3e-4,1e-3,3e-3 --ray HEAD:6379   # on a Ray cluster\n",
    )
    add_compare_arguments(p)
    p.set_defaults(handler=cmd_compare)

    p = command(
        "report",
        "Rebuild report.html and report.md from one or more run directories.",
        "  actlab report runs/compare\n  actlab report runs/a runs/b -o merged.html\n",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--output", default=None, help="HTML file; default RUN_DIR/report.html")
    p.add_argument(
        "--min-gap",
        type=float,
        default=None,
        metavar="PP",
        help="the smallest accuracy gap that matters, in percentage points; default: the one "
        "the run recorded",
    )
    p.set_defaults(handler=cmd_report)

    p = command(
        "export",
        "Export run directories to TensorBoard and/or MLflow (what they already hold is skipped).",
        "  actlab export runs/compare --tensorboard runs/tb\n"
        "  actlab export runs/compare --mlflow sqlite:///mlflow.db\n"
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

    from actlab.cli.extract import add_command as add_extract_command

    add_extract_command(command)

    # --- explanation ---------------------------------------------------------------------
    p = command(
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
    return parser


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default="mnist",
        help="mnist, fashion-mnist, kmnist, digits, cifar10, npz:PATH, idx:DIR, or a text corpus "
        "for --net gpt: text:PATH (a UTF-8 file) or text:stdlib (Python's own source)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="look here first; default $ACTLAB_DATA, the cache, /usr/share/datasets",
    )
    p.add_argument(
        "--no-download", action="store_true", help="never download; fail if the files are not found"
    )
    p.add_argument(
        "--val-size",
        type=float,
        default=None,
        help="hold out this many train samples (or this fraction, e.g. 0.1) for validation; "
        "default 0.1 with --select val, else none",
    )
    p.add_argument(
        "--limit-train",
        type=int,
        default=None,
        help="use only the first N train samples (quick runs); default all",
    )
    p.add_argument(
        "--limit-test",
        type=int,
        default=None,
        help="use only the first N test samples; default all",
    )
    p.add_argument(
        "--standardize",
        action="store_true",
        help="standardise inputs with train mean/std (default: x/255)",
    )
    p.add_argument(
        "--model",
        "--net",
        dest="model",
        default="mlp",
        help="mlp, cnn, gpt (a decoder-only transformer; needs --dataset text:PATH), or your own network: FILE.py:NAME or module.path:NAME, where NAME is "
        "a builder taking the activation factory (def build(act)) or an nn.Module class / "
        "zero-argument factory whose activations are swapped (see --swap)",
    )
    p.add_argument(
        "--swap",
        default=None,
        help="with your own nn.Module: the activations to replace, e.g. relu or relu,MyAct "
        "(default: every catalog activation module found, and F.relu/torch.relu/x.relu()-style "
        "calls of the rectifier family: relu, gelu, silu, elu, mish, ...)",
    )
    p.add_argument("--hidden", default="128,128", help="hidden widths, e.g. 256,128,64")
    p.add_argument(
        "--width", type=int, default=ExperimentConfig.width, help="--net gpt: model width"
    )
    p.add_argument("--layers", type=int, default=ExperimentConfig.layers, help="--net gpt: blocks")
    p.add_argument(
        "--heads", type=int, default=ExperimentConfig.heads, help="--net gpt: attention heads"
    )
    p.add_argument(
        "--context",
        type=int,
        default=ExperimentConfig.context,
        help="--net gpt: context in tokens (bytes), the length of a training window",
    )
    p.add_argument(
        "--depths", default=None, help="depth study, e.g. 2,4,8,16 (width = first --hidden)"
    )
    p.add_argument(
        "--dropout", type=float, default=0.0, help="dropout after each hidden activation"
    )
    p.add_argument(
        "--output-activation",
        default=None,
        help="refused unless 'linear': the model outputs logits for cross-entropy "
        "(a softmax here would be a double softmax)",
    )
    p.add_argument(
        "--init",
        default="pytorch",
        choices=("pytorch", "glorot", "kaiming", "lecun"),
        help="weight initialisation (glorot is Keras' default)",
    )
    p.add_argument(
        "--init-gain", action="store_true", help="scale init by the activation's recommended gain"
    )
    p.add_argument(
        "--activations",
        default="relu,sigmoid,tanh,leaky_relu",
        help="comma-separated catalog specs",
    )
    p.add_argument(
        "--seeds",
        default=str(DEFAULT_SEEDS),
        help="a count N (seeds 0..N-1, or from --seed-start), a range A..B (inclusive, e.g. "
        "3..4 to add two seeds to a run of --seeds 3) or a list like 0,1,7. All seeds train as "
        "one stacked model; on Fashion-MNIST's classic MLP, 10 detect gaps of about 0.6 pp",
    )
    p.add_argument(
        "--seed-start",
        type=int,
        default=0,
        help="the first seed of a count: --seeds 2 --seed-start 3 means seeds 3,4",
    )
    p.add_argument(
        "--min-gap",
        type=float,
        default=ExperimentConfig.min_gap,
        metavar="PP",
        help="the smallest accuracy gap that matters, in percentage points (a language model: "
        "in hundredths of a bit per character): the report says how many seeds would detect "
        "it, and calls two activations practically equivalent only when a TOST shows their "
        "gap is inside it",
    )
    p.add_argument("--lr", default="1e-3", help="one lr or a list, e.g. 1e-4,3e-4,1e-3")
    p.add_argument(
        "--select",
        default="auto",
        choices=("auto", "final", "val"),
        help="val: choose each activation's lr on the validation split (never the test set); "
        "auto: val when several --lr are given, else final",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=10,
        help="epochs to train; rerun a finished study with more to continue it",
    )
    p.add_argument("--batch-size", type=int, default=64, help="training batch size")
    p.add_argument(
        "--optimizer", default="adam", choices=("adam", "adamw", "sgd"), help="the optimizer"
    )
    p.add_argument("--weight-decay", type=float, default=0.0, help="(adamw, sgd)")
    p.add_argument("--momentum", type=float, default=0.9, help="(sgd)")
    p.add_argument(
        "--schedule",
        default=ExperimentConfig.schedule,
        choices=("constant", "cosine"),
        help="learning-rate schedule per member: constant, or cosine decay to 0 at the end",
    )
    p.add_argument("--warmup", type=int, default=0, help="steps of linear lr warm-up (default 0)")
    p.add_argument(
        "--clip",
        type=float,
        default=None,
        metavar="NORM",
        help="clip each member's gradient to this global norm (default: no clipping)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads; default: the fastest count, measured on a few steps of the "
        "study's own model (fewer than the cores when the machine is busy)",
    )
    p.add_argument(
        "--stacking",
        default="auto",
        choices=("auto", "vmap", "loop"),
        help="your own model: run each activation's members as one vmapped call, or member by "
        "member inside each step; auto: vmap on a GPU, member by member on a CPU (faster there)",
    )
    p.add_argument(
        "--no-diagnostics",
        action="store_true",
        help="skip gradient/dead-unit/saturation diagnostics",
    )
    p.add_argument("--out", default=None, help="run directory; default runs/compare-<dataset>")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last complete epoch",
    )
    p.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    p.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="ADDRESS",
        help="train shards of members on a Ray cluster: auto (RAY_ADDRESS or a local "
        "`ray start --head`, the default with a bare --ray), local (a cluster for this run), "
        'or HOST:PORT; needs pip install "actlab[ray]"',
    )
    p.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="with --ray: members per shard, rounded down to whole seeds (default: enough "
        "shards to fill the cluster's GPUs, else its CPUs)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=1,
        help="with --ray: epochs between shard checkpoints sent to the driver (default 1)",
    )
    p.add_argument(
        "--log",
        action="append",
        default=[],
        metavar="TARGET",
        help="also log each epoch live to tensorboard[=DIR] (default runs/tb) and/or "
        "mlflow[=URI] (default $MLFLOW_TRACKING_URI, else MLflow's default); repeatable",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


# --- handlers: each calls one library function and prints --------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from actlab.cli.catalog_text import list_text

    print(list_text())
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from actlab.cli.catalog_text import describe

    print(describe(args.name))
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from actlab.errors import ConfigError
    from actlab.report.plots import plot_activations, save_figure

    try:
        orders = tuple(int(part) for part in args.derivatives.split(","))
    except ValueError:
        raise ConfigError(
            f"--derivatives {args.derivatives!r} must be orders from 0,1,2 separated by commas, e.g. 0,1"
        ) from None
    figure = plot_activations(args.names, tuple(args.range), orders)
    path = save_figure(figure, args.output or "activations.png")
    print(f"wrote {path}" + ("" if args.output else " (choose the file with -o FILE)"))
    return EXIT_OK


def cmd_datasets(args: argparse.Namespace) -> int:
    from actlab.data.datasets import format_dataset_table, list_datasets

    print(format_dataset_table(list_datasets(args.data_dir)))
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from actlab.config import MODELS
    from actlab.study.driver import load_study_dataset, run_study

    user = None
    if args.model not in MODELS:
        from actlab.nn.user_model import load

        user = load(args.model)
    config = ExperimentConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=not args.no_download,
        val_size=args.val_size,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        standardize=args.standardize,
        model=args.model,
        swap=split_specs(args.swap) if args.swap else (),
        model_source=user.source if user else None,
        model_sha256=user.sha256 if user else None,
        hidden=parse_ints(args.hidden, "--hidden"),
        depths=parse_ints(args.depths, "--depths") if args.depths else (),
        dropout=args.dropout,
        output_activation=args.output_activation,
        init=args.init,
        init_gain=args.init_gain,
        activations=split_specs(args.activations),
        seeds=parse_seeds(args.seeds, args.seed_start),
        lrs=parse_floats(args.lr, "--lr"),
        select=args.select,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        schedule=args.schedule,
        warmup=args.warmup,
        clip=args.clip,
        width=args.width,
        layers=args.layers,
        heads=args.heads,
        context=args.context,
        device=args.device,
        threads=args.threads,
        diagnostics=not args.no_diagnostics,
        stacking=args.stacking,
        min_gap=args.min_gap,
    )
    config.check_activations()
    if config.model == "gpt":
        from actlab.nn.gpt import parameter_line

        print(parameter_line(config))
    if args.ray is None and (args.shard_size is not None or args.checkpoint_every != 1):
        raise ConfigError("--shard-size and --checkpoint-every apply with --ray only; add --ray")
    if args.ray is not None and config.model == "gpt":
        raise ConfigError("--ray does not run --net gpt studies yet; drop --ray")
    if args.ray is not None:
        from actlab.study.cluster import check_options, check_reachable, import_ray

        # Before the dataset is loaded: bad options, no Ray, or no cluster at the address.
        check_options(args.ray, args.shard_size, args.checkpoint_every)
        import_ray()
        check_reachable(args.ray)
    out = args.out or default_out(config.dataset, user.name if user else None)
    if user is not None:
        from actlab.nn.user_model import describe

        print(describe(user, config.activations[0], config.swap))
    log_specs = None
    if args.log:
        from actlab.export.targets import parse_log_specs

        log_specs = parse_log_specs(args.log)  # a missing package fails before training
        quiet_store_logs()
    dataset = load_study_dataset(config, progress=not args.quiet)
    progress = None if args.quiet else CompareProgress()
    live_log = None
    if log_specs:
        from actlab.export.targets import LiveLog

        live_log = LiveLog(log_specs, out, warn=warn)
    on_epoch = [f for f in (progress and progress.epoch, live_log and live_log.on_epoch) if f]
    try:
        if args.ray is not None:
            from actlab.study.cluster import run_study_on_ray

            result = run_study_on_ray(
                config,
                address=args.ray,
                out=out,
                resume=args.resume,
                dataset=dataset,
                shard_size=args.shard_size,
                checkpoint_every=args.checkpoint_every,
                on_start=progress.start if progress else None,
                on_progress=progress.advance if progress else None,
                on_epoch=(lambda r: [f(r) for f in on_epoch]) if on_epoch else None,
                on_shards=None if args.quiet else print_shards,
                on_note=lambda note: print(f"actlab: note: {note}", file=sys.stderr),
                on_resume=progress.write if progress else None,
            )
        else:
            result = run_study(
                config,
                out=out,
                resume=args.resume,
                dataset=dataset,
                on_start=progress.start if progress else None,
                on_step=progress.step if progress else None,
                on_epoch=(lambda r: [f(r) for f in on_epoch]) if on_epoch else None,
                on_plan=progress.plan if progress else None,
                on_threads=progress.threads if progress else None,
                on_note=lambda note: print(f"actlab: note: {note}", file=sys.stderr),
            )
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
    if result.already_complete:
        print(f"{out}: already complete ({config.epochs} epochs); nothing to train")
    print(summary_table(result.metrics, config))
    if config.select == "val" and len(config.lrs) > 1:
        print(selection_line(result.metrics))
    if not args.no_report:
        try:
            from actlab.report.render import write_report
        except ImportError:
            print("note: the report module is not available; no report written")
        else:
            print(f"report: {write_report(out, min_gap=config.min_gap)}")
            print_verdict(out, config.min_gap)
    if live_log is not None:  # after the report: MLflow keeps it as an artifact
        for line in live_log.close():
            print(f"logged to {line}")
    if result.diverged:  # also when rerun on a finished run: the exit code is the study's
        print("some members diverged (loss NaN/inf or exploding); see status in metrics.csv")
        return EXIT_DIVERGED
    return EXIT_OK


# --- compare helpers: parsing, progress, per-epoch lines, summary -------------------------


def split_specs(text: str) -> tuple[str, ...]:
    """Split comma-separated activation specs, keeping commas inside parentheses:
    ``relu,elu(alpha=0.5),expr:max(x, 0)`` -> three specs."""
    specs, depth, current = [], 0, []
    for char in text:
        if char == "," and depth == 0:
            specs.append("".join(current).strip())
            current = []
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current.append(char)
    specs.append("".join(current).strip())
    return tuple(spec for spec in specs if spec)


def parse_seeds(text: str, start: int = 0) -> tuple[int, ...]:
    """``3`` means seeds 0, 1, 2 (``start``, start+1, ... with --seed-start); ``3..4`` is the
    inclusive range 3, 4; ``0,5,7`` (or ``7,``) is a list of seeds."""
    from actlab.config import MAX_MEMBERS

    text = text.strip()
    if ".." in text:
        low, _, high = text.partition("..")
        first, last = parse_ints(low, "--seeds")[:1], parse_ints(high, "--seeds")[:1]
        if not first or not last or not 0 <= first[0] <= last[0] < 2**63:
            raise ConfigError(
                f"--seeds {text}: a range is FIRST..LAST with 0 <= FIRST <= LAST, e.g. 3..4"
            )
        if last[0] - first[0] + 1 > MAX_MEMBERS:
            raise ConfigError(f"--seeds {text}: at most {MAX_MEMBERS} seeds")
        return tuple(range(first[0], last[0] + 1))
    if "," not in text:
        counts = parse_ints(text, "--seeds")
        if len(counts) != 1 or not 1 <= counts[0] <= MAX_MEMBERS:
            raise ConfigError(
                f"--seeds {text}: give a count from 1 to {MAX_MEMBERS}, a range like 3..4 "
                "or a list like 0,5,7"
            )
        if not 0 <= start < 2**63 - counts[0]:
            raise ConfigError(f"--seed-start {start}: seeds are integers from 0 to 2**63 - 1")
        return tuple(range(start, start + counts[0]))
    seeds = parse_ints(text, "--seeds")
    if any(not 0 <= seed < 2**63 for seed in seeds):
        raise ConfigError(f"--seeds {text}: seeds must be integers from 0 to 2**63 - 1")
    return seeds


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected integers separated by commas") from None


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected numbers like 1e-3,3e-3") from None


def default_out(dataset: str, model: str | None = None) -> str:
    """runs/compare-<dataset>; for npz:PATH, idx:DIR and text:PATH, the file or folder name; a user
    model's NAME is appended (runs/compare-fashion-mnist-resnet8)."""
    name = dataset
    if dataset.startswith(("npz:", "idx:")):
        name = dataset[:3] + "-" + Path(dataset[4:]).stem
    elif dataset.startswith("text:"):  # text:corpus/shakespeare.txt -> text-shakespeare
        name = "text-" + Path(dataset[5:]).stem
    if model:
        name += "-" + model
    return "runs/compare-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")


class CompareProgress:
    """A tqdm bar on stderr (depth, epoch, step, elapsed<remaining), the thread choice and
    the time estimate before training, one line per member per epoch, and after each epoch
    a line with the elapsed and remaining time (also when stdout is a log file)."""

    def __init__(self, clock=None) -> None:
        import time

        self.bar = None
        self.described: tuple | None = None
        self.clock = clock or time.perf_counter
        self.total = self.done_at_start = self.done = 0
        self.started: float | None = None

    def start(self, total: int, done: int) -> None:
        from tqdm import tqdm

        self.total, self.done_at_start, self.done = total, done, done
        self.started = self.clock()
        # disable=None: a bar on a terminal; none when stderr is a log file (CI), where the
        # per-epoch lines on stdout already say how far the study is.
        self.bar = tqdm(
            total=total, initial=done, unit="step", file=sys.stderr, leave=False, disable=None
        )

    def plan(self, plan) -> None:
        threads = plan.threads and plan.threads.describe()
        kernels = plan.kernels and f"step kernels: {plan.kernels}"
        for line in (plan.resume_line(), threads, kernels, plan.describe()):
            if line:
                self.write(line)
        self.started = self.clock()  # the remaining-time estimate counts training only

    def threads(self, choice, reason: str) -> None:
        self.write(f"{reason}: {choice.describe()}")

    def step(self, info) -> None:
        self.advance(1, info.depth, info.epoch, info.epochs)

    def advance(self, steps: float, depth: int | None, epoch: int, epochs: int) -> None:
        """`steps` more steps of the study done (a Ray shard's epoch is a fraction of one
        epoch's steps); the description names the depth and epoch."""
        key = (depth, epoch)
        if key != self.described:
            where = "" if depth is None else f"depth {depth} "
            self.bar.set_description(f"{where}epoch {epoch}/{epochs}", refresh=False)
            self.described = key
        self.done += steps
        self.bar.update(steps)

    def epoch(self, result) -> None:
        from actlab.study.driver import epoch_lines

        for line in epoch_lines(result):
            self.write(line)
        self.write(self.time_line(result))

    def time_line(self, result) -> str:
        """``progress: 3/10 epochs (30% of the steps), 31 s elapsed, about 1 min 12 s left``."""
        from actlab.study.driver import format_duration

        elapsed = self.clock() - (self.started if self.started is not None else self.clock())
        trained = self.done - self.done_at_start
        left = self.total - self.done
        depth = "" if result.depth is None else f"depth {result.depth}: "
        text = (
            f"progress: {depth}{result.epoch}/{result.epochs} epochs "
            f"({100 * self.done / max(1, self.total):.0f}% of the steps), "
            f"{format_duration(elapsed)} elapsed"
        )
        if trained and left:
            text += f", about {format_duration(elapsed / trained * left)} left"
        return text

    def write(self, line: str) -> None:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stdout)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def print_shards(shards, plan) -> None:
    """One line: how the study is split over the Ray cluster."""
    kind = f"{plan.num_gpus} GPU" if plan.num_gpus else f"{plan.num_cpus} CPU"
    sizes = sorted({len(shard.members) for shard in shards})
    print(
        f"ray: {len(shards)} shards of {'/'.join(map(str, sizes))} members, {kind} each, "
        f"{plan.slots} at once"
    )


def selection_line(metrics) -> str:
    """Each activation's lr as chosen on the validation split (see stats.select_lr)."""
    import pandas as pd

    from actlab.report import stats

    chosen = stats.select_lr(stats.member_results(metrics))
    parts = []
    for row in chosen.itertuples():
        depth = "" if pd.isna(row.depth) else f"depth {int(row.depth)} "
        parts.append(f"{depth}{row.activation} lr={row.lr:g} (val acc {100 * row.score:.2f}%)")
    return "lr chosen on the validation split: " + ", ".join(parts)


def summary_table(metrics, config) -> str:
    """Per (depth,) activation and lr: the task's final test metric over seeds, mean +- its
    sample SD (labelled so: it is not an interval), its 95% t interval (accuracy clipped to
    [0, 100]), the epoch of the best mean, and how many seeds diverged: accuracy in % for a
    classifier, bits per character for a language model (lower is better). Below
    stats.SMALL_N seeds the interval is marked with its degrees of freedom, the per-seed
    values are shown, and a caution line follows the table."""
    from actlab.report import stats
    from actlab.tasks import bits_per_character

    task = config.task
    classify = task.name == "classify"
    shown, label, unit = (
        (lambda v: 100 * v, "final test acc", "%")
        if classify
        else (bits_per_character, "final test bpc", "")
    )
    low, high = (0.0, 100.0) if classify else (-math.inf, math.inf)
    digits = 2 if classify else 4
    header = ("depth",) if config.depths else ()
    header += ("activation", "lr", "seeds", f"{label} ± SD", "95% CI")
    rows, small = [], False
    groups = ["depth", "activation", "lr"] if config.depths else ["activation", "lr"]
    order = {spec: i for i, spec in enumerate(config.activations)}
    for key, group in sorted(
        metrics.groupby(groups, sort=False, dropna=False),
        key=lambda item: tuple(
            order.get(v, v) if isinstance(v, str) else v
            for v in (item[0] if isinstance(item[0], tuple) else (item[0],))
        ),
    ):
        key = key if isinstance(key, tuple) else (key,)
        ok = group[group["status"] == "ok"]
        final = ok[ok["epoch"] == config.epochs].sort_values("seed")[task.metric].map(shown)
        diverged = int((group["status"] == "diverged").sum())
        interval = stats.t_interval(final)
        per_seed = ""
        if len(final):
            spread = f" ± {interval.std:.{digits}f}" if len(final) > 1 else ""
            accuracy = f"{interval.mean:.{digits}f}{unit}{spread}"
            means = ok.groupby("epoch")[task.metric].mean()
            best = int(means.idxmax() if task.higher_is_better else means.idxmin())
            ci = (
                "-"
                if len(final) < 2
                else f"[{max(low, interval.ci_low):.{digits}f}, "
                f"{min(high, interval.ci_high):.{digits}f}]"
            )
            if 2 <= len(final) < stats.SMALL_N:
                small = True
                ci += f" ({len(final) - 1} df!)"
                per_seed = ", ".join(f"{v:.{digits}f}" for v in final)
        else:
            accuracy, best, ci = "-", "-", "-"
        cells = [str(v) for v in key[:-1]] + [f"{key[-1]:g}"]
        rows.append((*cells, str(len(final)), accuracy, ci, per_seed, str(best), str(diverged)))
    header += (f"per seed{' %' if unit else ''}", "best epoch", "diverged")
    if not small:  # drop the per-seed column
        header = header[:-3] + header[-2:]
        rows = [row[:-3] + row[-2:] for row in rows]
    rows.insert(0, header)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if small:
        lines.append(
            f"caution: fewer than {stats.SMALL_N} seeds; an interval from so few degrees of "
            "freedom (df!) rests on the chance spread of the values beside it; use --seeds 10"
        )
    return "\n".join(line.rstrip() for line in lines)


def print_verdict(out: str | Path, min_gap: float) -> None:
    """The report's verdict, wrapped for a terminal."""
    import textwrap

    from actlab.report.render import verdict_of, with_min_gap
    from actlab.study.store import read_run

    print("verdict:")
    for paragraph in verdict_of(with_min_gap(read_run(out), min_gap)):
        print(
            textwrap.fill(
                paragraph,
                width=96,
                initial_indent="  ",
                subsequent_indent="  ",
                break_on_hyphens=False,
            )
        )


def cmd_report(args: argparse.Namespace) -> int:
    from actlab.report.render import with_min_gap, write_run_report
    from actlab.study.store import merge_runs
    from actlab.study.unfinished import completion, unfinished_text

    run = with_min_gap(merge_runs(args.run_dirs), args.min_gap)
    path = write_run_report(run, args.output)
    for problem in run.problems:
        print(f"actlab: warning: {problem}", file=sys.stderr)
    if len(run.paths) > 1:
        print(merge_line(run))
    unfinished = unfinished_text(completion(run.metrics, run.members, run.config.epochs))
    if unfinished:  # the report says so too; a user reading the terminal should know
        print(f"actlab: note: {unfinished}; compared at the last common epoch", file=sys.stderr)
    if run.writing is not None and args.output is None:
        print(
            f"actlab: note: {run.path} is being written by another actlab process (pid "
            f"{run.writing}); wrote {path.name}: report.html is the study's own, written "
            "when it ends",
            file=sys.stderr,
        )
    print(path)
    print(path.with_suffix(".md"))
    return EXIT_OK


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


def quiet_store_logs() -> None:
    """MLflow logs its database migrations at INFO between the per-epoch lines; keep them
    for warnings."""
    import logging

    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def warn(message: str) -> None:
    """One warning line on stderr, above a progress bar if one is shown."""
    from tqdm import tqdm

    tqdm.write(f"actlab: warning: {message}", file=sys.stderr)


def merge_line(run) -> str:
    """``merged 2 runs of one study: runs/a (seeds 0, 1), runs/b (seed 2): 3 seeds``."""
    parts = []
    for index, path in enumerate(run.paths):
        seeds = sorted(set(run.metrics.loc[run.metrics["run"] == index, "seed"]))
        word = "seed" if len(seeds) == 1 else "seeds"
        parts.append(f"{path} ({word} {', '.join(map(str, seeds)) or 'none'})")
    total = run.metrics["seed"].nunique()
    return (
        f"merged {len(run.paths)} runs of one study: {', '.join(parts)}; the report pools "
        f"{total} seed{'s' if total != 1 else ''} (a seed in several runs is counted once)"
    )


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
    args = parser.parse_args(argv)
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


def one_line(text: str) -> str:
    """An error message as one line, whatever a path or spec in it holds."""
    return " ".join(text.splitlines())  # also \r, \f, \x1c-\x1e, \x85, \u2028, \u2029


# What to do about an OSError, by errno: the message names the path, this the way out.
_OS_ADVICE = {
    errno.ENOSPC: "free some disk space or choose another location; a study resumes from its last complete epoch",
    errno.EDQUOT: "free some space in your quota or choose another location",
    errno.EROFS: "the file system is read-only; choose a writable location",
    errno.EACCES: "you may not write or read there; choose another location or fix its permissions",
    errno.EPERM: "the operation is not permitted there; choose another location",
    errno.ENOENT: "check the path (a folder in it does not exist)",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "a folder is where a file belongs; remove or rename it, or choose another path",
    errno.EEXIST: "remove it or choose another path",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EMFILE: "too many open files; raise `ulimit -n`",
    errno.ENOMEM: "the machine is out of memory; close other programs or make the study smaller",
}


def os_error_text(error: OSError) -> str:
    """One line for an OSError: the path, what went wrong, and the way out."""
    path = error.filename if error.filename is not None else ""
    what = error.strerror or type(error).__name__
    advice = _OS_ADVICE.get(error.errno, "check the path and try again")
    where = f"{path}: " if path else ""
    return one_line(f"{where}{what}; {advice}")


class PipeSafe:
    """stdout that survives a closed pipe (``actlab compare ... | head -1``): once the reader
    is gone, further output goes to /dev/null instead of raising BrokenPipeError, so
    training, the run directory and the report go on. Everything else is the stream's."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self.broken = True
        # Point the descriptor at /dev/null, so that the interpreter's own flush at exit
        # does not fail on the same pipe ("Exception ignored ... BrokenPipeError").
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


if __name__ == "__main__":
    raise SystemExit(main())
