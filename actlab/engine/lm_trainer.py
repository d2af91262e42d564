"""Language-model training of K stacked GPT members (actlab.nn.gpt). Silent.

The same contract as actlab.engine.trainer.Trainer (epochs yield EpochResult rows, state
to checkpoint, divergence freezes a member), for the ``lm`` task:

- Batches are random windows of the train split: each step draws, from each seed's own
  generator, `batch_size` start positions uniform over the train bytes; inputs are the
  `context` bytes from there and targets the next ones. Members of a seed read the same
  windows (paired across activations). An epoch is as many windows as the train split
  holds end to end (``TextDataset.train_size``), so ``ceil(that / batch_size)`` steps.
- A member's loss is its mean token cross-entropy over its batch (nats/token); the K losses
  are summed and one autograd backward gives each member its own gradient.
- Per member, and in this order after the backward: gradient clipping to global norm
  ``config.clip`` (torch.nn.utils.clip_grad_norm_ over that member's parameters), the lr
  schedule's factor (actlab.nn.schedule, from the optimizer's step count, so a resume
  continues the schedule), then the stacked optimizer step.
- Evaluation: every target byte of the split once (consecutive windows), mean token
  cross-entropy in float64 sums. Accuracy columns stay empty: the metric is the loss.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from actlab.config import ExperimentConfig, Member, members_for
from actlab.engine import lm_diagnostics
from actlab.engine.allocator import retain_freed_memory
from actlab.engine.batches import shuffle_generator
from actlab.engine.divergence import healthy, loss_limit, record_diverged
from actlab.engine.memory import samples_within_budget
from actlab.engine.results import EpochResult, StepInfo, member_fields, metrics_row
from actlab.engine.trainer import resolve_device
from actlab.errors import ModelNotice
from actlab.nn.gpt import StackedGPT
from actlab.nn.optim import StackedOptimizer
from actlab.nn.schedule import lr_factor

EVAL_WINDOWS = 256  # most evaluation windows per chunk (memory only)


class TextDeviceData:
    """A TextDataset's splits on the device as int64 tokens, with its evaluation windows.
    x_* / y_*: (N, context) consecutive windows; `train_tokens`: the whole train split."""

    def __init__(self, dataset, device: torch.device | str) -> None:
        self.context = int(dataset.context)
        self.num_classes = int(dataset.num_classes)
        self.input_shape = (self.context,)
        self.train_tokens = dataset.train_bytes.to(device=device, dtype=torch.long)
        self.x_train, self.y_train = self._windows(dataset.train_bytes, device)
        self.x_val, self.y_val = self._windows(dataset.val_bytes, device)
        self.x_test, self.y_test = self._windows(dataset.test_bytes, device)

    def _windows(self, split: Tensor, device) -> tuple[Tensor, Tensor]:
        from actlab.data.text import windows

        x, y = windows(split, self.context)
        return x.to(device=device, dtype=torch.long), y.to(device=device, dtype=torch.long)


def random_windows(
    tokens: Tensor, generators: Sequence[torch.Generator], batch: int, context: int
) -> tuple[Tensor, Tensor]:
    """Inputs and targets (S, batch, context): `batch` random windows of `tokens` per seed,
    start positions uniform over [0, len - context - 1] from that seed's generator."""
    starts = torch.stack(
        [torch.randint(0, len(tokens) - context, (batch,), generator=g) for g in generators]
    ).to(tokens.device)
    offsets = starts.unsqueeze(-1) + torch.arange(context + 1, device=tokens.device)
    windows = tokens[offsets]
    return windows[..., :-1], windows[..., 1:]


