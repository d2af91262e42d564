"""The step floor: the unavoidable work of a stacked MLP training step, measured here.

Whatever trains K members of the MLP D-H1-...-C at batch B has to do, every step:

- the forward GEMMs: layer 1 as one wide GEMM per seed, (K/S * H1, D) @ (D, B), as the
  members of a seed share their batch; every later layer (K batched) (H_out, H_in) @ (H_in, B);
- the backward GEMMs: dW = d @ h_in^T for every layer, dh_in = W^T @ d for every layer but
  the first (2 * 3 * params * B FLOP in all, with the forward);
- one Adam pass over the stacked parameters: read p, g, m, v and write p, m, v, 28 bytes a
  parameter (torch's fused Adam kernel, one pass; memory traffic on a CPU, where 13 MB of
  state does not fit the L2 cache);

and every epoch the forward GEMMs of the evaluation of the test set (chunks of 2000, the
chunk shared by all members). Those are timed here, on this machine, at their real sizes,
in the same process as what they are compared with: the floor differs per machine (an
AVX-512 Xeon's memory makes Adam 3x dearer than on an EPYC), so it is measured, never
quoted. Everything else a real step does (the batch gather, the activations and their
derivatives, the cross-entropy and its gradient, the accuracy count, the divergence check,
Python) is overhead over this floor.

    python benchmarks/floor.py                    # the protocol: 4 members, batch 64
    python benchmarks/floor.py --members 4,16,48  # K members (4 activations x K/4 seeds)

It prints the floor per step and its parts, then actlab's step timed in alternating
blocks with the floor step (so that a shared machine's drift hits both alike): the median
and range of the per-block ratio actlab / floor.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from actlab.config import ExperimentConfig, members_for
from actlab.engine.batches import DeviceData
from actlab.engine.evaluation import EVAL_CHUNK
from actlab.engine.trainer import Trainer

ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu")


@dataclass(frozen=True)
class StepShape:
    """The sizes of one training step: K members, S seeds (distinct batches), batch B,
    layer widths [D, H1, ..., C]."""

    members: int
    seeds: int
    batch: int
    widths: tuple[int, ...]

    @classmethod
    def of(cls, config: ExperimentConfig, input_size: int, num_classes: int) -> StepShape:
        return cls(
            len(members_for(config)),
            len(config.seeds),
            config.batch_size,
            (input_size, *config.hidden, num_classes),
        )

    @property
    def params(self) -> int:
        """Trainable parameters of all members (weights and biases)."""
        w = self.widths
        return self.members * sum((w[i] + 1) * w[i + 1] for i in range(len(w) - 1))

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of a step's GEMMs: forward, dW, and dh below layer 1."""
        w = self.widths
        weights = sum(w[i] * w[i + 1] for i in range(len(w) - 1))
        return 2 * self.batch * self.members * (3 * weights - w[0] * w[1])


