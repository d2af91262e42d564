"""Fused multi-model training: every member of a study as one stacked model. Silent.

The engine trains the K members of one stacked model (see actlab.nn.models) together:

- The whole dataset lives on the device as float32; each epoch draws one permutation per
  seed from that seed's own ``torch.Generator``, so the members that share a seed share
  the batch order (a paired comparison). A batch is (S, B, C, H, W), taken by indexing;
  the last partial batch is kept (as ``DataLoader(drop_last=False)``).
- Member k's loss is its own mean cross-entropy; the member losses are summed and one
  backward pass gives every member exactly the gradient of its own loss. The stacked
  optimizer (actlab.nn.optim) is elementwise with a per-member lr, so this is exactly K
  independent ``torch.optim`` runs.
- A member whose loss turns NaN/inf, or explodes past DIVERGED_LOSS_FACTOR * ln(classes),
  is frozen (lr 0, gradients and optimizer state zeroed) and recorded as diverged in that
  epoch; its loss is masked out of the sum, and the others go on.

It prints nothing: `train` yields one `EpochResult` per epoch (the metrics.csv and
diagnostics.csv rows, and the state to checkpoint); `on_step` reports progress.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from actlab.config import ExperimentConfig, Member, members_for
from actlab.engine.memory import ACTIVATION_BUDGET
from actlab.engine.mlp_step import MLPStep
from actlab.engine.mlp_step import supports as hand_written_backward_supports
from actlab.engine.step_graph import StepGraph
from actlab.errors import ConfigError, ModelNotice, RunDirError
from actlab.nn.optim import StackedOptimizer

try:  # diagnostics are optional: the engine must train without them
    from actlab.engine import diagnostics as diagnostics_lib
except ImportError:  # pragma: no cover - only while the module is missing
    diagnostics_lib = None

PROBE_SIZE = 512  # training samples of the fixed diagnostics probe batch
PROBE_SEED = 20_240_601  # fixes the probe samples, independent of the study's seeds
EVAL_CHUNK = 2000  # evaluation batch size (memory only: results do not depend on it)
CUDA_SYNC_EVERY = 50  # steps between host checks for divergence on a GPU
# A member diverges when a step loss is NaN/inf or above this many times ln(num_classes),
# the loss of a uniform guess: Adam with a huge lr blows the loss up to thousands without
# ever reaching inf (its steps are bounded by lr), and such a member has stopped learning.
DIVERGED_LOSS_FACTOR = 100.0


METRIC_NAMES = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


@dataclass
class StepInfo:
    """Passed to `on_step` after every optimizer step. `losses` (K,) stays on the device:
    reading it forces a synchronisation."""

    depth: int | None
    epoch: int
    epochs: int
    step: int  # 1-based, within the epoch
    steps: int
    losses: Tensor


@dataclass
class EpochResult:
    """One epoch of one stacked model: rows for the run directory and the state after it."""

    depth: int | None
    epoch: int  # 1-based
    epochs: int
    members: list[Member]
    metrics: list[dict]
    diagnostics: list[dict]
    epoch_time_s: float
    diverged: list[int] = field(default_factory=list)  # members that diverged in this epoch
    state: dict = field(default_factory=dict)  # engine state; save it before the next epoch


@dataclass
class DeviceData:
    """The dataset as float32 tensors on the device (converted once, shared by depths)."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    input_shape: tuple[int, int, int]

    @classmethod
    def from_dataset(cls, dataset, device: torch.device | str) -> DeviceData:
        def put(x: Tensor) -> Tensor:
            return dataset.float_inputs(x).to(device)

        return cls(
            put(dataset.x_train),
            dataset.y_train.to(device=device, dtype=torch.long),
            put(dataset.x_val),
            dataset.y_val.to(device=device, dtype=torch.long),
            put(dataset.x_test),
            dataset.y_test.to(device=device, dtype=torch.long),
            int(dataset.num_classes),
            tuple(dataset.input_shape),
        )


