"""Forward+backward step time of the stacked model vs K plain nn.Sequential models.

Measures, in the same process and on the same random data, one training step's forward
and backward of the MLP 784-128-128-10 (or the CNN) at batch 64 for K members:

- plain: K ``nn.Sequential`` models (``export_member(k)``), one after another, each
  ``zero_grad``, ``cross_entropy(model(x), y).backward()`` (with ``--adam``: and a
  ``torch.optim.Adam`` step each);
- stacked: ``build_model`` once, ``sum_k mean CE_k`` backward (with ``--adam``: and one
  ``actlab.nn.optim.StackedOptimizer`` step).

Usage: python benchmarks/stacked_step.py [--members 4,12,24,48] [--steps 200] [--model mlp]
       [--adam] [--threads N]
Prints, per K: ms per step for both, the ratio, and ms per member.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from actlab.config import ExperimentConfig, members_for
from actlab.nn.models import build_model
from actlab.nn.optim import StackedOptimizer

ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu")
# K -> (lrs, seeds): 4 activations x lrs x seeds
GRIDS = {4: (1, 1), 8: (1, 2), 12: (3, 1), 16: (2, 2), 24: (3, 2), 48: (3, 4)}


def config_for(members: int, model: str, batch: int) -> ExperimentConfig:
    if members not in GRIDS:
        raise SystemExit(f"--members must be among {sorted(GRIDS)}")
    n_lrs, n_seeds = GRIDS[members]
    return ExperimentConfig(
        model=model,
        activations=ACTIVATIONS,
        lrs=tuple(1e-3 * (i + 1) for i in range(n_lrs)),
        seeds=tuple(range(n_seeds)),
        batch_size=batch,
    )


CLOCK = time.perf_counter


def time_steps(step, steps: int) -> float:
    for _ in range(max(3, steps // 10)):  # warm-up
        step()
    start = CLOCK()
    for _ in range(steps):
        step()
    return (CLOCK() - start) / steps


def bench(members: int, model_name: str, steps: int, batch: int, adam: bool) -> tuple[float, float]:
    config = config_for(members, model_name, batch)
    shape = (1, 28, 28)
    member_list = members_for(config)
    model = build_model(config, member_list, shape, 10)
    S, K = model.num_seeds, model.num_members
    g = torch.Generator().manual_seed(0)
    x = torch.rand((S, batch, *shape), generator=g)
    y = torch.randint(0, 10, (S, batch), generator=g)
    y_members = y.repeat_interleave(K // S, dim=0).reshape(-1)
    plains = [model.export_member(k) for k in range(K)]
    plain_optimizers = [torch.optim.Adam(p.parameters(), lr=1e-4) for p in plains]
    stacked_optimizer = StackedOptimizer(model.parameter_members(), [1e-4] * K)

    def plain_step():
        for k, (plain, optimizer) in enumerate(zip(plains, plain_optimizers, strict=True)):
            plain.zero_grad(set_to_none=True)
            s = k // (K // S)
            F.cross_entropy(plain(x[s]), y[s]).backward()
            if adam:
                optimizer.step()

    def stacked_step():
        for p in model.parameters():
            p.grad = None
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(K * batch, -1), y_members, reduction="sum") / batch
        loss.backward()
        if adam:
            stacked_optimizer.step()

    # Alternate to share the machine's noise fairly; keep the best of 3 rounds.
    plain_s, stacked_s = [], []
    for _ in range(3):
        plain_s.append(time_steps(plain_step, steps))
        stacked_s.append(time_steps(stacked_step, steps))
    return min(plain_s), min(stacked_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="4,12,24,48")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--adam", action="store_true", help="include the optimizer step")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=("wall", "cpu"),
        help="cpu: this process's CPU time, robust on a shared machine (use with --threads 1)",
    )
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"threads {torch.get_num_threads()}, {args.clock} clock, model {args.model}, "
        f"batch {args.batch}, "
        f"best of 3 x {args.steps} steps "
        f"(forward+backward{' + Adam step' if args.adam else ', no optimizer'})"
    )
    print(f"{'K':>4} {'plain ms':>10} {'stacked ms':>11} {'ratio':>7} {'stacked ms/member':>18}")
    for members in (int(m) for m in args.members.split(",")):
        plain, stacked = bench(members, args.model, args.steps, args.batch, args.adam)
        print(
            f"{members:>4} {plain * 1e3:>10.2f} {stacked * 1e3:>11.2f} "
            f"{plain / stacked:>6.2f}x {stacked * 1e3 / members:>18.3f}"
        )


if __name__ == "__main__":
    main()
