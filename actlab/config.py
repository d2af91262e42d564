"""The experiment configuration: one frozen dataclass, and the members it expands to.

A study trains one member per (depth, seed, activation, lr). Members are laid out
seed-major inside a depth, so that the members sharing a seed (and so sharing the initial
weights and the batch order) are contiguous: member ``k`` of a depth uses seed index
``k // members_per_seed``. See docs/design.md, "The engine".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from actlab.errors import ConfigError, control_characters

OPTIMIZERS = ("adam", "adamw", "sgd")
INITS = ("pytorch", "glorot", "kaiming", "lecun")
MODELS = ("mlp", "cnn", "gpt")
SCHEDULES = ("constant", "cosine")
SELECTIONS = ("auto", "final", "val")
STACKINGS = ("auto", "vmap", "loop")
# More members than this is a mistake (a count typed as a list, an extra zero), not a study:
# the bookkeeping alone would take minutes and gigabytes before any memory check could run.
MAX_MEMBERS = 100_000
MAX_THREADS = 4096
MAX_EPOCHS = 1_000_000  # a bound, so that a typo never trains for ever


MAX_DEPTH = 1000  # hidden layers of one MLP of a depth study (a typo's 10**20 is refused)


# `actlab compare`'s and `actlab.compare()`'s seeds: with 3, the paired tests over 6 pairs
# (Holm) detect only gaps of several SDs of the per-seed differences; all seeds of a study
# train as one stacked model, so 10 cost little more than 1 (see docs/statistics.md and
# benchmarks/stats_power.py).
DEFAULT_SEEDS = 10


def option(
    default: object,
    help: str,
    *,
    group: str,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    kind: str | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    **argparse: object,
) -> object:
    """A dataclass field that is also a command-line option: its help text, choices and
    default are written here once, and actlab.cli.options turns them into argparse options.

    `flag` defaults to ``--name-with-dashes`` (``--no-NAME`` for a bool whose default is
    True), `aliases` are further flags for it (``--net`` for ``--model``); `kind` names how text becomes the value (``specs``, ``ints``, ``floats``,
    ``seeds``; see actlab.cli.options.PARSERS); `group` is the section of --help; any
    other keyword goes to argparse's add_argument as it is (nargs, const, action)."""
    metadata = {"help": help, "group": group, "flag": flag, "aliases": aliases, "kind": kind}
    metadata["choices"] = choices
    metadata.update(metavar=metavar, argparse=argparse)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that decides the numbers of a study. Defaults are the classic protocol.

    Each field that is a command-line option of `actlab compare` carries its help text in
    its metadata (see `option`): Python and the shell share one set of defaults."""

    # Data. The test split is never used for selection; `val_size` holds out a validation
    # split from train with a fixed seed.
    dataset: str = option(
        "mnist",
        "mnist, fashion-mnist, kmnist, digits, cifar10, npz:PATH, idx:DIR, or a text corpus "
        "for --net gpt: text:PATH (a UTF-8 file) or text:stdlib (Python's own source)",
        group="data",
    )
    data_dir: str | None = option(
        None,
        "look here first; default $ACTLAB_DATA, the cache, /usr/share/datasets",
        group="data",
    )
    download: bool = option(True, "never download; fail if the files are not found", group="data")
    # A count, or a fraction in (0, 1) of train; None: 0.1 when selecting on validation, else 0.
    val_size: float | None = option(
        None,
        "hold out this many train samples (or this fraction, e.g. 0.1) for validation; "
        "default 0.1 with --select val, else none",
        group="data",
    )
    limit_train: int | None = option(
        None, "use only the first N train samples (quick runs); default all", group="data"
    )
    limit_test: int | None = option(
        None, "use only the first N test samples; default all", group="data"
    )
    # default scaling is x/255, as torchvision's ToTensor does
    standardize: bool = option(
        False, "standardise inputs with train mean/std (default: x/255)", group="data"
    )

    # Model. `hidden` are the MLP widths (784-128-128-10 by default); `depths`, when given,
    # replaces it by a depth study: `depth` hidden layers of width hidden[0] each.
    # `model` is "mlp", "cnn", or the user's own network as "FILE.py:NAME" or
    # "module.path:NAME" (actlab.nn.user_model); `swap` names the activations replaced in it
    # (empty: every catalog activation found), and `model_sha256` is the hash of its source
    # file, so that a run is never resumed with a changed model.
    model: str = option(
        "mlp",
        "mlp, cnn, gpt (a decoder-only transformer; needs --dataset text:PATH), or your own "
        "network: FILE.py:NAME or module.path:NAME, where NAME is "
        "a builder taking the activation factory (def build(act)) or an nn.Module class / "
        "zero-argument factory whose activations are swapped (see --swap)",
        group="model",
        aliases=("--net",),
    )
    swap: tuple[str, ...] = option(
        (),
        "with your own nn.Module: the activations to replace, e.g. relu or relu,MyAct "
        "(default: every catalog activation module found, and F.relu/torch.relu/x.relu()-style "
        "calls of the rectifier family: relu, gelu, silu, elu, mish, ...)",
        group="model",
        kind="specs",
    )
    model_source: str | None = None
    model_sha256: str | None = None
    # The loss the members train on and the metric that compares them (actlab.tasks,
    # actlab.engine.objective); None: the task's own (cross-entropy and accuracy for a
    # classifier, MSE for a regression). "model": a user model's own `loss` attribute.
    loss: str | None = option(
        None,
        "the training loss: cross_entropy, mse, l1, huber, bce_with_logits (default: the "
        "task's; a --model may define its own `loss(output, target)`)",
        group="training",
        metavar="NAME",
    )
    metric: str | None = option(
        None,
        "what compares the members: accuracy (higher is better) or loss (the test loss, lower "
        "is better; mse/mae name it for --loss mse/l1). Default: accuracy for cross-entropy "
        "classification, else the loss",
        group="training",
        metavar="NAME",
    )
    hidden: tuple[int, ...] = option(
        (128, 128), "hidden widths, e.g. 256,128,64", group="model", kind="ints"
    )
    depths: tuple[int, ...] = option(
        (), "depth study, e.g. 2,4,8,16 (width = first --hidden)", group="model", kind="ints"
    )
    dropout: float = option(0.0, "dropout after each hidden activation", group="model")
    # Refused unless empty/"linear": the model always outputs logits for CrossEntropyLoss.
    output_activation: str | None = option(
        None,
        "refused unless 'linear': the model outputs logits for cross-entropy "
        "(a softmax here would be a double softmax)",
        group="model",
    )
    # PyTorch's default nn.Linear init; Keras uses glorot
    init: str = option(
        "pytorch",
        "weight initialisation (glorot is Keras' default)",
        group="model",
        choices=INITS,
    )
    # The decoder-only transformer (model "gpt", actlab.nn.gpt): model width, blocks, attention
    # heads, and the context in tokens (also the window length of a text dataset). Its FFN
    # has 4 * width hidden units, 2/3 of that for a gated activation (equal parameters).
    width: int = option(64, "--net gpt: model width", group="model")
    layers: int = option(2, "--net gpt: blocks", group="model")
    heads: int = option(4, "--net gpt: attention heads", group="model")
    context: int = option(
        64, "--net gpt: context in tokens (bytes), the length of a training window", group="model"
    )
    # scale init by torch.nn.init.calculate_gain(activation)
    init_gain: bool = option(
        False, "scale init by the activation's recommended gain", group="model"
    )

    # Members.
    activations: tuple[str, ...] = option(
        ("relu", "sigmoid", "tanh", "leaky_relu"),
        "comma-separated catalog specs",
        group="members",
        kind="specs",
    )
    seeds: tuple[int, ...] = option(
        tuple(range(DEFAULT_SEEDS)),
        "a count N (seeds 0..N-1, or from --seed-start), a range A..B (inclusive, e.g. "
        "3..4 to add two seeds to a run of --seeds 3) or a list like 0,1,7. All seeds train as "
        "one stacked model; on Fashion-MNIST's classic MLP, 10 detect gaps of about 0.6 pp",
        group="members",
        kind="seeds",
    )
    lrs: tuple[float, ...] = option(
        (1e-3,),
        "one lr or a list, e.g. 1e-4,3e-4,1e-3",
        group="members",
        flag="--lr",
        kind="floats",
    )

    # Optimisation.
    epochs: int = option(
        10, "epochs to train; rerun a finished study with more to continue it", group="training"
    )
    batch_size: int = option(64, "training batch size", group="training")
    optimizer: str = option("adam", "the optimizer", group="training", choices=OPTIMIZERS)
    weight_decay: float = option(0.0, "(adamw, sgd)", group="training")
    momentum: float = option(0.9, "(sgd)", group="training")  # SGD only
    # Learning-rate schedule per member (actlab.nn.schedule): "constant" or "cosine" (to 0 at
    # the last step), after `warmup` steps of linear warm-up; `clip`: each member's gradient
    # is clipped to this global norm (torch.nn.utils.clip_grad_norm_), None for no clipping.
    schedule: str = option(
        "constant",
        "learning-rate schedule per member: constant, or cosine decay to 0 at the end",
        group="training",
        choices=SCHEDULES,
    )
    warmup: int = option(0, "steps of linear lr warm-up", group="training")
    clip: float | None = option(
        None,
        "clip each member's gradient to this global norm (default: no clipping)",
        group="training",
        metavar="NORM",
    )
    # "val": each activation's lr is chosen on the validation split, test results reported
    # at that lr; "final": every (activation, lr) is reported as it is; "auto": "val" when
    # several lrs are given (a fair comparison tunes the lr per activation), else "final".
    select: str = option(
        "auto",
        "val: choose each activation's lr on the validation split (never the test set); "
        "auto: val when several --lr are given, else final",
        group="training",
        choices=SELECTIONS,
    )

    # Analysis. The smallest gap in accuracy, in percentage points, that matters to the user:
    # the report says how many seeds would detect it, and calls two activations "practically
    # equivalent" only when a TOST shows their gap is inside +-min_gap (see stats.tost).
    # Fixed before the data are seen (TOST needs that). Half a point: on Fashion-MNIST with the
    # classic MLP one network's accuracy moves by 0.27-0.41 pp (SD) from seed to seed alone,
    # so a smaller gap between activations is smaller than what reseeding changes.
    min_gap: float = option(
        0.5,
        "the smallest accuracy gap that matters, in percentage points (a language model: "
        "in hundredths of a bit per character): the report says how many seeds would detect "
        "it, and calls two activations practically equivalent only when a TOST shows their "
        "gap is inside it",
        group="analysis",
        metavar="PP",
    )

    # Execution. These do not change the numbers on CPU (except threads, in the last bits
    # of float reductions), so they are excluded from `study_key`.
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:1", group="execution")
    threads: int | None = option(
        None,
        "CPU threads; default: the fastest count, measured on a few steps of the "
        "study's own model (fewer than the cores when the machine is busy)",
        group="execution",
    )
    diagnostics: bool = option(
        True, "skip gradient/dead-unit/saturation diagnostics", group="execution"
    )
    # How a user model's members run inside a step (actlab.engine.vmap_stack): "vmap" (one
    # batched call per activation), "loop" (member by member), "auto" (vmap on a GPU, member
    # by member on a CPU, where it was measured faster for CNNs, ViTs and MLPs alike).
    stacking: str = option(
        "auto",
        "your own model: run each activation's members as one vmapped call, or member by "
        "member inside each step; auto: vmap on a GPU, member by member on a CPU (faster there)",
        group="execution",
        choices=STACKINGS,
    )

    def __post_init__(self) -> None:
        # Resolve the automatic choices, so config.json records what actually ran.
        if self.select == "auto":
            object.__setattr__(self, "select", "val" if len(self.lrs) > 1 else "final")
        if self.val_size is None:
            object.__setattr__(self, "val_size", 0.1 if self.select == "val" else 0)
        elif self.val_size >= 1 and float(self.val_size).is_integer():
            object.__setattr__(self, "val_size", int(self.val_size))  # a count
        validate(self)

    def replace(self, **changes: object) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ExperimentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys are {sorted(known)}")
        values = dict(data)
        for name in ("hidden", "depths", "activations", "seeds", "lrs", "swap"):
            if name in values and values[name] is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    @property
    def task(self):
        """The study's task (actlab.tasks.Task): it follows from the dataset, with the loss
        and metric asked for (`loss`, `metric`)."""
        from actlab.tasks import task_for_dataset, with_objective

        return with_objective(task_for_dataset(self.dataset), self.loss, self.metric)

    @property
    def is_user_model(self) -> bool:
        """Whether `model` names the user's own network rather than a built-in one."""
        return self.model not in MODELS

    def check_activations(self) -> None:
        """Resolve every activation spec in the catalog, so that a typo fails at once (with
        the nearest names), before any data is loaded. Not part of __post_init__: a run
        directory that used a user-registered activation must stay readable without it."""
        from actlab.catalog import registry as catalog

        seen: dict[str, str] = {}
        for spec in self.activations:
            _, params = catalog.resolve(spec)
            _check_float32_params(spec, params)
            label = _expression_label(catalog.canonical_label(spec))
            if label in seen:
                raise ConfigError(
                    f"activations {seen[label]!r} and {spec!r} are the same activation "
                    f"({label}); give each activation once"
                )
            seen[label] = spec

    def study_key(self) -> dict:
        """The fields that must agree for two runs to be merged or resumed together."""
        data = self.to_dict()
        # min_gap only changes the wording of the analysis, not the numbers; stacking only
        # the rounding; model_source only where the same file was found.
        unkeyed = (
            "device", "threads", "diagnostics", "data_dir", "download", "seeds", "min_gap",
            "model_source", "stacking",
        )  # fmt: skip
        for name in unkeyed:
            data.pop(name)
        # The loss and metric as resolved (actlab.tasks): --loss mse on a regression is the
        # same study as no --loss; another loss or metric is a different one.
        data["loss"], data["metric"] = self.task.loss, self.task.metric
        return data

    @property
    def depth_list(self) -> tuple[int | None, ...]:
        """The depths trained, one stacked model each; (None,) means just `hidden`."""
        return self.depths if self.depths else (None,)

    def hidden_for(self, depth: int | None) -> tuple[int, ...]:
        return self.hidden if depth is None else (self.hidden[0],) * depth


