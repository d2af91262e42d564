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
--warmup steps are not timed. Prints ms per step of all K members, the ratios,
the final losses (the three agree: the same model and optimizer), the peak RSS and the CPU.

    python benchmarks/lm.py                      # K = 8: relu, gelu, relu2, swiglu x 2 seeds
    python benchmarks/lm.py --width 64 --layers 2 --context 64 --batch 32 --threads 2
"""

from __future__ import annotations

import argparse
import platform
import resource
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


def timed(ways: dict, windows, warmup: int) -> tuple[dict, dict]:
    """Seconds per step of each way after `warmup` steps, and each way's last losses. The
    ways take turns step by step, so that a machine whose load changes (a shared one)
    slows them alike."""
    seconds = dict.fromkeys(ways, 0.0)
    losses: dict = {}
    for index, (x, y) in enumerate(windows):
        for name, step in ways.items():
            start = time.perf_counter()
            losses[name] = step(x, y)
            if index >= warmup:
                seconds[name] += time.perf_counter() - start
    timed_steps = max(1, len(windows) - warmup)
    return {name: s / timed_steps for name, s in seconds.items()}, losses


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--activations", default="relu,gelu,relu2,swiglu")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="plain,vmap,actlab")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ExperimentConfig(
        dataset="text:stdlib", model="gpt", activations=tuple(args.activations.split(",")),
        seeds=tuple(range(args.seeds)), width=args.width, layers=args.layers, heads=args.heads,
        context=args.context, batch_size=args.batch, optimizer="adamw", weight_decay=0.01,
        device="cpu", diagnostics=False,
    )  # fmt: skip
    config = config.replace(weight_decay=0.01)
    dataset = load_text("text:stdlib", context=args.context)
    tokens = dataset.train_bytes.long()
    generators = [torch.Generator().manual_seed(s) for s in config.seeds]
    windows = [
        random_windows(tokens, generators, args.batch, args.context) for _ in range(args.steps)
    ]
    K = len(members_for(config))
    print(
        f"K = {K} members ({args.activations} x {args.seeds} seeds), GPT width {args.width}, "
        f"{args.layers} layers, {args.heads} heads, context {args.context}, batch {args.batch}; "
        f"{args.steps - args.warmup} timed steps; {args.threads} thread(s); {cpu_name()}"
    )
    makers = {
        "plain": lambda: plain_step(config),
        "vmap": lambda: vmap_step(config),
        "actlab": lambda: actlab_step(config, dataset),
    }
    ways = {name: makers[name]() for name in args.only.split(",")}
    seconds, losses = timed(ways, windows, args.warmup)
    for name, per_step in seconds.items():
        mean_loss = sum(losses[name]) / len(losses[name])
        print(
            f"{name:7s} {1e3 * per_step:9.1f} ms/step   mean loss at the last step {mean_loss:.4f}"
        )
    if "actlab" in seconds:
        for name in ("plain", "vmap"):
            if name in seconds:
                print(f"actlab is {seconds[name] / seconds['actlab']:.2f}x as fast as {name}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (all three ways): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
