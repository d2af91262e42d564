"""What member-aligned Adam costs: the stacked optimizer's step with its tensors passed
member-aligned (the default: a stacked tensor whose per-member size is not a multiple of
actlab.nn.optim.ALIGN_FLOATS goes to torch's fused Adam kernel as its members' slices, so
that a member's update does not depend on its position in the stack) and passed whole (the
previous behaviour), interleaved in one process.

Parameters of the MLP 784-128-10 stacked over K members (only the output bias, (K, 10),
is not aligned). Usage: python benchmarks/adam_member_alignment.py [--members 40,400]
[--steps 20] [--rounds 5] [--threads 1]. Prints the median and best step time of each
and the ratio aligned/whole (best of each; others' load on a shared machine only adds).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import actlab.nn.optim as optim


def step_time(opt, steps: int) -> float:
    begin = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - begin) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="40,400")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"cpu: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s)")  # fmt: skip
    for K in (int(k) for k in args.members.split(",")):
        shapes = [(K, 128, 784), (K, 128), (K, 10, 128), (K, 10)]
        params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
        for p in params:
            p.grad = torch.randn_like(p)
        times: dict[str, list[float]] = {"aligned": [], "whole": []}
        optimizers = {}
        for name, align in (("aligned", optim.ALIGN_FLOATS), ("whole", 1)):
            optim.ALIGN_FLOATS = align  # read when the optimizer groups its tensors
            optimizers[name] = optim.StackedOptimizer([(p, None) for p in params], [1e-3] * K)
            optimizers[name].step()  # groups (and warms) with this setting
        optim.ALIGN_FLOATS = 64
        for _ in range(args.rounds):
            for name, opt in optimizers.items():
                times[name].append(step_time(opt, args.steps))
        for name, values in times.items():
            print(f"K={K:<4} {name:<8} median {1e3 * statistics.median(values):7.2f} ms  "
                  f"best {1e3 * min(values):7.2f} ms")  # fmt: skip
        print(f"K={K:<4} aligned/whole (best): {min(times['aligned']) / min(times['whole']):.2f}")


if __name__ == "__main__":
    main()