@dataclass
class EpochSums:
    """One epoch's running sums on the device (persistent: a CUDA graph writes into them)."""

    loss: Tensor  # (K,) sum of step losses
    correct: Tensor  # (K,) correct training predictions
    grad_norm: Tensor  # (K, layers) sum of per-step gradient norms (diagnostics)
    alive: Tensor  # (K,) bool: not diverged

    @classmethod
    def zeros(cls, members: int, layers: int, device: torch.device) -> EpochSums:
        return cls(
            torch.zeros(members, device=device),
            torch.zeros(members, dtype=torch.long, device=device),
            torch.zeros(members, layers, device=device),
            torch.ones(members, dtype=torch.bool, device=device),
        )


def batch_bounds(n: int, batch: int, *, merge_single: bool = False) -> list[tuple[int, int]]:
    """(begin, end) of each step's samples in an epoch's permutation: batches of `batch`,
    the last partial one kept (``DataLoader(drop_last=False)``). `merge_single`: a last
    batch of one sample is merged into the one before (BatchNorm cannot train on one
    sample: torch raises "Expected more than 1 value per channel when training")."""
    bounds = [(begin, min(begin + batch, n)) for begin in range(0, n, batch)]
    if merge_single and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def samples_within_budget(units_per_sample: int, members: int, most: int) -> int:
    """How many samples fit ACTIVATION_BUDGET for one layer of all members (1 to `most`)."""
    return max(1, min(most, ACTIVATION_BUDGET // max(1, units_per_sample * members)))


def resolve_device(name: str) -> torch.device:
    """ "auto" is CUDA when present, else the CPU; anything else must be available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} "
            "CUDA device(s), cuda:0 to cuda:N-1"
        )
    return device


def shuffle_generator(seed: int) -> torch.Generator:
    """The generator of a seed's batch order (one permutation of the train set per epoch)."""
    return torch.Generator().manual_seed(seed)


def epoch_permutation(generator: torch.Generator, size: int) -> Tensor:
    return torch.randperm(size, generator=generator)


def device_data(dataset, device: torch.device | str):
    """The dataset on the device: a DeviceData, or the token splits of a text corpus."""
    if getattr(dataset, "task", "classify") == "lm":
        from actlab.engine.lm_trainer import TextDeviceData

        return dataset if isinstance(dataset, TextDeviceData) else TextDeviceData(dataset, device)
    return DeviceData.from_dataset(dataset, device)


def make_trainer(config: ExperimentConfig, data, **options):
    """The trainer of a study's task (actlab.tasks): a language model's (--net gpt on a text
    corpus) or the classifier's Trainer."""
    if config.task.name == "lm":
        from actlab.engine.lm_trainer import LMTrainer

        return LMTrainer(config, data, **options)
    return Trainer(config, data, **options)


def train(
    config: ExperimentConfig,
    dataset,
    *,
    depth: int | None = None,
    state: dict | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    members: Sequence[Member] | None = None,
    budget_members: int | None = None,
) -> Iterator[EpochResult]:
    """Train the stacked model of `depth` for `config.epochs` epochs, one result per epoch.

    `dataset` is an actlab.data.datasets.Dataset (or a DeviceData); `state` an `EpochResult.state`
    to resume from (training continues after its epoch). `members`: a subset of
    ``members_for(config, depth)`` to train (default all of them). A member's initial
    weights, batch order and dropout masks depend on its seed alone, so a subset (a shard)
    trains exactly as the same members do inside the whole study (for the built-in models
    the subset must be the whole grid of some seeds: their stacking is seed-major, and every
    GEMM of a seed's members keeps its shape). `budget_members`: see Trainer."""
    trainer = make_trainer(
        config, dataset, depth=depth, members=members, budget_members=budget_members
    )
    if state is not None:
        trainer.load_state(state)
    while trainer.epoch < config.epochs:
        yield trainer.train_epoch(on_step)


class Trainer:
    """The stacked model of one depth, its optimizer and its batch-order generators."""

    def __init__(
        self,
        config: ExperimentConfig,
        dataset,
        *,
        depth: int | None = None,
        model: nn.Module | None = None,
        members: Sequence[Member] | None = None,
        budget_members: int | None = None,
    ) -> None:
        """`budget_members`: the member count that sizes the evaluation chunks and the
        probe batch (ACTIVATION_BUDGET); default, this model's. A shard of a study passes
        the whole study's count, so its diagnostics probe the same samples."""
        self.config = config
        self.depth = depth
        self.device = resolve_device(config.device)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.data = (
            dataset
            if isinstance(dataset, DeviceData)
            else DeviceData.from_dataset(dataset, self.device)
        )
        self.members = list(members) if members is not None else members_for(config, depth)
        # The seeds of these members, in order: one batch-order generator each, and the
        # position of each member's seed (its batch) in a step's (S, B, ...) inputs.
        self.seeds = tuple(dict.fromkeys(m.seed for m in self.members))
        self.member_seed = torch.tensor(
            [self.seeds.index(m.seed) for m in self.members], device=self.device
        )
        if model is None and config.is_user_model:
            from actlab.engine.vmap_stack import StackedUserModel
            from actlab.nn.user_model import load_for

            model = StackedUserModel(
                load_for(config),
                self.members,
                config.swap,
                self.data.x_train[:2],
                self.data.num_classes,
                self.device,
                stacking=config.stacking,
                batch_size=config.batch_size,
            )
        elif model is None:
            from actlab.nn.models import build_model

            model = build_model(
                config,
                self.members,
                self.data.input_shape,
                self.data.num_classes,
                self.device,
                depth,
            )
        self.model = model
        # A user's network with BatchNorm merges a last batch of one sample into the one
        # before (said once); every other model keeps it.
        self.merge_single = bool(getattr(model, "has_batchnorm", False))
        self._say_merged_batch()
        # The MLP trains with a hand-written backward pass (the same gradients, without
        # autograd's per-step overhead); other models, and learnable activations, with
        # autograd. Set it to None to train with autograd (the tests compare both).
        self.mlp_step = MLPStep(model) if hand_written_backward_supports(model) else None
        self.optimizer = StackedOptimizer(
            model.parameter_members(),
            [m.lr for m in self.members],
            kind=config.optimizer,
            weight_decay=config.weight_decay,
            momentum=config.momentum,
        )
        self.generators = [shuffle_generator(seed) for seed in self.seeds]
        self._loss_limit = DIVERGED_LOSS_FACTOR * math.log(max(self.data.num_classes, 2))
        self.epoch = 0
        self.diverged_epoch: list[int | None] = [None] * len(self.members)
        self.with_diagnostics = bool(config.diagnostics) and diagnostics_lib is not None
        # On the CPU a host check of the losses is nearly free, so a diverging member is
        # frozen before its step; on a GPU the check stays on the device (no sync per step).
        self.check_on_host = self.device.type == "cpu"
        num_weights = len(model.weight_layers()) if self.with_diagnostics else 0
        self._sums = EpochSums.zeros(len(self.members), num_weights, self.device)
        # On a GPU the full-batch step is captured once as a CUDA graph and replayed: one
        # launch instead of hundreds of small kernels (set it to None for eager steps).
        self._graph = StepGraph.for_trainer(self)
        units = self._units_per_sample()
        sized_for = budget_members or len(self.members)
        self.eval_chunk = samples_within_budget(units, sized_for, EVAL_CHUNK)
        self.probe_index = self._probe_index(units, sized_for)

    def _probe_index(self, units: int, sized_for: int) -> Tensor:
        """The fixed probe samples: a prefix of one permutation fixed by PROBE_SEED (a
        shard probes the same ones). Its size: a user's network says it (from one member,
        whatever the member count); the built-in models fit ACTIVATION_BUDGET."""
        n = self.data.x_train.shape[0]
        probe = torch.randperm(n, generator=torch.Generator().manual_seed(PROBE_SEED))
        own_size = getattr(self.model, "probe_size", None)
        if own_size is not None:
            size = own_size(PROBE_SIZE)
        else:
            size = samples_within_budget(units, sized_for, PROBE_SIZE)
        return probe[:size].to(self.device)

    def _say_merged_batch(self) -> None:
        n, batch = self.data.x_train.shape[0], self.config.batch_size
        if self.merge_single and n > batch and n % batch == 1:
            warnings.warn(
                f"the last batch of each epoch would hold 1 sample ({n} = {n // batch} x "
                f"{batch} + 1), which BatchNorm cannot train on: it is merged into the batch "
                f"before ({batch + 1} samples)",
                ModelNotice,
                stacklevel=3,
            )

    def timing_step(self) -> None:
        """One training step on a fixed batch (the first `batch_size` train samples for
        every seed), to measure the step time (actlab.engine.threads). It trains this Trainer's
        model: measure on a Trainer built for it, never on the one whose results are kept."""
        batch = min(self.config.batch_size, self.data.x_train.shape[0])
        index = torch.arange(batch, device=self.device).expand(len(self.generators), batch)
        self.model.train()
        if self.check_on_host:
            self._host_checked_step(index)
        else:
            self._device_checked_step(index, full=True)

    @torch.no_grad()
    def _units_per_sample(self) -> int:
        """The widest hidden layer's units per sample and member (a CNN: C * H * W)."""
        preacts: list[Tensor] = []
        self.model.eval()  # no dropout: no generator is advanced
        self.model(self.data.x_train[:1].unsqueeze(0), preactivations=preacts)
        self.model.train()
        return max(p[0, 0].numel() for p in preacts)

    # --- state ------------------------------------------------------------------------

    def state(self) -> dict:
        """Everything needed to continue exactly where this epoch ended."""
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generators": [g.get_state() for g in self.generators],
            "dropout_generators": [g.get_state() for g in self.model.dropout_generators()],
            "diverged_epoch": list(self.diverged_epoch),
        }

    def load_state(self, state: dict) -> None:
        """Continue from `state` (see `state`); a state that does not fit this model (a
        damaged or foreign checkpoint) is one line (RunDirError), not a traceback."""
        try:
            self._load_state(state)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
            first = " ".join(str(error).split())[:160] or type(error).__name__
            raise RunDirError(
                f"the checkpoint's engine state does not fit this study's model ({first}); "
                "delete checkpoint.pt to restart the run, or restore it"
            ) from None

    def _load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved)
        dropout = self.model.dropout_generators()
        for generator, saved in zip(dropout, state["dropout_generators"], strict=True):
            generator.set_state(saved.cpu())  # generator states are CPU byte tensors
        self.diverged_epoch = list(state["diverged_epoch"])
        self.epoch = int(state["epoch"])

    @property
    def alive(self) -> list[bool]:
        return [epoch is None for epoch in self.diverged_epoch]

    # --- one epoch --------------------------------------------------------------------

    def train_epoch(self, on_step: Callable[[StepInfo], None] | None = None) -> EpochResult:
        start = time.perf_counter()
        self.epoch += 1
        alive_before = self.alive
        loss_sum, correct, grad_norm_sum, steps = self._train_steps(on_step)
        newly = [k for k, was in enumerate(alive_before) if was and not self.alive[k]]
        train_count = self.data.x_train.shape[0]
        train_loss = (loss_sum / steps).tolist()
        train_acc = (correct.double() / train_count).tolist()
        val = self.evaluate(self.data.x_val, self.data.y_val) if len(self.data.y_val) else None
        test = self.evaluate(self.data.x_test, self.data.y_test)
        diag = self._probe(grad_norm_sum / steps) if self.with_diagnostics else None
        elapsed = time.perf_counter() - start

        metrics, diagnostics_rows = [], []
        for k, member in enumerate(self.members):
            if not alive_before[k]:
                continue
            row = {
                **self._member_fields(k, member),
                **dict.fromkeys(METRIC_NAMES),
                "epoch_time_s": elapsed,
            }
            if k in newly:
                metrics.append({**row, "status": "diverged"})
                continue
            row.update(train_loss=train_loss[k], train_acc=train_acc[k])
            if val is not None:
                row.update(val_loss=val[0][k], val_acc=val[1][k])
            row.update(test_loss=test[0][k], test_acc=test[1][k], status="ok")
            metrics.append(row)
            if diag is not None:
                diagnostics_rows += self._diagnostics_rows(k, member, diag)
        return EpochResult(
            depth=self.depth,
            epoch=self.epoch,
            epochs=self.config.epochs,
            members=self.members,
            metrics=metrics,
            diagnostics=diagnostics_rows,
            epoch_time_s=elapsed,
            diverged=newly,
            state=self.state(),
        )

    def _train_steps(self, on_step):
        """The training loop of one epoch; returns on-device sums (no sync per step on GPU)."""
        data = self.data
        n, batch = data.x_train.shape[0], self.config.batch_size
        bounds = batch_bounds(n, batch, merge_single=self.merge_single)
        steps = len(bounds)
        device = self.device
        perms = torch.stack([epoch_permutation(g, n) for g in self.generators]).to(device)
        sums = self._sums
        for tensor in (sums.loss, sums.correct, sums.grad_norm):
            tensor.zero_()
        sums.alive.copy_(torch.tensor(self.alive))
        self.model.train()
        if any(self.alive):
            for step, (begin, end) in enumerate(bounds):
                index = perms[:, begin:end]  # (S, b)
                if self.check_on_host:
                    losses = self._host_checked_step(index)
                else:
                    losses = self._device_checked_step(index, full=index.shape[1] == batch)
                    if (step + 1) % CUDA_SYNC_EVERY == 0 or step + 1 == steps:
                        self._freeze_nonfinite(sums.alive, sums.alive)
                if on_step is not None:
                    on_step(
                        StepInfo(
                            self.depth, self.epoch, self.config.epochs, step + 1, steps, losses
                        )
                    )
        for p in self.optimizer.params:
            p.grad = None
        return sums.loss, sums.correct, sums.grad_norm, steps

    # --- the step's parts -------------------------------------------------------------

    def _batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs (S, b, C, H, W) and member targets (K, b) of the per-seed batch `index`."""
        data = self.data
        if self.mlp_step is not None:  # into its preallocated buffers
            return self.mlp_step.batch(data.x_train, data.y_train, index)
        S, b = index.shape
        # index_select on the flat index is several times faster than x[index] on the
        # CPU (advanced indexing goes through a generic gather).
        flat_index = index.reshape(S * b)
        inputs = data.x_train.index_select(0, flat_index).view(S, b, *data.x_train.shape[1:])
        targets = data.y_train.index_select(0, flat_index).view(S, b)
        return inputs, targets.index_select(0, self.member_seed)  # member k: its seed's

    def _forward(self, inputs: Tensor, targets: Tensor):
        """Logits (K, b, classes), the members' mean losses (K,) and what backward needs."""
        if self.mlp_step is not None:
            return self.mlp_step.forward(inputs, targets)
        K, b = targets.shape
        logits = self.model(inputs)
        per_sample = F.cross_entropy(
            logits.reshape(K * b, -1), targets.reshape(K * b), reduction="none"
        )
        return logits, per_sample.view(K, b).mean(dim=1), None

    def _backward(self, losses: Tensor, cache, alive: Tensor | None) -> None:
        """Every parameter's .grad of the sum of the member losses (`alive` ones: None, all)."""
        if self.mlp_step is not None:
            self.mlp_step.backward(cache, alive)
            return
        total = losses.sum() if alive is None else torch.where(alive, losses, 0.0).sum()
        for p in self.optimizer.params:
            p.grad = None
        total.backward()

    def _finish_step(
        self, logits: Tensor, targets: Tensor, losses: Tensor, alive, cache=None
    ) -> None:
        """Diagnostics, the optimizer step and the epoch sums, after the backward pass."""
        sums = self._sums
        if self.with_diagnostics:
            sums.grad_norm += self._layer_grad_norms()
        self.optimizer.step(alive)
        with torch.no_grad():
            losses = losses.detach()
            sums.loss += losses if alive is None else torch.where(alive, losses, 0.0)
            if self.mlp_step is not None:
                self.mlp_step.count_correct(cache, sums.correct)
            else:
                sums.correct += (logits.detach().argmax(dim=-1) == targets).sum(dim=1)

    def _host_checked_step(self, index: Tensor) -> Tensor:
        """The CPU step: one host read of the K losses, so a diverging member is frozen
        before its own update (nearly free on a CPU)."""
        inputs, targets = self._batch(index)
        if self.mlp_step is None and getattr(self.model, "member_by_member", False):
            return self._member_by_member_step(inputs, targets)
        logits, losses, cache = self._forward(inputs, targets)
        limit = self._loss_limit
        ok = [math.isfinite(v) and v <= limit for v in losses.detach().tolist()]
        if not all(ok):
            self._freeze_nonfinite(ok, self._sums.alive)
        # With every member alive (known on the host) no loss needs masking.
        alive = None if all(self.alive) else self._sums.alive
        self._backward(losses, cache, alive)
        self._finish_step(logits, targets, losses, alive, cache)
        return losses

    def _member_by_member_step(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """`_host_checked_step` of a user's network whose members all run on their own:
        each member's backward right after its forward (the model's `train_members`), once
        its loss passed the same check; the same gradients and updates."""
        limit, alive = self._loss_limit, self.alive
        for p in self.optimizer.params:
            p.grad = None
        logits, losses = self.model.train_members(
            inputs, targets, member_loss, lambda k, v: alive[k] and math.isfinite(v) and v <= limit
        )
        ok = [math.isfinite(v) and v <= limit for v in losses.tolist()]
        if not all(ok):
            self._freeze_nonfinite(ok, self._sums.alive)
        for p in self.optimizer.params:  # no member of it back-propagated: as a masked sum
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self._finish_step(logits, targets, losses, None if all(self.alive) else self._sums.alive)
        return losses

    def _device_step(self, index: Tensor) -> Tensor:
        """The GPU step: the divergence check stays on the device (no host sync), and the
        members found diverged are masked out of this and every later step."""
        inputs, targets = self._batch(index)
        logits, losses, cache = self._forward(inputs, targets)
        alive = self._sums.alive
        detached = losses.detach()
        alive &= torch.isfinite(detached) & (detached <= self._loss_limit)
        self._backward(losses, cache, alive)
        self._finish_step(logits, targets, losses, alive, cache)
        return losses

    def _device_checked_step(self, index: Tensor, *, full: bool) -> Tensor:
        """`_device_step`, replayed from a CUDA graph for full batches when possible."""
        graph = self._graph
        if graph is None or not full or self.mlp_step is None:
            return self._device_step(index)
        return graph.run(index, self._device_step, self.optimizer)

    def _freeze_nonfinite(self, finite: Tensor | list[bool], alive: Tensor) -> None:
        """Freeze the members alive on the host whose `finite` flag is False (a host sync
        when `finite` is a tensor)."""
        flags = finite.tolist() if isinstance(finite, Tensor) else finite
        newly = [k for k, ok in enumerate(flags) if not ok and self.diverged_epoch[k] is None]
        if not newly:
            return
        for k in newly:
            self.diverged_epoch[k] = self.epoch
        alive[newly] = False
        self.optimizer.freeze(newly)

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor) -> tuple[list[float], list[float]]:
        """Mean loss and accuracy of every member on (x, y), in eval mode, in chunks."""
        model = self.model
        model.eval()
        K = len(self.members)
        loss_sum = torch.zeros(K, dtype=torch.float64, device=self.device)
        correct = torch.zeros(K, dtype=torch.long, device=self.device)
        chunk = self.eval_chunk
        for start in range(0, x.shape[0], chunk):
            inputs, targets = x[start : start + chunk], y[start : start + chunk]
            logits = model(inputs.unsqueeze(0))  # (K, c, classes), the chunk shared by all
            c = inputs.shape[0]
            expanded = targets.expand(K, c)
            losses = F.cross_entropy(
                logits.reshape(K * c, -1), expanded.reshape(K * c), reduction="none"
            )
            loss_sum += losses.view(K, c).sum(dim=1, dtype=torch.float64)
            correct += (logits.argmax(dim=-1) == expanded).sum(dim=1)
        model.train()
        count = max(x.shape[0], 1)
        return (loss_sum / count).tolist(), (correct.double() / count).tolist()

    def _probe(self, grad_norms: Tensor) -> dict | None:
        """Diagnostics on the fixed probe batch (eval mode); the optimizer is not touched.
        A probe that fails costs this epoch its diagnostics (said once), never the epoch."""
        try:
            own = getattr(self.model, "probe", None)
            if own is None:
                return self._stacked_probe(grad_norms)
            x = self.data.x_train[self.probe_index]
            measured = own(x, self.data.y_train[self.probe_index])
            return {
                "grad_norm": grad_norms.tolist(),
                **{k: v.tolist() for k, v in measured.items()},
            }
        except Exception as error:  # the epoch was trained: keep it, without diagnostics
            for p in self.optimizer.params:
                p.grad = None
            self.model.train()
            text = str(error).strip().splitlines()
            warnings.warn(
                f"diagnostics of epoch {self.epoch} skipped: the probe raised "
                f"{type(error).__name__}: {text[0][:200] if text else ''}",
                ModelNotice,
                stacklevel=2,
            )
            return None

    def _stacked_probe(self, grad_norms: Tensor) -> dict:
        """The probe of the built-in stacked models: all members in one forward and backward."""
        model = self.model
        model.eval()
        x = self.data.x_train[self.probe_index].unsqueeze(0)
        y = self.data.y_train[self.probe_index]
        K = len(self.members)
        preacts: list[Tensor] = []
        logits = model(x, preactivations=preacts)
        c = x.shape[1]
        losses = F.cross_entropy(
            logits.reshape(K * c, -1), y.expand(K, c).reshape(K * c), reduction="none"
        )
        params = self.optimizer.params
        for p in params:
            p.grad = None
        losses.view(K, c).mean(dim=1).sum().backward()
        with torch.no_grad():
            probe_norms = self._layer_grad_norms()
            detached = [p.detach() for p in preacts]
            dead, saturated = diagnostics_lib.unit_fractions(detached, model.member_activations())
            mean, std = diagnostics_lib.preact_moments(detached)
        for p in params:
            p.grad = None
        model.train()
        return {
            "grad_norm": grad_norms.tolist(),
            "probe_grad_norm": probe_norms.tolist(),
            "dead_frac": dead.tolist(),
            "saturated_frac": saturated.tolist(),
            "preact_mean": mean.tolist(),
            "preact_std": std.tolist(),
        }

    def _layer_grad_norms(self) -> Tensor:
        """(K, L) norms of each member's weight gradient per layer (a model may say how)."""
        own = getattr(self.model, "layer_grad_norms", None)
        if own is not None:
            return own()
        return diagnostics_lib.layer_grad_norms(self.model.weight_layers())

    def _member_fields(self, k: int, member: Member) -> dict:
        """The columns that name a member's row in metrics.csv and diagnostics.csv (the
        member's index in the whole study, also when this trainer holds a subset)."""
        return {
            "depth": self.depth,
            "member": member.index,
            "activation": member.activation,
            "seed": member.seed,
            "lr": member.lr,
            "epoch": self.epoch,
        }

    def _diagnostics_rows(self, k: int, member: Member, diag: dict) -> list[dict]:
        rows = []
        num_layers = len(diag["grad_norm"][k])
        hidden = len(diag["dead_frac"][k]) if "dead_frac" in diag else 0
        # A user model may have more activation sites than weight layers: site i is
        # reported on row `layer` i + 1, without gradient norms beyond the weight layers.
        for layer in range(max(num_layers, hidden)):
            row = {**self._member_fields(k, member), "layer": layer + 1}
            if layer < num_layers:
                row["grad_norm"] = diag["grad_norm"][k][layer]
                row["probe_grad_norm"] = diag["probe_grad_norm"][k][layer]
            if layer < hidden:  # hidden layers only: the output layer has no activation
                for name in ("dead_frac", "saturated_frac", "preact_mean", "preact_std"):
                    row[name] = diag[name][k][layer]
            rows.append(row)
        return rows


def member_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """One member's mean cross-entropy, (B, classes) and (B,) -> (), reduced as `_forward`
    reduces each member's row of the stacked losses."""
    return F.cross_entropy(logits, targets, reduction="none").view(1, -1).mean(dim=1)[0]


def members_of(config: ExperimentConfig) -> list[Member]:
    """All members of a study, depth after depth (the "members" block of config.json)."""
    return [m for depth in config.depth_list for m in members_for(config, depth)]