FLOAT32_MAX = 3.4028234663852886e38


def _check_float32_params(spec: str, params: dict) -> None:
    """An activation's numeric parameters must fit float32, the dtype it runs in (e.g.
    ``elu(alpha=1e308)`` would fail in the middle of training)."""
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
            raise ConfigError(
                f"activation {spec!r}: {name}={value!r} is outside the float32 range the "
                f"networks run in (|{name}| <= 3.4e38, finite); give a smaller value"
            )


def _expression_label(label: str) -> str:
    """``expr:`` labels compared by the parsed formula: ``expr:x`` and ``expr:(x)`` are one
    activation."""
    if not label.startswith("expr:"):
        return label
    import ast

    try:
        return "expr:" + ast.unparse(ast.parse(label[5:].strip(), mode="eval"))
    except (SyntaxError, ValueError):
        return label


@dataclass(frozen=True)
class Member:
    """One trained network of a study."""

    index: int  # position in the stacked model of its depth
    activation: str  # the spec as the user wrote it, e.g. "leaky_relu(negative_slope=0.2)"
    seed: int
    lr: float
    depth: int | None = None
    label: str = field(default="")

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", member_label(self.activation, self.lr, self.seed))


def member_label(activation: str, lr: float, seed: int) -> str:
    return f"{activation}|lr={lr:g}|seed={seed}"


