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
- A member whose loss turns NaN/inf, or explodes past DIVERGED_LOSS_FACTOR times an
  uninformed guess's loss (ln(classes) for cross-entropy; actlab.engine.objective),
  is frozen (lr 0, gradients and optimizer state zeroed) and recorded as diverged in that
  epoch; its loss is masked out of the sum, and the others go on.

It prints nothing: `train` yields one `EpochResult` per epoch (the metrics.csv and
diagnostics.csv rows, and the state to checkpoint); `on_step` reports progress.

This module holds the Trainer and its step; the parts it uses live in: actlab.engine.batches
(data on the device, batch order), actlab.engine.divergence, actlab.engine.evaluation,
actlab.engine.probe (diagnostics) and actlab.engine.results (StepInfo, EpochResult).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from actlab.config import ExperimentConfig, Member, members_for
from actlab.engine.batches import (
    DeviceData,
    batch_bounds,
    epoch_permutation,
    shuffle_generator,
)
from actlab.engine.divergence import (
    CUDA_SYNC_EVERY,
    DIVERGED_LOSS_FACTOR,
    healthy,
    record_diverged,
)
from actlab.engine.evaluation import EVAL_CHUNK, evaluate_members, evaluate_split
from actlab.engine.memory import samples_within_budget
from actlab.engine.mlp_step import MLPStep
from actlab.engine.mlp_step import supports as hand_written_backward_supports
from actlab.engine.objective import objective_of
from actlab.engine.probe import diagnostics_rows, layer_grad_norms, probe_index, stacked_probe
from actlab.engine.results import EpochResult, StepInfo, member_fields, metrics_row
from actlab.engine.step_graph import StepGraph
from actlab.errors import ConfigError, ModelNotice, RunDirError
from actlab.nn.optim import StackedOptimizer


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

    `dataset` is an actlab.data.dataset.Dataset (or a DeviceData); `state` an `EpochResult.state`
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
        self.objective = objective_of(config)  # the loss, and whether accuracy is counted
        if model is None:
            model = build_stacked_model(
                config, self.members, self.data, self.device, depth, self.objective
            )
        self.model = model
        # A user's network with BatchNorm merges a last batch of one sample into the one
        # before (said once); every other model keeps it.
        self.merge_single = bool(getattr(model, "has_batchnorm", False))
        self._say_merged_batch()
        # The MLP trains with a hand-written backward pass (the same gradients, without
        # autograd's per-step overhead); other models, and learnable activations, with
        # autograd. Set it to None to train with autograd (the tests compare both).
        fused = self.objective.name == "cross_entropy" and hand_written_backward_supports(model)
        self.mlp_step = MLPStep(model) if fused else None
        self.optimizer = StackedOptimizer(
            model.parameter_members(),
            [m.lr for m in self.members],
            kind=config.optimizer,
            weight_decay=config.weight_decay,
            momentum=config.momentum,
        )
        self.generators = [shuffle_generator(seed) for seed in self.seeds]
        self._loss_limit = DIVERGED_LOSS_FACTOR * self.objective.divergence_scale(
            self.data.y_train, self.data.num_classes
        )
        self.epoch = 0
        self.diverged_epoch: list[int | None] = [None] * len(self.members)
        self.with_diagnostics = bool(config.diagnostics)
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
        self.probe_index = probe_index(
            model, self.data.x_train.shape[0], units, sized_for, self.device
        )

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
        self.model.eval()  # no dropout: no generator is advanced
        units = self.model.units_per_sample(self.data.x_train[:1].unsqueeze(0))
        self.model.train()
        return units

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
        positions = max(self.data.y_train.numel(), 1)  # predictions counted per epoch
        train_loss = (loss_sum / steps).tolist()
        train_acc = (correct.double() / positions).tolist()
        val = (
            self._evaluate_split(self.data.x_val, self.data.y_val) if len(self.data.y_val) else None
        )
        test = self._evaluate_split(self.data.x_test, self.data.y_test)
        diag = self._probe(grad_norm_sum / steps) if self.with_diagnostics else None
        elapsed = time.perf_counter() - start

        metrics, diagnostics = [], []
        for k, member in enumerate(self.members):
            if not alive_before[k]:
                continue
            measured = {"train_loss": train_loss[k]}
            if self.objective.accuracy:  # else the accuracy columns stay empty
                measured["train_acc"] = train_acc[k]
            if val is not None:
                measured.update(val_loss=val.losses[k], val_acc=val.accuracies[k])
                if val.metrics is not None:
                    measured["val_metric"] = val.metrics[k]
            measured.update(test_loss=test.losses[k], test_acc=test.accuracies[k])
            if test.metrics is not None:  # a study compared on the model's own metric
                measured["test_metric"] = test.metrics[k]
            diverged = k in newly
            metrics.append(
                metrics_row(member, self.depth, self.epoch, elapsed, diverged, **measured)
            )
            if diag is not None and not diverged:
                fields = member_fields(member, self.depth, self.epoch)
                diagnostics += diagnostics_rows(fields, diag, k)
        return EpochResult(
            depth=self.depth,
            epoch=self.epoch,
            epochs=self.config.epochs,
            members=self.members,
            metrics=metrics,
            diagnostics=diagnostics,
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
        targets = data.y_train.index_select(0, flat_index).view(S, b, *data.y_train.shape[1:])
        return inputs, targets.index_select(0, self.member_seed)  # member k: its seed's

    def _forward(self, inputs: Tensor, targets: Tensor):
        """Logits (K, b, classes), the members' mean losses (K,) and what backward needs."""
        if self.mlp_step is not None:
            return self.mlp_step.forward(inputs, targets)
        logits = self.model(inputs)
        return logits, self.objective.member_losses(logits, targets), None

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
            sums.grad_norm += layer_grad_norms(self.model)
        self.optimizer.step(alive)
        with torch.no_grad():
            losses = losses.detach()
            sums.loss += losses if alive is None else torch.where(alive, losses, 0.0)
            if self.mlp_step is not None:
                self.mlp_step.count_correct(cache, sums.correct)
            elif self.objective.accuracy:
                sums.correct += self.objective.correct(logits, targets)

    def _host_checked_step(self, index: Tensor) -> Tensor:
        """The CPU step: one host read of the K losses, so a diverging member is frozen
        before its own update (nearly free on a CPU)."""
        inputs, targets = self._batch(index)
        if self.mlp_step is None and getattr(self.model, "member_by_member", False):
            return self._member_by_member_step(inputs, targets)
        logits, losses, cache = self._forward(inputs, targets)
        limit = self._loss_limit
        ok = healthy(losses.detach().tolist(), limit)
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
        limit, alive, objective = self._loss_limit, self.alive, self.objective
        for p in self.optimizer.params:
            p.grad = None

        def member_loss(output: Tensor, target: Tensor) -> Tensor:  # as `_forward`'s row
            return objective.member_losses(output.unsqueeze(0), target.unsqueeze(0))[0]

        logits, losses = self.model.train_members(
            inputs, targets, member_loss, lambda k, v: alive[k] and healthy([v], limit)[0]
        )
        ok = healthy(losses.tolist(), limit)
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
        newly = record_diverged(self.diverged_epoch, flags, self.epoch)
        if not newly:
            return
        alive[newly] = False
        self.optimizer.freeze(newly)

    def evaluate(self, x: Tensor, y: Tensor) -> tuple[list[float], list]:
        """Mean loss and accuracy of every member on (x, y), in eval mode, in chunks (the
        objective's, actlab.engine.objective; accuracies None when it counts none)."""
        return evaluate_members(
            self.model, x, y, len(self.members), self.eval_chunk, self.objective
        )

    def _evaluate_split(self, x: Tensor, y: Tensor):
        """`evaluate`, and the model's own metric on the whole split (an Evaluation)."""
        return evaluate_split(self.model, x, y, len(self.members), self.eval_chunk, self.objective)

    def _probe(self, grad_norms: Tensor) -> dict | None:
        """Diagnostics on the fixed probe batch (eval mode); the optimizer is not touched.
        A probe that fails costs this epoch its diagnostics (said once), never the epoch."""
        try:
            own = getattr(self.model, "probe", None)
            if own is None:
                x, y = self.data.x_train[self.probe_index], self.data.y_train[self.probe_index]
                return stacked_probe(
                    self.model, self.optimizer.params, x, y, grad_norms, self.objective
                )
            x = self.data.x_train[self.probe_index]
            measured = own(x, self.data.y_train[self.probe_index], loss=self.objective.single)
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


def build_stacked_model(
    config: ExperimentConfig,
    members: list[Member],
    data,
    device: torch.device,
    depth,
    objective=None,
) -> nn.Module:
    """The stacked model of `members`: a user's network stacked by torch.func
    (actlab.engine.vmap_stack; its output checked against `objective`, the study's loss),
    or a built-in model (actlab.nn.models)."""
    if config.is_user_model:
        from actlab.engine.vmap_stack import StackedUserModel
        from actlab.nn.user_model import load_for

        return StackedUserModel(
            load_for(config),
            members,
            config.swap,
            data.x_train[:2],
            data.num_classes,
            device,
            stacking=config.stacking,
            batch_size=config.batch_size,
            objective=objective,
            targets=data.y_train[:2],
        )
    from actlab.nn import mlp_builder

    if mlp_builder.needs_builder(config):  # gated members: see actlab.nn.mlp_builder
        from actlab.engine.vmap_stack import StackedUserModel

        return StackedUserModel(
            mlp_builder.user_model_for(config, data.input_shape, data.num_classes, depth),
            members,
            (),
            data.x_train[:2],
            data.num_classes,
            device,
            stacking=config.stacking,
            batch_size=config.batch_size,
            objective=objective,
            targets=data.y_train[:2],
        )
    from actlab.nn.models import build_model

    return build_model(config, members, data.input_shape, data.num_classes, device, depth)


def members_of(config: ExperimentConfig) -> list[Member]:
    """All members of a study, depth after depth (the "members" block of config.json)."""
    return [m for depth in config.depth_list for m in members_for(config, depth)]