class StepFloor:
    """Tensors of the protocol's shapes, and the floor's three parts: `forward`,
    `backward` (the GEMMs, with ``out=`` into preallocated buffers, as a tuned step writes
    them) and `adam` (``torch._fused_adam_`` over the stacked parameters)."""

    def __init__(self, shape: StepShape, device: str = "cpu") -> None:
        self.shape = shape
        K, S, B, w = shape.members, shape.seeds, shape.batch, shape.widths
        g = torch.Generator().manual_seed(0)

        def uniform(*size: int, scale: float = 1.0) -> Tensor:
            # Values of a trained network's magnitude: no denormals, no NaN.
            return ((torch.rand(size, generator=g) * 2 - 1) * scale).to(device)

        self.x = uniform(S, B, w[0]).abs_()  # pixels in [0, 1)
        self.weights = [uniform(K, w[i + 1], w[i], scale=w[i] ** -0.5) for i in range(len(w) - 1)]
        self.biases = [uniform(K, w[i + 1], scale=w[i] ** -0.5) for i in range(len(w) - 1)]
        self.params = [t for pair in zip(self.weights, self.biases, strict=True) for t in pair]
        self.grads = [uniform(*p.shape, scale=1e-3) for p in self.params]
        self.exp_avg = [uniform(*p.shape, scale=1e-4) for p in self.params]
        self.exp_avg_sq = [uniform(*p.shape, scale=1e-6).abs_() for p in self.params]
        self.step_count = torch.full((), 100.0, device=device)
        # Activations (K, units, B), feature-major as actlab.nn.models lays them out.
        self.z = [torch.empty(K, units, B, device=device) for units in w[1:]]
        self.dz = [uniform(K, units, B, scale=1e-2) for units in w[1:]]
        self.dh = [torch.empty(K, units, B, device=device) for units in w[1:-1]]
        self.eval_x = uniform(1, EVAL_CHUNK, w[0]).abs_()
        self.eval_z = [torch.empty(K, units, EVAL_CHUNK, device=device) for units in w[1:]]

    def _forward(self, x: Tensor, z: list[Tensor]) -> None:
        """Logits of input x (Sx, b, D) for every member: layer 1 one GEMM per batch."""
        Sx, b, D = x.shape
        w0, b0 = self.weights[0], self.biases[0]
        torch.baddbmm(
            b0.view(Sx, -1, 1), w0.view(Sx, -1, D), x.transpose(1, 2), out=z[0].view(Sx, -1, b)
        )
        for layer in range(1, len(self.weights)):
            torch.baddbmm(
                self.biases[layer].unsqueeze(2), self.weights[layer], z[layer - 1], out=z[layer]
            )

    def forward(self) -> None:
        self._forward(self.x, self.z)

    def backward(self) -> None:
        """dW of every layer and dh below every layer but the first (dz stands for the
        gradient of the pre-activations: its values do not change the GEMMs' time)."""
        S, B, D = self.x.shape
        for layer in range(len(self.weights) - 1, 0, -1):
            d = self.dz[layer]
            torch.bmm(d, self.z[layer - 1].transpose(1, 2), out=self.grads[2 * layer])
            torch.bmm(self.weights[layer].transpose(1, 2), d, out=self.dh[layer - 1])
        torch.bmm(self.dz[0].view(S, -1, B), self.x, out=self.grads[0].view(S, -1, D))

    def adam(self) -> None:
        """One pass of torch's fused Adam kernel over every stacked parameter."""
        torch._fused_adam_(
            self.params,
            self.grads,
            self.exp_avg,
            self.exp_avg_sq,
            [],
            [self.step_count] * len(self.params),
            lr=1e-9,  # the parameters stay where they are, step after step
            beta1=0.9,
            beta2=0.999,
            weight_decay=0.0,
            eps=1e-8,
            amsgrad=False,
            maximize=False,
        )

    def step(self) -> None:
        self.forward()
        self.backward()
        self.adam()

    def evaluation(self, samples: int) -> None:
        """The forward GEMMs of evaluating `samples` samples (chunks of EVAL_CHUNK)."""
        for start in range(0, samples, EVAL_CHUNK):
            chunk = min(EVAL_CHUNK, samples - start)
            self._forward(self.eval_x[:, :chunk], [z[..., :chunk] for z in self.eval_z])

    def epoch(self, steps: int, eval_samples: int) -> None:
        """The floor of one epoch: `steps` steps and the evaluation of `eval_samples`."""
        for _ in range(steps):
            self.step()
        self.evaluation(eval_samples)


