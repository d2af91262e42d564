"""Language models: K plain GPT loops, the torch.func vmap peer, and actlab, in one run.

On the same text (text:stdlib) and the same random windows, K members (activations x
seeds, gated FFNs at 2/3 of the hidden units) are trained for --steps steps each way:

- **plain**: K ``actlab.nn.gpt.GPT`` modules, each with its own ``torch.optim.AdamW``,
  stepped one after the other (what a tutorial loop does, K times);
- **vmap**: per activation, the members' parameters stacked and the step vmapped with
  ``torch.func`` (``functional_call`` + ``grad``), one ``torch.optim.AdamW`` over the
  stacked tensors (elementwise: the same as one per member);
- **actlab**: ``LMTrainer.step`` (StackedGPT: batched matmuls over the members, the
  stacked AdamW).

The ways take turns step by step (a shared machine's load slows them alike); the first
--warmup steps are not timed. For each size (--sizes, context x batch) it prints the
median ms per step of all K members, the ratios of the medians with the range of the
per-step ratios, and the last step's mean loss (the three agree: the same model and
optimizer). Then, unless --no-readme, it runs the README's example study (K = 15: relu,
gelu, relu2, swiglu, geglu x 3 seeds, context 64, batch 32, clipping, cosine schedule)
through the CLI in a child process and prints that child's peak resident memory (the
issue's bound: under 2 GB) and its time.

    python benchmarks/lm.py                      # K = 8: relu, gelu, relu2, swiglu x 2 seeds
    python benchmarks/lm.py --sizes 64x32 --threads 2 --no-readme
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from actlab.config import ExperimentConfig, members_for
from actlab.data.text import load_text
from actlab.engine.lm_trainer import LMTrainer, random_windows
from actlab.nn.gpt import GPT


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed(ways: dict, windows, warmup: int) -> tuple[dict, dict, dict]:
    """Wall and CPU seconds (of the whole process: all its threads) of each timed step of
    each way, after `warmup` steps, and each way's last losses. The ways take turns step
    by step, so that a machine whose load changes (a shared one) slows them alike; the
    CPU time is the steadier figure there, as other jobs' turns do not count in it."""
    wall: dict = {name: [] for name in ways}
    cpu: dict = {name: [] for name in ways}
    losses: dict = {}
    for index, (x, y) in enumerate(windows):
        for name, step in ways.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            losses[name] = step(x, y)
            if index >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu, losses