def members_for(config: ExperimentConfig, depth: int | None = None) -> list[Member]:
    """Members of one stacked model, seed-major: [seed][activation][lr]."""
    members = []
    for seed in config.seeds:
        for activation in config.activations:
            for lr in config.lrs:
                members.append(Member(len(members), activation, seed, lr, depth))
    return members


def check_output_activation(spec: str | None) -> None:
    """Refuse an output activation: the model always gives logits for CrossEntropyLoss.

    ``softmax`` (or ``log_softmax``) before ``nn.CrossEntropyLoss`` is a double softmax,
    a common mistake when porting a Keras model (``Dense(10, activation="softmax")`` with
    ``categorical_crossentropy``): CrossEntropyLoss applies log-softmax itself."""
    if spec is None or spec.strip().lower() in ("", "none", "linear", "identity", "logits"):
        return
    if "softmax" in spec.lower():
        raise ConfigError(
            f"output activation {spec!r} with cross-entropy is a double softmax "
            "(CrossEntropyLoss applies log-softmax to the logits itself); drop the output "
            "activation: the model always outputs logits"
        )
    raise ConfigError(
        f"output activation {spec!r} is not supported: the output layer gives logits for "
        "CrossEntropyLoss; drop the output activation"
    )


def check_lm_fields(config: ExperimentConfig) -> None:
    """The transformer, text and schedule fields (see ExperimentConfig)."""

    def need(condition: bool, message: str) -> None:
        if not condition:
            raise ConfigError(message)

    for name in ("width", "layers", "heads", "context"):
        value = getattr(config, name)
        need(
            isinstance(value, int) and value >= 1,
            f"--{name} must be a positive integer, got {value}",
        )
    need(
        config.width % config.heads == 0,
        f"--width {config.width} must be a multiple of --heads {config.heads} (width per head)",
    )
    need(
        config.schedule in SCHEDULES,
        f"unknown schedule {config.schedule!r}; choose one of {', '.join(SCHEDULES)}",
    )
    need(config.warmup >= 0, f"--warmup must be a step count >= 0, got {config.warmup}")
    need(
        config.clip is None or (math.isfinite(config.clip) and config.clip > 0),
        f"--clip must be a positive gradient norm, got {config.clip}",
    )
    text = config.dataset.startswith("text:")
    if config.model == "gpt":
        need(text, "--net gpt is a language model: give --dataset text:PATH (or text:stdlib)")
    else:
        need(
            not text,
            f"--dataset {config.dataset} is a language-modelling corpus: add --net gpt",
        )
        need(
            config.schedule == "constant" and config.warmup == 0 and config.clip is None,
            "--schedule, --warmup and --clip apply to --net gpt only for now; drop them",
        )


