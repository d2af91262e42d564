"""What the training diagnostics cost: a study with and without them, in the same process.

1. Study level (needs actlab.engine.trainer and the dataset): train the same short study
   (4 activations, MLP 784-128-128-10, batch 64) with ``diagnostics=True`` and ``False``,
   interleaved ``--repeats`` times after one warm-up of each; prints the best and median wall time of each and the
   ratio with/without (the budget is <= ~1.10).
2. Step level (always): one stacked forward+backward step of the same MLP against
   ``layer_grad_norms`` (called on every step), and ``unit_fractions`` + ``preact_moments``
   on a 512-sample probe (called once per epoch).

Usage: python benchmarks/diagnostics_overhead.py [--dataset fashion-mnist]
       [--limit-train N] [--epochs 1] [--repeats 3] [--threads N]
The best time of each is the one to compare on a shared machine (others' load only adds).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from actlab.config import ExperimentConfig
from actlab.engine.diagnostics import layer_grad_norms, preact_moments, unit_fractions

ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu")


def study_level(args: argparse.Namespace) -> None:
    try:
        from actlab.data.datasets import load_dataset
        from actlab.engine.trainer import train
    except ImportError as error:
        print(f"study level skipped: {error}")
        return
    dataset = load_dataset(args.dataset, limit_train=args.limit_train, progress=False)
    base = ExperimentConfig(
        dataset=args.dataset, activations=ACTIVATIONS, epochs=args.epochs, seeds=(0,)
    )
    times: dict[bool, list[float]] = {True: [], False: []}
    for repeat in range(-1, args.repeats):  # repeat -1 is a warm-up, not counted
        order = (True, False) if repeat % 2 == 0 else (False, True)  # alternate who goes first
        for with_diagnostics in order:
            config = base.replace(diagnostics=with_diagnostics)
            start = time.perf_counter()
            for _result in train(config, dataset):
                pass
            if repeat >= 0:
                times[with_diagnostics].append(time.perf_counter() - start)
    on, off = times[True], times[False]
    print(
        f"study: {args.dataset}, {len(dataset.y_train)} train samples, {args.epochs} epoch(s), "
        f"{len(ACTIVATIONS)} members, batch {base.batch_size}, {args.repeats} repeats"
    )
    print(f"  with diagnostics:    best {min(on):.2f} s, median {statistics.median(on):.2f} s")
    print(f"  without diagnostics: best {min(off):.2f} s, median {statistics.median(off):.2f} s")
    paired = [a / b for a, b in zip(on, off, strict=True)]  # neighbours share the load
    print(
        f"  ratio with/without: best {min(on) / min(off):.3f}, "
        f"median {statistics.median(on) / statistics.median(off):.3f}, "
        f"median of paired runs {statistics.median(paired):.3f} "
        f"({', '.join(f'{r:.2f}' for r in paired)})"
    )


def step_level(args: argparse.Namespace) -> None:
    generator = torch.Generator().manual_seed(0)
    members, batch, dims = len(ACTIVATIONS), 64, (784, 128, 128, 10)
    weights = [
        nn.Parameter(torch.randn(members, i, o, generator=generator) / math.sqrt(i))
        for i, o in zip(dims[:-1], dims[1:], strict=True)
    ]
    activations = [nn.ReLU(), nn.Sigmoid(), nn.Tanh(), nn.LeakyReLU()]
    x = torch.rand(members, batch, 784, generator=generator)
    y = torch.randint(0, 10, (members * batch,), generator=generator)

    def forward(inputs: torch.Tensor, preacts: list | None = None) -> torch.Tensor:
        h = inputs
        for layer, weight in enumerate(weights):
            h = torch.bmm(h, weight)
            if layer < len(weights) - 1:
                if preacts is not None:
                    preacts.append(h)
                h = torch.stack([f(h[k]) for k, f in enumerate(activations)])
        return h

    def step() -> None:
        for weight in weights:
            weight.grad = None
        logits = forward(x)
        F.cross_entropy(logits.reshape(-1, 10), y).backward()

    step_s = best_time(step, args.steps)
    norms_s = best_time(lambda: layer_grad_norms(weights), args.steps)
    probe_x = torch.rand(members, 512, 784, generator=generator)
    preacts: list = []
    with torch.no_grad():
        forward(probe_x, preacts)
    probe_s = best_time(lambda: (unit_fractions(preacts, activations), preact_moments(preacts)), 5)
    print(f"step: stacked MLP 784-128-128-10, {members} members, batch {batch}")
    print(f"  forward+backward step:      {step_s * 1e3:.3f} ms")
    print(
        f"  layer_grad_norms (per step): {norms_s * 1e3:.3f} ms = {norms_s / step_s:.1%} of a step"
    )
    steps_per_epoch = math.ceil(60000 / batch)
    print(
        f"  unit_fractions + preact_moments on 512 probe samples (per epoch): {probe_s * 1e3:.1f} ms"
        f" = {probe_s / (steps_per_epoch * step_s):.2%} of a 60000-sample epoch's steps"
    )


def best_time(function, repeats: int) -> float:
    function()  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--limit-train", type=int, default=None, help="default: all 60000")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-study", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    step_level(args)
    if not args.skip_study:
        study_level(args)


if __name__ == "__main__":
    main()