class LMTrainer:
    """The stacked GPT of a study, its optimizer and its window generators."""

    mlp_step = None  # the hand-written MLP step does not apply: autograd throughout

    def __init__(
        self,
        config: ExperimentConfig,
        data,
        *,
        depth: int | None = None,
        members: Sequence[Member] | None = None,
        budget_members: int | None = None,
    ) -> None:
        self.config = config
        self.depth = depth
        self.device = resolve_device(config.device)
        if self.device.type == "cpu":
            retain_freed_memory()  # no page faults for each step's activations
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.data = data if isinstance(data, TextDeviceData) else TextDeviceData(data, self.device)
        self.members = list(members) if members is not None else members_for(config, depth)
        self.seeds = tuple(dict.fromkeys(m.seed for m in self.members))
        self.model = StackedGPT(config, self.members).to(self.device)
        self.optimizer = StackedOptimizer(
            self.model.parameter_members(),
            [m.lr for m in self.members],
            kind=config.optimizer,
            weight_decay=config.weight_decay,
            momentum=config.momentum,
        )
        self.generators = [shuffle_generator(seed) for seed in self.seeds]
        self._loss_limit = loss_limit(self.data.num_classes)
        self.epoch = 0
        self.diverged_epoch: list[int | None] = [None] * len(self.members)
        self.steps_per_epoch = math.ceil(self.data.x_train.shape[0] / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        # A window's widest activation per member: the logits or the FFN's hidden layer.
        units = config.context * max(self.data.num_classes, 4 * config.width)
        self.eval_chunk = samples_within_budget(units, len(self.members), EVAL_WINDOWS)
        self._probe_batch: tuple[Tensor, Tensor] | None = None
        self.gradient_sums = lm_diagnostics.GradientSums(self.model) if config.diagnostics else None

    @property
    def alive(self) -> list[bool]:
        return [epoch is None for epoch in self.diverged_epoch]

    # --- state ------------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generators": [g.get_state() for g in self.generators],
            "dropout_generators": [],
            "diverged_epoch": list(self.diverged_epoch),
        }

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved)
        self.diverged_epoch = list(state["diverged_epoch"])
        self.epoch = int(state["epoch"])

    # --- training ---------------------------------------------------------------------

    def step(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """One optimizer step on per-seed windows (S, B, T); returns the (K,) losses."""
        model, optimizer, config = self.model, self.optimizer, self.config
        losses = model.losses(inputs, targets)
        ok = healthy(losses.detach().tolist(), self._loss_limit)
        newly = record_diverged(self.diverged_epoch, ok, self.epoch)
        if newly:
            optimizer.freeze(newly)
        alive = torch.tensor(self.alive, device=self.device)
        for p in optimizer.params:
            p.grad = None
        # A frozen member's loss (and so its gradient) may be NaN: it only reaches its own
        # parameters, which the optimizer step leaves unchanged (it selects, not multiplies).
        torch.where(alive, losses, 0.0).sum().backward()
        if self.gradient_sums is not None:  # diagnostics: the gradient before clipping
            self.gradient_sums.add()
        if config.clip is not None:
            optimizer.clip_grad_norms_(config.clip)
        optimizer.lr_scale = lr_factor(
            optimizer.step_count, self.total_steps, config.schedule, config.warmup
        )
        optimizer.step(None if all(self.alive) else alive)
        return losses.detach()

    def timing_step(self) -> None:
        """One step on fixed windows, to time the step (actlab.engine.threads); trains this
        trainer's model: use a throwaway trainer."""
        T, B = self.config.context, self.config.batch_size
        tokens = self.data.train_tokens
        starts = torch.arange(B, device=self.device) % max(1, len(tokens) - T)
        window = tokens[starts.unsqueeze(-1) + torch.arange(T + 1, device=self.device)]
        S = len(self.seeds)
        x, y = window[:, :-1].expand(S, B, T), window[:, 1:].expand(S, B, T)
        self.model.train()
        self.step(x, y)

    def train_epoch(self, on_step: Callable[[StepInfo], None] | None = None) -> EpochResult:
        start = time.perf_counter()
        self.epoch += 1
        alive_before = self.alive
        K = len(self.members)
        loss_sum = torch.zeros(K, dtype=torch.float64)
        steps = self.steps_per_epoch
        self.model.train()
        if self.gradient_sums is not None:
            self.gradient_sums.mean_and_reset()  # a timing step before this epoch: not counted
        for index in range(steps):
            if not any(self.alive):
                break
            x, y = random_windows(
                self.data.train_tokens, self.generators, self.config.batch_size, self.config.context
            )
            losses = self.step(x, y)
            loss_sum += torch.where(torch.tensor(self.alive), losses.cpu().double(), 0.0)
            if on_step is not None:
                on_step(
                    StepInfo(self.depth, self.epoch, self.config.epochs, index + 1, steps, losses)
                )
        for p in self.optimizer.params:
            p.grad = None
        newly = [k for k, was in enumerate(alive_before) if was and not self.alive[k]]
        val = self.evaluate(self.data.x_val, self.data.y_val) if len(self.data.y_val) else None
        test = self.evaluate(self.data.x_test, self.data.y_test)
        diagnostics = self._diagnostics(alive_before, newly)
        elapsed = time.perf_counter() - start
        return EpochResult(
            depth=self.depth,
            epoch=self.epoch,
            epochs=self.config.epochs,
            members=self.members,
            metrics=self._rows(
                alive_before, newly, (loss_sum / steps).tolist(), val, test, elapsed
            ),
            diagnostics=diagnostics,
            epoch_time_s=elapsed,
            diverged=newly,
            state=self.state(),
        )

    def _diagnostics(self, alive_before: list[bool], newly: list[int]) -> list[dict]:
        """diagnostics.csv rows of the members that trained this epoch and did not diverge
        (actlab.engine.lm_diagnostics). A probe that fails costs this epoch its diagnostics
        (said), never the epoch."""
        if self.gradient_sums is None:
            return []
        grad_norm = self.gradient_sums.mean_and_reset().cpu()
        keep = [alive_before[k] and k not in newly for k in range(len(self.members))]
        try:
            if self._probe_batch is None:
                self._probe_batch = lm_diagnostics.probe_windows(
                    self.data.train_tokens, self.config.context
                )
            measured = lm_diagnostics.probe(self.model, *self._probe_batch, self.alive)
        except Exception as error:  # the epoch was trained: keep it, without diagnostics
            warnings.warn(
                f"diagnostics of epoch {self.epoch} skipped: the probe raised "
                f"{type(error).__name__}: {str(error).strip()[:200]}",
                ModelNotice,
                stacklevel=2,
            )
            return []
        measured = {name: value.cpu() for name, value in measured.items()}
        out = []
        for k, member in enumerate(self.members):
            if keep[k]:
                fields = member_fields(member, self.depth, self.epoch)
                out += lm_diagnostics.rows(fields, k, grad_norm, measured)
        return out

    def _rows(self, alive_before, newly, train_loss, val, test, elapsed) -> list[dict]:
        rows = []
        for k, member in enumerate(self.members):
            if not alive_before[k]:
                continue
            measured = {"train_loss": train_loss[k], "test_loss": test[0][k]}
            if val is not None:
                measured["val_loss"] = val[0][k]
            diverged = k in newly
            rows.append(metrics_row(member, self.depth, self.epoch, elapsed, diverged, **measured))
        return rows

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor) -> tuple[list[float], list[float]]:
        """Mean token cross-entropy (nats/token) of every member on windows (x, y), and
        NaN accuracies (the lm task has none)."""
        model = self.model
        model.eval()
        K = len(self.members)
        loss_sum = torch.zeros(K, dtype=torch.float64, device=self.device)
        for start in range(0, x.shape[0], self.eval_chunk):
            inputs, targets = x[start : start + self.eval_chunk], y[start : start + self.eval_chunk]
            logits = model(inputs.unsqueeze(0))
            flat = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                targets.expand(K, *targets.shape).reshape(-1),
                reduction="none",
            )
            loss_sum += flat.view(K, -1).sum(dim=1, dtype=torch.float64)
        model.train()
        tokens = max(1, y.numel())
        return (loss_sum / tokens).tolist(), [math.nan] * K