def check_objective(config: ExperimentConfig) -> None:
    """--loss and --metric: known names (the nearest ones said), and a pair that makes sense
    for the dataset's task."""
    import difflib

    from actlab.tasks import LOSSES, METRIC_IS_LOSS, METRICS, task_for_dataset

    for flag, value, known in (
        ("--loss", config.loss, (*LOSSES, "model")),
        ("--metric", config.metric, (*METRICS, *METRIC_IS_LOSS)),
    ):
        if value is None or value in known:
            continue
        close = difflib.get_close_matches(str(value), known, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"unknown {flag} {value!r}; {hint}choose one of {', '.join(known)}")
    task = task_for_dataset(config.dataset)
    loss = config.loss or task.loss
    if config.metric in METRIC_IS_LOSS and METRIC_IS_LOSS[config.metric] != loss:
        raise ConfigError(
            f"--metric {config.metric} is recorded as the test loss, so it needs --loss "
            f"{METRIC_IS_LOSS[config.metric]} (the loss is {loss}); use --metric loss to "
            f"compare on the {loss} test loss"
        )
    need(
        config.metric != "accuracy" or loss in ("cross_entropy", "model"),
        f"--metric accuracy needs a classification loss (cross_entropy, or your model's own), "
        f"not --loss {loss}; use --metric loss",
    )
    need(
        config.loss != "model" or config.is_user_model,
        "--loss model is your own model's `loss` attribute: it needs --model FILE.py:NAME",
    )
    if task.name == "regress" and loss == "cross_entropy":
        raise ConfigError(
            f"--dataset {config.dataset} is a regression (real-valued targets): cross_entropy "
            "does not apply; use --loss mse, l1 or huber"
        )
    need(
        task.name != "classify" or config.is_user_model or loss == "cross_entropy",
        f"--loss {loss} on a classification dataset: the built-in --net {config.model} gives "
        "class logits for cross_entropy; give your own --model for another loss",
    )
    need(
        task.name != "regress" or config.model == "mlp" or config.is_user_model,
        f"--dataset {config.dataset} is a regression of tabular features: use --net mlp or your "
        "own --model",
    )
    need(
        config.model != "gpt" or config.loss in (None, "token_cross_entropy"),
        "--net gpt trains on the token cross-entropy; drop --loss",
    )


