"""``--net mlp`` with gated activations: what routing every member through the vmap stack
costs (actlab.nn.mlp_builder), side by side in one run.

On Fashion-MNIST (784-128-128-10 by default; swiglu's gated widths 2x69), per epoch
(training plus evaluation), for S seeds:

- **plain**: each member alone, ``plain_mlp`` + ``torch.optim.Adam`` on its seed's batches
  (the loop a tutorial writes, K times), relu and swiglu members;
- **fused relu**: a relu-only study, the hand-written fused MLP step (no gated member);
- **builder relu**: the same relu members through the vmap stack with the built-in MLP
  builder (what they run when a gated activation joins the study);
- **builder relu+swiglu**: the mixed study as ``actlab compare`` trains it.

Prints seconds per epoch (medians over `--repeats` rounds, the order rotating: a shared
machine drifts) and the ratios; above 1 the second is faster.

    python benchmarks/gated_mlp.py --limit-train 4000 --seeds 2 --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from actlab.config import ExperimentConfig, members_for
from actlab.data.datasets import load_dataset
from actlab.engine.trainer import DeviceData, Trainer, epoch_permutation, shuffle_generator
from actlab.engine.vmap_stack import StackedUserModel
from actlab.nn import mlp_builder


def plain_epoch(config: ExperimentConfig, dataset) -> float:
    """Seconds for one epoch of every member trained alone (train + test evaluation)."""
    x = dataset.float_inputs(dataset.x_train)
    x_test = dataset.float_inputs(dataset.x_test)
    fan_in, classes = x[0].numel(), int(dataset.num_classes)
    start = time.perf_counter()
    for member in members_for(config):
        widths = mlp_builder.member_widths(member.activation, fan_in, config.hidden, classes)
        torch.manual_seed(member.seed)
        model = mlp_builder.plain_mlp(member.activation, fan_in, widths, classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=member.lr)
        perm = epoch_permutation(shuffle_generator(member.seed), len(x))
        for begin in range(0, len(x), config.batch_size):
            index = perm[begin : begin + config.batch_size]
            loss = F.cross_entropy(model(x[index]), dataset.y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            model(x_test).argmax(1)
    return time.perf_counter() - start


def builder_trainer(config: ExperimentConfig, dataset) -> Trainer:
    """A Trainer whose members (even all-plain ones) run through the MLP builder."""
    data = DeviceData.from_dataset(dataset, "cpu")
    user = mlp_builder.user_model_for(config, data.input_shape, data.num_classes)
    model = StackedUserModel(
        user, members_for(config), (), data.x_train[:2], data.num_classes, "cpu",
        batch_size=config.batch_size, targets=data.y_train[:2],
    )  # fmt: skip
    return Trainer(config, data, model=model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-train", type=int, default=4000)
    parser.add_argument("--limit-test", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(
        "fashion-mnist", limit_train=args.limit_train, limit_test=args.limit_test, progress=False
    )
    base = ExperimentConfig(
        model="mlp", seeds=tuple(range(args.seeds)), diagnostics=False, threads=args.threads
    )
    relu, mixed = base.replace(activations=("relu",)), base.replace(activations=("relu", "swiglu"))
    sides = {
        "plain relu+swiglu": lambda: plain_epoch(mixed, dataset),
        "fused relu": _timed(Trainer(relu, dataset)),
        "builder relu": _timed(builder_trainer(relu, dataset)),
        "builder relu+swiglu": _timed(Trainer(mixed, dataset)),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for round_ in range(args.repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            times[name].append(sides[name]())
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"cpu: {platform.processor() or platform.machine()}, threads {args.threads}, "
          f"{args.limit_train} train samples, {args.seeds} seeds, torch {torch.__version__}")  # fmt: skip
    for name, seconds in median.items():
        print(f"{name:>22}: {seconds:.3f} s/epoch")
    print(f"builder relu / fused relu: {median['builder relu'] / median['fused relu']:.2f}x "
          "the time (the cost of routing plain members through the vmap stack)")  # fmt: skip
    print(f"plain / builder relu+swiglu: "
          f"{median['plain relu+swiglu'] / median['builder relu+swiglu']:.2f}")  # fmt: skip


def _timed(trainer: Trainer):
    def run() -> float:
        start = time.perf_counter()
        trainer.train_epoch()
        return time.perf_counter() - start

    return run


if __name__ == "__main__":
    main()
