"""`actlab.compare`: run a study from Python (notebooks) or from the CLI.

    >>> import actlab
    >>> df = actlab.compare(dataset="fashion-mnist", seeds=3, epochs=3)
    >>> df.groupby("activation").test_acc.last()

`run_study` is the one place where the engine meets the run directory: it trains depth
after depth, appends each epoch's rows, checkpoints, and resumes from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from actlab.config import MODELS, ExperimentConfig
from actlab.engine.batches import DeviceData, device_data
from actlab.engine.memory import check_study_memory
from actlab.engine.results import EpochResult, StepInfo
from actlab.engine.threads import (
    MAX_WINDOW_STEPS,
    StepWatch,
    ThreadChoice,
    available_cpus,
    candidate_counts,
    choose_threads,
)
from actlab.engine.trainer import Trainer, make_trainer, members_of, resolve_device
from actlab.errors import ConfigError, RunDirError
from actlab.nn import user_model
from actlab.study import store
from actlab.study.callbacks import StudyCallback, callback_of
from actlab.study.resume import ResumePoint
from actlab.tasks import bits_per_character

EVAL_TIMING_SAMPLES = 32  # test samples evaluated to estimate an epoch's evaluation time


@dataclass
class StudyResult:
    """What `run_study` did: the metrics rows (all epochs, resumed ones included)."""

    metrics: pd.DataFrame
    out: Path | None
    already_complete: bool  # the run directory held a finished run: nothing was trained
    resumed_from: tuple[int | None, int] | None  # (depth, epoch) of the checkpoint used
    notes: list[str] = dataclasses.field(default_factory=list)  # repairs made on reopening

    @property
    def diverged(self) -> bool:
        return bool((self.metrics["status"] == "diverged").any())


def load_study_dataset(config: ExperimentConfig, *, progress: bool = False):
    """The dataset a config asks for (see actlab.data.datasets.load_dataset; a ``text:``
    corpus: actlab.data.text.load_text)."""
    from actlab.data.datasets import load_dataset
    from actlab.data.regression import is_regression, load_regression
    from actlab.data.text import is_text, load_text

    if is_regression(config.dataset):  # real-valued targets (the regress task)
        return load_regression(
            config.dataset,
            val_size=config.val_size,
            limit_train=config.limit_train,
            limit_test=config.limit_test,
        )
    if is_text(config.dataset):
        return load_text(
            config.dataset,
            context=config.context,
            val_size=config.val_size,
            limit_train=config.limit_train,
            limit_test=config.limit_test,
        )

    return load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        download=config.download,
        val_size=config.val_size,
        limit_train=config.limit_train,
        limit_test=config.limit_test,
        standardize=config.standardize,
        progress=progress,
    )


def run_study(
    config: ExperimentConfig,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    dataset=None,
    callback: StudyCallback | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_plan: Callable[[StudyPlan], None] | None = None,
    on_threads: Callable[[ThreadChoice, str], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> StudyResult:
    """Train every depth of `config`, writing the run directory `out` (if given).

    Rerunning into the same `out` continues from its last complete epoch; rows written
    after that checkpoint (a crash between the CSV append and the checkpoint) are dropped.
    A finished run rerun with a larger `epochs` continues from its checkpoint.
    `callback` (actlab.study.callbacks.StudyCallback) is told what happens: on_note once
    per repair made when the run directory was reopened, on_start(steps_total,
    steps_done) once before training, on_plan(plan) with the thread choice and the time
    estimate, on_threads(choice, reason) whenever the thread count is chosen again (a new
    depth, or a step time that degraded), on_step and on_epoch. The on_* keywords are the
    same hooks as plain functions (give one or the other).

    On the CPU without `config.threads`, the thread count is chosen by timing a few steps
    of the study's own stacked model with each candidate count (actlab.engine.threads), and
    re-checked when the step time later degrades badly.
    """
    hooks = callback_of(
        callback,
        on_step=on_step,
        on_epoch=on_epoch,
        on_start=on_start,
        on_plan=on_plan,
        on_threads=on_threads,
        on_note=on_note,
    )
    config.check_activations()
    if dataset is None and config.dataset == "tensors":
        raise ConfigError(
            "dataset 'tensors' was given from Python; pass the same tensors again "
            "(actlab.compare(dataset=(x_train, y_train, x_test, y_test), ...))"
        )
    if config.is_user_model:
        check_model_source(config)
    if dataset is None:
        dataset = load_study_dataset(config)
    device = resolve_device(config.device)
    check_study_memory(config, dataset, device)  # before a byte is allocated for training
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    data = device_data(dataset, device)
    say_mlp_route(config, dataset, hooks)
    keeper = ThreadKeeper(config, data, device)
    keeper.choose(config.depth_list[0])
    writer = None
    if out is not None:
        environment = store.describe_environment(str(device), torch.get_num_threads())
        environment["threads_chosen"] = keeper.how_chosen()
        environment["step_kernels"] = keeper.kernels()
        writer = open_study_dir(out, config, dataset, environment, resume, hooks)
    try:
        executor = LocalExecutor(config, data, keeper, hooks)
        return run_depths(config, writer, executor, data.x_train.shape[0], hooks)
    finally:
        keeper.close()
        if writer is not None:
            writer.close()


def say_mlp_route(config: ExperimentConfig, dataset, hooks: StudyCallback) -> None:
    """--net mlp with gated activations: each depth's parameters per member and the path
    the members train on (actlab.nn.mlp_builder)."""
    from actlab.nn import mlp_builder

    if not mlp_builder.needs_builder(config):
        return
    for depth in config.depth_list:
        line = mlp_builder.parameter_line(
            config, tuple(dataset.input_shape), int(dataset.num_classes), depth
        )
        hooks.on_note(line if depth is None else f"depth {depth}: {line}")
    hooks.on_note(mlp_builder.ROUTE_LINE)


def run_depths(config, writer, executor, train_size: int, hooks: StudyCallback) -> StudyResult:
    """The study driver, for every executor (local: `LocalExecutor`; Ray:
    actlab.study.cluster.RayExecutor): where the run directory's checkpoint leaves the
    study, then each depth left, trained by `executor.train_depth(index, depth,
    checkpoint)` (which writes its epochs' rows and checkpoints and returns its rows)."""
    checkpoint = writer.checkpoint if writer is not None else None
    executor.check_checkpoint(checkpoint, writer)
    point = ResumePoint(config, checkpoint)
    rows: list[dict] = []
    if not point.finished:
        steps_per_epoch = -(-train_size // config.batch_size)
        total, done = point.steps(steps_per_epoch)
        hooks.on_start(total, done)
        executor.before(point, total, done, steps_per_epoch)
        for index, depth, resumed in point.depths_left():
            rows += executor.train_depth(index, depth, resumed)
    if writer is None:
        columns = store.metrics_columns(config)
        return StudyResult(metrics_frame(rows, columns), None, point.finished, point.resumed_from)
    # Read back from the directory: it also holds the rows of epochs before a resume.
    columns = list(store.metrics_columns(config))
    metrics = store.read_run(writer.path, verify=False).metrics[columns]
    return StudyResult(metrics, writer.path, point.finished, point.resumed_from, list(writer.notes))


@dataclass
class StudyPlan:
    """What a study is about to do, for the CLI's opening lines."""

    steps_total: int
    steps_done: int
    threads: ThreadChoice | None  # None on a GPU
    estimate_s: float | None  # seconds of training left (steps and evaluations), measured
    epochs: int = 0
    resumed_after: tuple[int | None, int] | None = None  # (depth, epoch) of the checkpoint
    kernels: str | None = None  # the CPU step's kernels (ThreadKeeper.kernels)

    def resume_line(self) -> str | None:
        """``resuming after epoch 6/10`` (``of depth 4``), or None for a fresh run."""
        if self.resumed_after is None:
            return None
        depth, epoch = self.resumed_after
        where = "" if depth is None else f" of depth {depth}"
        return f"resuming after epoch {epoch}/{self.epochs}{where}"

    def describe(self) -> str | None:
        """``estimate: 1 min 5 s for 9380 steps (6.2 ms a step, evaluation included)``."""
        if self.estimate_s is None:
            return None
        left = self.steps_total - self.steps_done
        step_s = self.threads.best_step_s if self.threads else None
        per_step = f"{1e3 * step_s:.1f} ms a step" if step_s else ""
        return (
            f"estimate: {format_duration(self.estimate_s)} for {left} steps "
            f"({per_step}{', ' if per_step else ''}measured on the first steps; evaluation included)"
        )


def format_duration(seconds: float) -> str:
    """59.4 -> '59 s', 125 -> '2 min 5 s', 7300 -> '2 h 1 min'."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class ThreadKeeper:
    """The thread count of a CPU study: forced by `config.threads`, else chosen by timing
    steps of a throwaway copy of the stacked model (actlab.engine.threads.choose_threads), again
    for each depth and whenever the training step time degrades (StepWatch)."""

    def __init__(self, config: ExperimentConfig, data: DeviceData, device: torch.device) -> None:
        self.config = config
        self.data = data
        # On the CPU the step is always timed (for the estimate); with --threads N only N.
        self.measure = device.type == "cpu"
        self.forced = config.threads is not None
        self.cpus = available_cpus()
        self.choice: ThreadChoice | None = None
        self.eval_s: float | None = None  # one evaluation of val + test, measured
        self.watch = StepWatch()
        self._trainer: Trainer | None = None
        self._measured: Trainer | None = None  # the trainer of the last measurement
        self._untouched = False  # `_trainer` is as built: its timing steps were undone
        self._taken: list = []  # the depths whose trainer was handed over (`take`)
        self._kernels: str | None = None
        self.depth: int | None = None  # the depth of the last measurement
        self._last_step: float | None = None
        if self.measure and self.forced:
            self.choice = ThreadChoice(config.threads, True, self.cpus)

    def kernels(self) -> str | None:
        """How the measured model's step runs: the hand-written MLP step's elementwise work
        on a CPU (compiled kernels or torch ops, and why), a user's network's stacking (vmap
        or member by member, and why), else None."""
        return self._kernels

    def how_chosen(self) -> str:
        if self.choice is None:
            return "torch default (not a CPU run)"
        return "forced (--threads)" if self.choice.forced else "measured (fastest of 1..CPUs)"

    def choose(self, depth: int | None) -> ThreadChoice | None:
        """Measure (again) for the stacked model of `depth`; returns the choice.

        A new depth's trainer is the one that will train (`take`): its timing steps are
        undone (its state before them restored), so that start-up builds and checks the
        model once. A re-check during training times a throwaway trainer instead."""
        if not self.measure:
            return self.choice
        fresh = depth != self.depth or self._trainer is None
        if fresh:
            self._trainer = make_trainer(self.config, self.data, depth=depth)
            self.depth = depth
            self.eval_s = None
            self._kernels = _describe_kernels(self._trainer)
        trainer = self._trainer
        if self.forced:  # nothing to choose: no step before training (see `timed_step`)
            self.choice = ThreadChoice(self.config.threads, True, self.cpus)
            self.eval_s = self._time_evaluation(trainer)  # evaluation changes no state
            self._untouched = True
            return self.choice
        # Undone only for a trainer that will train (not a re-check's throwaway one).
        before = _state_copy(trainer) if fresh and depth not in self._taken else None
        warm = trainer is self._measured  # a re-check: its pools and buffers exist
        self.choice = choose_threads(trainer.timing_step, candidate_counts(self.cpus), warm=warm)
        self._measured = trainer
        self.choice.cpus = self.cpus
        if self.eval_s is None:
            self.eval_s = self._time_evaluation(trainer)
        if before is not None:
            trainer.load_state(before)
            for p in trainer.optimizer.params:
                p.grad = None
        self._untouched = before is not None
        self.watch.reset()
        self._last_step = None
        return self.choice

    def timed_step(self, seconds: float) -> None:
        """With ``--threads N``: the step time of one of the study's own first steps (the
        estimate's; nothing was timed before training)."""
        if self.choice is not None:
            self.choice.step_seconds = {self.choice.threads: seconds}

    def take(self, depth: int | None) -> Trainer | None:
        """The trainer measured for `depth`, as built (its timing steps undone), handed over
        to train once; None when there is none (a GPU, another depth, already taken)."""
        if not (self._untouched and depth == self.depth and self._trainer is not None):
            return None
        trainer, self._trainer, self._measured, self._untouched = self._trainer, None, None, False
        self._taken.append(depth)
        return trainer

    def _time_evaluation(self, trainer: Trainer) -> float:
        """Seconds of one epoch's evaluations (val and test), from one chunk of at most
        EVAL_TIMING_SAMPLES samples, scaled (a small test set is not evaluated twice)."""
        data = self.data
        count = data.x_val.shape[0] + data.x_test.shape[0]
        chunk = min(trainer.eval_chunk, data.x_test.shape[0], EVAL_TIMING_SAMPLES)
        if chunk == 0:
            return 0.0
        begin = time.perf_counter()
        trainer.evaluate(data.x_test[:chunk], data.y_test[:chunk])
        return (time.perf_counter() - begin) * count / chunk

    def estimate(self, steps_left: int, epochs_left: int) -> float | None:
        """Seconds of training left: measured step time x steps, plus the evaluations."""
        if self.choice is None or self.choice.best_step_s is None:
            return None
        return self.choice.best_step_s * steps_left + (self.eval_s or 0.0) * epochs_left

    def step(self, info: StepInfo) -> bool:
        """After each training step: True when the thread count was chosen again."""
        if not self.measure or self.forced:
            return False
        now = time.perf_counter()
        last, self._last_step = self._last_step, now
        if last is None or info.step == 1:  # the first step of an epoch follows evaluation
            return False
        if not self.watch.observe(now - last):
            return False
        before = self.choice.threads
        self.choose(info.depth)
        # The same count again: the load, not the threads, made it slower; look less often
        # (the window doubles, up to MAX_WINDOW_STEPS), so that a fluctuating load does not
        # turn into a re-check every few seconds.
        unchanged = self.choice.threads == before
        watch = self.watch
        watch.window = (
            min(2 * watch.window, MAX_WINDOW_STEPS) if unchanged else watch.initial_window
        )
        self._last_step = time.perf_counter()
        return True

    def close(self) -> None:
        self._trainer = self._measured = None


def _describe_kernels(trainer) -> str | None:
    """See `ThreadKeeper.kernels`."""
    stacking = getattr(trainer.model, "describe_stacking", None)  # a user's network
    if stacking is not None:
        return stacking()
    step = trainer.mlp_step
    return step.describe_kernels() if step is not None else None


def _state_copy(trainer) -> dict:
    """`trainer.state()` as a copy: the live model tensors it refers to cloned (the
    optimizer's state and the generators' are copies already)."""
    state = dict(trainer.state())
    state["model"] = {name: t.clone() for name, t in state["model"].items()}
    return state


def open_study_dir(
    out: str | Path,
    config: ExperimentConfig,
    dataset,
    environment: dict,
    resume: bool,
    hooks: StudyCallback,
) -> store.RunWriter:
    """Open (or reopen) the run directory of a study, local or on Ray, and pass on what
    reopening repaired (`hooks.on_note`)."""
    writer = store.open_run_dir(
        out,
        config,
        members=[dataclasses.asdict(m) for m in members_of(config)],
        dataset=dataset.summary(),
        environment=environment,
        resume=resume,
    )
    for note in writer.notes:
        hooks.on_note(note)
    return writer


class LocalExecutor:
    """Trains each depth in this process (actlab.engine.trainer.train), one stacked model,
    writing every epoch's rows and a checkpoint."""

    def __init__(self, config, data, keeper: ThreadKeeper, hooks: StudyCallback) -> None:
        self.config, self.data, self.keeper, self.hooks = config, data, keeper, hooks
        self.writer = None
        self._pending: tuple[StudyPlan, int] | None = None  # a plan waiting for its estimate
        self._steps_seen, self._last = 0, 0.0

    def check_checkpoint(self, checkpoint, writer) -> None:
        self.writer = writer
        if checkpoint is not None and checkpoint.sharded:
            raise RunDirError(
                f"{writer.path} was written by `actlab compare --ray`; resume it with --ray "
                "(or choose another --out)"
            )

    def before(self, point: ResumePoint, total: int, done: int, steps_per_epoch: int) -> None:
        keeper = self.keeper
        epochs_left = (total - done) // steps_per_epoch
        estimate = keeper.estimate(total - done, epochs_left)
        plan = StudyPlan(
            total, done, keeper.choice, estimate, self.config.epochs, point.resumed_from,
            keeper.kernels(),
        )  # fmt: skip
        if estimate is None and keeper.measure and keeper.forced and total > done:
            # --threads N: no step was timed before training; the estimate is made from
            # the study's own second step (its first pays one-time costs).
            self._pending, self._steps_seen, self._last = (
                (plan, epochs_left),
                0,
                time.perf_counter(),
            )
            return
        self.hooks.on_plan(plan)

    def _plan_from_first_steps(self, info: StepInfo) -> None:
        """The pending plan, with the estimate from the second step's time (the first
        step's when an epoch has one step), given before that step's on_step."""
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        self._steps_seen += 1
        if self._steps_seen < 2 and info.step < info.steps:
            return
        plan, epochs_left = self._pending
        self._pending = None
        self.keeper.timed_step(seconds)
        plan.estimate_s = self.keeper.estimate(plan.steps_total - plan.steps_done, epochs_left)
        self.hooks.on_plan(plan)

    def _step(self, info: StepInfo) -> None:
        if self._pending is not None:
            self._plan_from_first_steps(info)
        if self.keeper.step(info):
            self.hooks.on_threads(self.keeper.choice, "the step time degraded")
        self.hooks.on_step(info)

    def train_depth(self, index: int, depth: int | None, resumed) -> list[dict]:
        keeper, hooks, writer = self.keeper, self.hooks, self.writer
        if keeper.measure and depth != keeper.depth:
            keeper.choose(depth)
            if not keeper.forced:
                hooks.on_threads(keeper.choice, f"depth {depth}")
        state = resumed.engine if resumed is not None else None
        rows: list[dict] = []
        # The trainer the thread choice measured (built and checked once), else a new one.
        trainer = keeper.take(depth) or make_trainer(self.config, self.data, depth=depth)
        if state is not None:
            trainer.load_state(state)
        while trainer.epoch < self.config.epochs:
            result = trainer.train_epoch(self._step)
            if writer is not None:
                writer.append_rows(result.metrics, result.diagnostics)
                writer.save_checkpoint(
                    depth_index=index, depth=depth, epoch=result.epoch, engine=result.state
                )
            rows += result.metrics
            hooks.on_epoch(result)
        return rows


def check_model_source(config: ExperimentConfig) -> None:
    """The user's model loads, and is the one the config was made for (same source hash)."""
    loaded = user_model.load_for(config)
    if config.model_sha256 and loaded.sha256 and loaded.sha256 != config.model_sha256:
        raise ConfigError(
            f"{loaded.source} changed since this config was made (sha256 "
            f"{config.model_sha256[:12]} then, {loaded.sha256[:12]} now); rebuild the config"
        )


def metrics_frame(rows: list[dict], columns: tuple = store.METRICS_COLUMNS) -> pd.DataFrame:
    """Metrics rows as a DataFrame of `columns` typed as `store.read_run` gives them."""
    frame = pd.DataFrame(rows, columns=list(columns))
    types = {"depth": "Int64", "member": "int64", "seed": "int64", "epoch": "int64"}
    for name in columns:
        if name in types:
            frame[name] = frame[name].astype(types[name])
        elif name in ("activation", "status"):
            frame[name] = frame[name].astype("string").fillna("").astype(object)
        else:
            frame[name] = pd.to_numeric(frame[name]).astype("float64")
    return frame


def compare(
    config: ExperimentConfig | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    quiet: bool = True,
    data=None,
    **options,
) -> pd.DataFrame:
    """Run a study and return its metrics rows (one per member per epoch) as a DataFrame.

    Pass an ExperimentConfig, or its fields as keywords; the defaults are ExperimentConfig's,
    the same as `actlab compare`'s (10 seeds, trained as one stacked model). Conveniences:
    ``seeds=3`` means seeds 0, 1, 2; ``lr=1e-3`` or ``lrs=[...]``; lists for tuples. ``model=`` is "mlp",
    "cnn", a reference "FILE.py:NAME", or your own builder / nn.Module class / factory
    (see actlab.nn.user_model; ``swap=`` names the activations replaced in a module);
    ``dataset=`` a name or the tensors ``(x_train, y_train, x_test, y_test)``. `out` also writes (and
    resumes) a run directory; `quiet=False` prints one line per member per epoch; `data`
    is an already loaded actlab.data.dataset.Dataset (else ``dataset=`` names the one to load).
    """
    tensors = None
    if isinstance(options.get("dataset"), tuple | list):
        tensors = options["dataset"]
        if len(tensors) != 4:
            raise ConfigError(
                f"dataset tensors: give (x_train, y_train, x_test, y_test), got {len(tensors)} items"
            )
        options["dataset"] = "tensors"
    if "model" in options and not (
        isinstance(options["model"], str) and options["model"] in MODELS
    ):
        user = user_model.from_object(options["model"])
        options.update(model=user.reference, model_source=user.source, model_sha256=user.sha256)
        for name, value in user_model.own_objective(user).items():  # loss=/metric= win
            if options.get(name) is None:
                options[name] = value
    if config is None:
        config = config_from_options(**options)
    elif options:
        config = config.replace(**_normalise(options))
    if tensors is not None:
        from actlab.data.splits import from_tensors

        data = from_tensors(
            *tensors,
            val_size=config.val_size,
            limit_train=config.limit_train,
            limit_test=config.limit_test,
            standardize=config.standardize,
            images=not config.is_user_model,
        )
    on_epoch = None
    if not quiet:

        def on_epoch(result: EpochResult) -> None:
            for line in epoch_lines(result, config.task):
                print(line)

    result = run_study(config, out=out, resume=resume, dataset=data, on_epoch=on_epoch)
    return result.metrics


def config_from_options(**options) -> ExperimentConfig:
    """An ExperimentConfig from keyword options, with the conveniences of `compare`."""
    return ExperimentConfig.from_dict(_normalise(options))


def _normalise(options: dict) -> dict:
    values = dict(options)
    if "lr" in values:
        values["lrs"] = values.pop("lr")
    if isinstance(values.get("seeds"), int):
        values["seeds"] = tuple(range(values["seeds"]))
    for name in ("lrs",):
        if isinstance(values.get(name), int | float):
            values[name] = (float(values[name]),)
    for name in ("activations",):
        if isinstance(values.get(name), str):
            values[name] = (values[name],)
    if isinstance(values.get("swap"), str):
        values["swap"] = (values["swap"],)
    for name in ("hidden", "depths", "activations", "seeds", "lrs", "swap"):
        if name in values and values[name] is not None:
            values[name] = tuple(values[name])
    return values


def epoch_lines(result, task=None) -> list[str]:
    """One line per member, as the classic tutorial prints:
    ``relu      seed 0  epoch 3/10  train loss 0.1234  test loss 0.0987  test acc 97.12%``.
    A study without accuracy prints its losses, and bits per character for a language
    model (`task`, actlab.tasks.Task; None: every study without accuracy is one)."""
    width = max(9, *(len(m.activation) for m in result.members))
    several_lrs = len({m.lr for m in result.members}) > 1
    lines = []
    for row in result.metrics:
        parts = [] if row["depth"] is None else [f"depth {row['depth']:<3}"]
        parts.append(f"{row['activation']:<{width}} seed {row['seed']}")
        if several_lrs:
            parts.append(f"lr {row['lr']:g}")
        parts.append(f"epoch {row['epoch']}/{result.epochs}")
        if row["status"] == "diverged":
            parts.append("diverged (loss NaN/inf or exploding): frozen")
        elif row["test_acc"] is None:  # no accuracy: its losses (a language model: and bpc)
            parts.append(f"train loss {row['train_loss']:.4f}")
            if row["val_loss"] is not None:
                parts.append(f"val loss {row['val_loss']:.4f}")
            parts.append(f"test loss {row['test_loss']:.4f}")
            if task is None or task.name == "lm":
                parts.append(f"test bpc {bits_per_character(row['test_loss']):.4f}")
        else:
            parts.append(f"train loss {row['train_loss']:.4f}")
            if row["val_loss"] is not None:
                parts.append(f"val acc {100 * row['val_acc']:.2f}%")
            parts.append(f"test loss {row['test_loss']:.4f}")
            parts.append(f"test acc {100 * row['test_acc']:.2f}%")
        lines.append("  ".join(parts))
    return lines
