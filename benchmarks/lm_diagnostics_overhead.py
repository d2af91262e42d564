"""What the --net gpt diagnostics cost: the same LM study with and without them, in one process.

Two LMTrainers on the same text and config, one with ``diagnostics=True`` (per-step
gradient norms of every layer, a probe of PROBE_WINDOWS windows at the end of each epoch:
actlab.engine.lm_diagnostics) and one without, train whole epochs taking turns
(--repeats each, after one untimed epoch of each), so that a shared machine's load slows
them alike. Prints the best and median seconds per epoch of each and the ratio with/without,
then the parts: one training step, the per-step gradient norms, one probe.

    python benchmarks/lm_diagnostics_overhead.py                  # the README's LM example
    python benchmarks/lm_diagnostics_overhead.py --limit-train 40000 --repeats 2
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from actlab.config import ExperimentConfig
from actlab.data.text import load_text
from actlab.engine import lm_diagnostics
from actlab.engine.lm_trainer import LMTrainer, random_windows


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--activations", default="relu,gelu,relu2,swiglu,geglu")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--limit-train", type=int, default=150_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def median_ms(run, times: int = 20) -> float:
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return 1000 * statistics.median(samples)


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    config = ExperimentConfig(
        dataset="text:stdlib", model="gpt", activations=tuple(args.activations.split(",")),
        seeds=tuple(range(args.seeds)), width=args.width, layers=args.layers, heads=args.heads,
        context=args.context, batch_size=args.batch, limit_train=args.limit_train,
        limit_test=20_000, epochs=args.repeats + 1, optimizer="adamw", lrs=(3e-3,),
        diagnostics=True, device="cpu",
    )  # fmt: skip
    dataset = load_text(config.dataset, context=config.context, limit_train=config.limit_train,
                        limit_test=config.limit_test)  # fmt: skip
    ways = {
        "with": LMTrainer(config, dataset),
        "without": LMTrainer(dataclasses.replace(config, diagnostics=False), dataset),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for repeat in range(args.repeats + 1):
        for name, trainer in ways.items():
            start = time.perf_counter()
            trainer.train_epoch()
            if repeat:  # the first epoch of each is not timed
                seconds[name].append(time.perf_counter() - start)
    with_, without = ways["with"], ways["without"]
    print(f"{len(with_.members)} members, {with_.steps_per_epoch} steps/epoch, "
          f"{args.threads} thread(s), torch {torch.__version__}")  # fmt: skip
    for name, values in seconds.items():
        print(f"  {name:>8} diagnostics: best {min(values):.2f} s/epoch, "
              f"median {statistics.median(values):.2f}")  # fmt: skip
    print(f"  ratio with/without: best {min(seconds['with']) / min(seconds['without']):.3f}, "
          f"median {statistics.median(seconds['with']) / statistics.median(seconds['without']):.3f}")  # fmt: skip
    generators = [torch.Generator().manual_seed(s) for s in with_.seeds]
    x, y = random_windows(with_.data.train_tokens, generators, args.batch, args.context)
    step = median_ms(lambda: without.step(x, y), 10)
    with_.step(x, y)  # gradients to measure (an epoch ends with none)
    norms = median_ms(lambda: lm_diagnostics.layer_grad_norms(with_.model))
    batch = lm_diagnostics.probe_windows(with_.data.train_tokens, args.context)
    probe = median_ms(lambda: lm_diagnostics.probe(with_.model, *batch, with_.alive), 5)
    print(f"  one step {step:.1f} ms; per-step gradient norms {norms:.2f} ms "
          f"({norms / step:.1%} of a step); one probe ({lm_diagnostics.PROBE_WINDOWS} windows, "
          f"once per epoch of {with_.steps_per_epoch} steps) {probe:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
