"""The full-batch training step of the built-in MLP as a CUDA graph, replayed."""

from __future__ import annotations

import torch
from torch import Tensor

from actlab.nn.optim import StackedOptimizer


class StepGraph:
    """The full-batch training step as a CUDA graph (PyTorch's "whole network capture").

    A GPU step of a small model is hundreds of kernels of a few microseconds each; launched
    one by one from Python they keep the GPU idle. The step is therefore recorded once and
    replayed: the batch index is copied into a static buffer, and the graph runs the
    gather, forward, backward, divergence mask, optimizer step and epoch sums. Eager warm-up
    steps on a side stream come first (cuBLAS and the allocator initialise outside the
    capture). Used with the hand-written MLP step only (autograd's backward is not
    captured: the CNN and learnable activations step eagerly), not with dropout (its
    per-seed generators), and only with a device-side optimizer step count (see
    ``StackedOptimizer.graph_safe``)."""

    WARMUP_STEPS = 3

    def __init__(self, index_shape: tuple[int, int], device: torch.device) -> None:
        self.index = torch.zeros(index_shape, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.losses: Tensor | None = None
        self.eager_steps = 0

    @classmethod
    def for_trainer(cls, trainer) -> StepGraph | None:
        usable = (
            trainer.device.type == "cuda"
            and trainer.mlp_step is not None  # no autograd inside the capture
            and trainer.model.dropout == 0
            and trainer.optimizer.graph_safe
        )
        if not usable:
            return None
        return cls((len(trainer.generators), trainer.config.batch_size), trainer.device)

    def run(self, index: Tensor, step, optimizer: StackedOptimizer) -> Tensor:
        """One step of the full batch `index`: eager (warm-up), captured, or replayed."""
        if self.graph is None and self.eager_steps < self.WARMUP_STEPS:
            self.eager_steps += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                losses = step(index)
            torch.cuda.current_stream().wait_stream(side)
            return losses
        self.index.copy_(index)
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.losses = step(self.index)  # recorded, not run; counted by step()
        else:
            optimizer.count_replayed_step()
        self.graph.replay()
        return self.losses
