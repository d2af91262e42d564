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


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that decides the numbers of a study. Defaults are the classic protocol."""

    # Data. The test split is never used for selection; `val_size` holds out a validation
    # split from train with a fixed seed.
    dataset: str = "mnist"
    data_dir: str | None = None
    download: bool = True
    # A count, or a fraction in (0, 1) of train; None: 0.1 when selecting on validation, else 0.
    val_size: float | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    standardize: bool = False  # default scaling is x/255, as torchvision's ToTensor does

    # Model. `hidden` are the MLP widths (784-128-128-10 by default); `depths`, when given,
    # replaces it by a depth study: `depth` hidden layers of width hidden[0] each.
    # `model` is "mlp", "cnn", or the user's own network as "FILE.py:NAME" or
    # "module.path:NAME" (actlab.nn.user_model); `swap` names the activations replaced in it
    # (empty: every catalog activation found), and `model_sha256` is the hash of its source
    # file, so that a run is never resumed with a changed model.
    model: str = "mlp"
    swap: tuple[str, ...] = ()
    model_source: str | None = None
    model_sha256: str | None = None
    hidden: tuple[int, ...] = (128, 128)
    depths: tuple[int, ...] = ()
    dropout: float = 0.0
    # Refused unless empty/"linear": the model always outputs logits for CrossEntropyLoss.
    output_activation: str | None = None
    init: str = "pytorch"  # PyTorch's default nn.Linear init; Keras uses glorot
    # The decoder-only transformer (model "gpt", actlab.nn.gpt): model width, blocks, attention
    # heads, and the context in tokens (also the window length of a text dataset). Its FFN
    # has 4 * width hidden units, 2/3 of that for a gated activation (equal parameters).
    width: int = 64
    layers: int = 2
    heads: int = 4
    context: int = 64
    init_gain: bool = False  # scale init by torch.nn.init.calculate_gain(activation)

    # Members.
    activations: tuple[str, ...] = ("relu", "sigmoid", "tanh", "leaky_relu")
    seeds: tuple[int, ...] = (0,)
    lrs: tuple[float, ...] = (1e-3,)

    # Optimisation.
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    # Learning-rate schedule per member (actlab.nn.schedule): "constant" or "cosine" (to 0 at
    # the last step), after `warmup` steps of linear warm-up; `clip`: each member's gradient
    # is clipped to this global norm (torch.nn.utils.clip_grad_norm_), None for no clipping.
    schedule: str = "constant"
    warmup: int = 0
    clip: float | None = None
    # "val": each activation's lr is chosen on the validation split, test results reported
    # at that lr; "final": every (activation, lr) is reported as it is; "auto": "val" when
    # several lrs are given (a fair comparison tunes the lr per activation), else "final".
    select: str = "auto"

    # Analysis. The smallest gap in accuracy, in percentage points, that matters to the user:
    # the report says how many seeds would detect it, and calls two activations "practically
    # equivalent" only when a TOST shows their gap is inside +-min_gap (see stats.tost).
    # Fixed before the data are seen (TOST needs that). Half a point: on Fashion-MNIST with the
    # classic MLP one network's accuracy moves by 0.27-0.41 pp (SD) from seed to seed alone,
    # so a smaller gap between activations is smaller than what reseeding changes.
    min_gap: float = 0.5

    # Execution. These do not change the numbers on CPU (except threads, in the last bits
    # of float reductions), so they are excluded from `study_key`.
    device: str = "auto"  # "auto" = CUDA when present
    threads: int | None = None
    diagnostics: bool = True
    # How a user model's members run inside a step (actlab.engine.vmap_stack): "vmap" (one
    # batched call per activation), "loop" (member by member), "auto" (vmap on a GPU, member
    # by member on a CPU, where it was measured faster for CNNs, ViTs and MLPs alike).
    stacking: str = "auto"

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
        """The study's task (actlab.tasks.Task): it follows from the dataset."""
        from actlab.tasks import task_for_dataset

        return task_for_dataset(self.dataset)

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


def validate(config: ExperimentConfig) -> None:
    """Refuse configurations that cannot run, with one line that says how to fix them."""

    def need(condition: bool, message: str) -> None:
        if not condition:
            raise ConfigError(message)

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
    need(
        config.threads is None or 1 <= config.threads <= MAX_THREADS,
        f"--threads must be between 1 and {MAX_THREADS}, got {config.threads}",
    )
    need(
        math.isfinite(config.weight_decay) and math.isfinite(config.momentum),
        "--weight-decay and --momentum must be finite numbers",
    )
    need(len(set(config.lrs)) == len(config.lrs), f"duplicate learning rates in {list(config.lrs)}")
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