def plain_step(config: ExperimentConfig):
    members = members_for(config)
    models = [GPT.from_config(config, m.activation, m.seed) for m in members]
    optimizers = [torch.optim.AdamW(m.parameters(), lr=config.lrs[0]) for m in models]
    seed_of = [config.seeds.index(m.seed) for m in members]

    def step(x, y):
        out = []
        for model, optimizer, s in zip(models, optimizers, seed_of, strict=True):
            loss = F.cross_entropy(model(x[s]).reshape(-1, 256), y[s].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            out.append(loss.item())
        return out

    return step


def vmap_step(config: ExperimentConfig):
    """One vmapped step per activation over its members (torch.func)."""
    members = members_for(config)
    groups = []
    for activation in config.activations:
        own = [m for m in members if m.activation == activation]
        models = [GPT.from_config(config, m.activation, m.seed) for m in own]
        names = [n for n, _ in models[0].named_parameters()]
        params = {
            n: torch.stack([m.get_parameter(n).detach() for m in models]).requires_grad_()
            for n in names
        }
        base = models[0].to("meta")
        optimizer = torch.optim.AdamW(params.values(), lr=config.lrs[0])
        seeds = torch.tensor([config.seeds.index(m.seed) for m in own])
        groups.append((base, params, optimizer, seeds))

    def step(x, y):
        out = []
        for base, params, optimizer, seeds in groups:

            def loss_fn(p, xb, yb, base=base):
                logits = functional_call(base, p, (xb,))
                return F.cross_entropy(logits.reshape(-1, 256), yb.reshape(-1))

            xs, ys = x.index_select(0, seeds), y.index_select(0, seeds)
            grads = vmap(grad(loss_fn))(params, xs, ys)
            with torch.no_grad():
                losses = vmap(loss_fn)(params, xs, ys)
            for name, p in params.items():
                p.grad = grads[name]
            optimizer.step()
            out += losses.tolist()
        return out

    return step


def actlab_step(config: ExperimentConfig, dataset):
    trainer = LMTrainer(config, dataset)
    return lambda x, y: trainer.step(x, y).tolist()


README_EXAMPLE = (
    "compare --net gpt --dataset text:stdlib --activations relu,gelu,relu2,swiglu,geglu "
    "--seeds 3 --width 32 --layers 2 --heads 4 --context 64 --batch-size 32 "
    "--limit-train 150000 --limit-test 40000 --epochs 3 "
    "--optimizer adamw --weight-decay 0.01 --lr 3e-3 --schedule cosine --warmup 20 --clip 1"
)


def compare_size(args, context: int, batch: int) -> None:
    """Time the ways at one size and print a block of results."""
    config = ExperimentConfig(
        dataset="text:stdlib", model="gpt", activations=tuple(args.activations.split(",")),
        seeds=tuple(range(args.seeds)), width=args.width, layers=args.layers, heads=args.heads,
        context=context, batch_size=batch, optimizer="adamw", weight_decay=0.01,
        device="cpu", diagnostics=False,
    )  # fmt: skip
    dataset = load_text("text:stdlib", context=context)
    tokens = dataset.train_bytes.long()
    generators = [torch.Generator().manual_seed(s) for s in config.seeds]
    windows = [random_windows(tokens, generators, batch, context) for _ in range(args.steps)]
    K = len(members_for(config))
    print(
        f"\nK = {K} members ({args.activations} x {args.seeds} seeds), GPT width {args.width}, "
        f"{args.layers} layers, {args.heads} heads, context {context}, batch {batch}; "
        f"{args.steps - args.warmup} timed steps"
    )
    makers = {
        "plain": lambda: plain_step(config),
        "vmap": lambda: vmap_step(config),
        "actlab": lambda: actlab_step(config, dataset),
    }
    ways = {name: makers[name]() for name in args.only.split(",")}
    wall, cpu, losses = timed(ways, windows, args.warmup)
    median = statistics.median
    for name in ways:
        mean_loss = sum(losses[name]) / len(losses[name])
        print(
            f"  {name:7s} {1e3 * median(wall[name]):8.1f} ms/step wall, "
            f"{1e3 * median(cpu[name]):8.1f} CPU (medians)   "
            f"mean loss at the last step {mean_loss:.4f}"
        )
    if "actlab" in ways:
        for name in ("plain", "vmap"):
            if name in ways:
                ratios = [a / b for a, b in zip(wall[name], wall["actlab"], strict=True)]
                print(
                    f"  actlab is {median(wall[name]) / median(wall['actlab']):.2f}x as fast as "
                    f"{name} in wall time (per-step ratios {min(ratios):.2f} to "
                    f"{max(ratios):.2f}), {median(cpu[name]) / median(cpu['actlab']):.2f}x in "
                    "CPU time"
                )


# Runs the CLI in the child and prints the child's peak RSS (VmHWM, KiB) as it exits. Not
# getrusage: a child's ru_maxrss counts the parent's pages it was forked with.
PEAK_WRAPPER = """
import atexit, runpy, sys
def peak():
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmHWM:"))
    print("VmHWM", line.split()[1], file=sys.stderr)
atexit.register(peak)
sys.argv = ["actlab", *sys.argv[1:]]
runpy.run_module("actlab.cli.main", run_name="__main__")
"""


def readme_example(threads: int) -> None:
    """Run the README's example study in a child process; print its peak RSS and time."""
    if not os.path.exists("/proc/self/status"):
        print("\nREADME example: skipped (peak RSS is read from /proc, Linux only)")
        return
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-c", PEAK_WRAPPER, *README_EXAMPLE.split()]
        command += ["--out", os.path.join(out, "run"), "--threads", str(threads), "--quiet"]
        start = time.perf_counter()
        done = subprocess.run(
            command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        wall = time.perf_counter() - start
    peak_kib = int(done.stderr.split("VmHWM")[-1].split()[0])
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"\nREADME example (K = 15, context 64, batch 32, {threads} thread(s)): peak RSS "
        f"{peak_kib / 1024:.0f} MiB (bound: 2048), {wall:.0f} s wall, "
        f"{usage.ru_utime + usage.ru_stime:.0f} s CPU"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--activations", default="relu,gelu,relu2,swiglu")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--sizes", default="32x16,64x32", help="context x batch, comma-separated")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="plain,vmap,actlab")
    parser.add_argument("--no-readme", action="store_true", help="skip the README example")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()}; {args.threads} thread(s); torch {torch.__version__}; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip
    for size in args.sizes.split(","):
        context, batch = (int(v) for v in size.split("x"))
        compare_size(args, context, batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of this process (all ways, all sizes): {peak:.0f} MiB")
    if not args.no_readme:
        readme_example(args.threads)


if __name__ == "__main__":
    main()
