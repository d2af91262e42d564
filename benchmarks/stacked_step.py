"""Forward+backward step time of the stacked model vs K plain nn.Sequential models.

Measures, in the same process and on the same random data, one training step's forward
and backward (no optimizer) of the MLP 784-128-128-10 at batch 64 for K members:

- plain: K ``nn.Sequential`` models (``export_member(k)``), one after another, each
  ``zero_grad``, ``cross_entropy(model(x), y).backward()``;
- stacked: ``build_model`` once, ``sum_k mean CE_k`` backward.

Usage: python benchmarks/stacked_step.py [--members 4,12,24,48] [--steps 200] [--model mlp]
Prints, per K: ms per step for both, the ratio, and ms per member.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from actlab.config import ExperimentConfig, members_for
from actlab.models import build_model

ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu")
# K -> (lrs, seeds): 4 activations x lrs x seeds
GRIDS = {4: (1, 1), 12: (3, 1), 24: (3, 2), 48: (3, 4)}


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


def time_steps(step, steps: int) -> float:
    for _ in range(max(3, steps // 10)):  # warm-up
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def bench(members: int, model_name: str, steps: int, batch: int) -> tuple[float, float]:
    config = config_for(members, model_name, batch)
    shape = (1, 28, 28) if model_name == "mlp" else (1, 28, 28)
    member_list = members_for(config)
    model = build_model(config, member_list, shape, 10)
    S, K = model.num_seeds, model.num_members
    g = torch.Generator().manual_seed(0)
    x = torch.rand((S, batch, *shape), generator=g)
    y = torch.randint(0, 10, (S, batch), generator=g)
    y_members = y.repeat_interleave(K // S, dim=0).reshape(-1)
    plains = [model.export_member(k) for k in range(K)]

    def plain_step():
        for k, plain in enumerate(plains):
            plain.zero_grad(set_to_none=True)
            s = k // (K // S)
            F.cross_entropy(plain(x[s]), y[s]).backward()

    def stacked_step():
        for p in model.parameters():
            p.grad = None
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(K * batch, -1), y_members, reduction="sum") / batch
        loss.backward()

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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"threads {torch.get_num_threads()}, model {args.model}, batch {args.batch}, "
        f"best of 3 x {args.steps} steps (forward+backward, no optimizer)"
    )
    print(f"{'K':>4} {'plain ms':>10} {'stacked ms':>11} {'ratio':>7} {'stacked ms/member':>18}")
    for members in (int(m) for m in args.members.split(",")):
        plain, stacked = bench(members, args.model, args.steps, args.batch)
        print(
            f"{members:>4} {plain * 1e3:>10.2f} {stacked * 1e3:>11.2f} "
            f"{plain / stacked:>6.2f}x {stacked * 1e3 / members:>18.3f}"
        )


if __name__ == "__main__":
    main()