CLOCK = time.perf_counter  # --clock cpu: time.process_time


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Seconds per call of `fn` over `repeat` calls."""
    start = CLOCK()
    for _ in range(repeat):
        fn()
    return (CLOCK() - start) / repeat


def alternate(
    sides: dict[str, Callable[[], object]], rounds: int, repeat: int = 1, warmup: bool = True
) -> dict[str, list[float]]:
    """Each side's seconds per call, round after round, the sides alternately."""
    for fn in sides.values() if warmup else ():  # caches, allocator, thread pool
        timed(fn, max(1, repeat // 4))
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            times[name].append(timed(fn, repeat))
    return times


def ratio_summary(numerator: list[float], denominator: list[float]) -> str:
    """ "median Mx (range a-bx)" of the per-round ratios."""
    ratios = sorted(n / d for n, d in zip(numerator, denominator, strict=True))
    return f"median {statistics.median(ratios):.2f}x (range {ratios[0]:.2f}-{ratios[-1]:.2f}x)"


def random_data(shape: StepShape, samples: int, input_shape=(1, 28, 28)) -> DeviceData:
    """Pixel-like inputs and random labels: the step's time does not depend on them."""
    g = torch.Generator().manual_seed(0)
    C = shape.widths[-1]
    x = torch.rand((samples, *input_shape), generator=g)
    y = torch.randint(0, C, (samples,), generator=g)
    empty_x, empty_y = x[:0], y[:0]
    return DeviceData(x, y, empty_x, empty_y, x[:1], y[:1], C, tuple(input_shape))


def protocol_config(members: int, **changes: object) -> ExperimentConfig:
    """The classic protocol with `members` = 4 activations x members/4 seeds."""
    if members % len(ACTIVATIONS):
        raise SystemExit(f"--members: {members} is not a multiple of {len(ACTIVATIONS)}")
    seeds = tuple(range(members // len(ACTIVATIONS)))
    return ExperimentConfig(
        dataset="fashion-mnist", activations=ACTIVATIONS, seeds=seeds, diagnostics=False, **changes
    )


def actlab_step(
    config: ExperimentConfig, shape: StepShape, batches: int = 100
) -> Callable[[], object]:
    """One step of actlab's engine per call, cycling through `batches` batches of generated
    data: the whole CPU step (gather, forward, divergence check, backward, Adam, epoch sums)."""
    trainer = Trainer(config, random_data(shape, batches * shape.batch))
    perms = torch.randperm(batches * shape.batch).view(1, batches, shape.batch)
    perms = perms.expand(shape.seeds, batches, shape.batch)
    trainer.model.train()
    step = iter(())

    def one_step() -> None:
        nonlocal step
        index = next(step, None)
        if index is None:
            step = iter(perms.unbind(1))
            index = next(step)
        trainer._host_checked_step(index)

    return one_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="4", help="e.g. 4,16,48 (multiples of 4)")
    parser.add_argument("--steps", type=int, default=100, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=15, help="alternating blocks per side")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--clock",
        default="wall",
        choices=("wall", "cpu"),
        help="cpu: this process's CPU time, robust on a busy machine (use with --threads 1)",
    )
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, {args.clock} clock; {args.rounds} alternating rounds of "
        f"{args.steps} steps"
    )
    for members in (int(m) for m in args.members.split(",")):
        config = protocol_config(members)
        shape = StepShape.of(config, 784, 10)
        floor = StepFloor(shape)
        times = alternate(
            {
                "forward": floor.forward,
                "backward": floor.backward,
                "adam": floor.adam,
                "floor": floor.step,
                "actlab": actlab_step(config, shape),
            },
            args.rounds,
            repeat=args.steps,
        )
        med = {name: statistics.median(values) for name, values in times.items()}
        gemm = med["forward"] + med["backward"]
        mb = 28 * shape.params / 1e6
        print(f"\nK={members} ({shape.params} parameters, {shape.flops / 1e6:.0f} MFLOP a step)")
        print(f"  GEMMs         {gemm * 1e3:6.3f} ms  ({shape.flops / gemm / 1e9:.0f} GFLOP/s)")
        print(
            f"  Adam pass     {med['adam'] * 1e3:6.3f} ms  ({mb / med['adam'] / 1e3:.1f} GB/s of {mb:.1f} MB)"
        )
        print(f"  floor step    {med['floor'] * 1e3:6.3f} ms  (measured as one)")
        print(f"  actlab step   {med['actlab'] * 1e3:6.3f} ms  "
              f"{ratio_summary(times['actlab'], times['floor'])} of the floor")  # fmt: skip
        per_epoch = math.ceil(60000 / shape.batch) * med["floor"]
        print(f"  floor epoch   {per_epoch:6.2f} s of training steps, "
              f"{per_epoch / members * 1e3:.0f} ms per member-epoch")  # fmt: skip


if __name__ == "__main__":
    main()