def validate(config: ExperimentConfig) -> None:
    """Refuse configurations that cannot run, with one line that says how to fix them."""
    _validate_choices(config)
    check_objective(config)
    _validate_members(config)
    _validate_numbers(config)


def need(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless `condition`."""
    if not condition:
        raise ConfigError(message)


def _validate_choices(config: ExperimentConfig) -> None:
    """The named choices: optimizer, init, model (and what applies to a user's model)."""
    need(
        config.optimizer in OPTIMIZERS,
        f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}",
    )
    need(config.init in INITS, f"unknown init {config.init!r}; choose one of {', '.join(INITS)}")
    need(
        config.model in MODELS or ":" in config.model,
        f"unknown model {config.model!r}; choose one of {', '.join(MODELS)}, or your own "
        "network as FILE.py:NAME or module.path:NAME",
    )
    if config.is_user_model:
        # The user's network defines its own layers, init and dropout.
        need(not config.depths, "--depths applies to the built-in MLP only; drop --depths")
        need(
            config.dropout == 0,
            "--dropout applies to the built-in models; put nn.Dropout in your model instead",
        )
        need(
            config.init == "pytorch" and not config.init_gain,
            "--init/--init-gain apply to the built-in models; your model initialises itself",
        )
    else:
        need(not config.swap, "--swap applies to your own model (--model FILE.py:NAME) only")
    check_lm_fields(config)
    need(
        config.stacking in STACKINGS,
        f"unknown stacking {config.stacking!r}; choose one of {', '.join(STACKINGS)}",
    )
    need(
        config.select in SELECTIONS,
        f"unknown selection {config.select!r}; choose one of {', '.join(SELECTIONS)}",
    )


def _validate_members(config: ExperimentConfig) -> None:
    """Activations, seeds and learning rates: the member dimensions."""
    need(len(config.activations) > 0, "no activations given; e.g. --activations relu,tanh")
    for spec in config.activations:
        need(isinstance(spec, str), f"activation {spec!r} must be a spec string, e.g. 'relu'")
        bad = control_characters(spec)
        need(
            not bad,
            f"activation spec {spec!r} contains control characters ({', '.join(bad)}); "
            "write it on one line without them",
        )
    need(
        len(set(config.activations)) == len(config.activations),
        f"duplicate activations in {list(config.activations)}",
    )
    need(len(config.seeds) > 0, "no seeds given; e.g. --seeds 3")
    need(len(set(config.seeds)) == len(config.seeds), f"duplicate seeds in {list(config.seeds)}")
    need(
        len(config.lrs) > 0 and all(0 < lr < math.inf for lr in config.lrs),
        f"learning rates must be positive finite numbers, got {list(config.lrs)}",
    )
    members = len(config.seeds) * len(config.activations) * len(config.lrs)
    need(
        members <= MAX_MEMBERS,
        f"{members} members (seeds x activations x lrs) is more than {MAX_MEMBERS}; "
        "give fewer --seeds, --activations or --lr",
    )
    need(len(set(config.lrs)) == len(config.lrs), f"duplicate learning rates in {list(config.lrs)}")


def _validate_numbers(config: ExperimentConfig) -> None:
    """Counts, sizes and rates in their ranges."""
    need(
        config.threads is None or 1 <= config.threads <= MAX_THREADS,
        f"--threads must be between 1 and {MAX_THREADS}, got {config.threads}",
    )
    need(
        math.isfinite(config.weight_decay) and math.isfinite(config.momentum),
        "--weight-decay and --momentum must be finite numbers",
    )
    need(
        1 <= config.epochs <= MAX_EPOCHS,
        f"--epochs must be from 1 to {MAX_EPOCHS}, got {config.epochs}",
    )
    need(config.batch_size >= 1, f"--batch-size must be at least 1, got {config.batch_size}")
    need(
        all(h >= 1 for h in config.hidden) and len(config.hidden) >= 1,
        f"--hidden must be positive widths, got {list(config.hidden)}",
    )
    need(
        all(1 <= d <= MAX_DEPTH for d in config.depths),
        f"--depths must be between 1 and {MAX_DEPTH} hidden layers, got {list(config.depths)}",
    )
    need(
        len(set(config.depths)) == len(config.depths),
        f"duplicate depths in {list(config.depths)}; give each depth once",
    )
    need(0.0 <= config.dropout < 1.0, f"--dropout must be in [0, 1), got {config.dropout}")
    need(
        isinstance(config.min_gap, (int, float)) and 0 < config.min_gap < 100,
        f"--min-gap is in percentage points of accuracy and must be in (0, 100), got {config.min_gap}",
    )
    # Typical values are 1e-5..1e-1; above 1 the decay outweighs the gradient (and 1e308
    # overflows the float32 optimizer kernels), so it is refused rather than trained.
    need(
        0 <= config.weight_decay <= 1,
        f"--weight-decay must be in [0, 1], got {config.weight_decay}",
    )
    need(0 <= config.momentum < 1, f"--momentum must be in [0, 1), got {config.momentum}")
    check_output_activation(config.output_activation)
    need(
        config.val_size >= 0 and (config.val_size < 1 or float(config.val_size).is_integer()),
        f"--val-size must be a count or a fraction in (0, 1) of train, got {config.val_size}",
    )
    need(
        config.select != "val" or config.val_size > 0,
        "--select val needs a validation split; add e.g. --val-size 5000 (the test split is never used for selection)",
    )
