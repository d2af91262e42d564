"""Your own model: one by one (the plain PyTorch loop) vs actlab's stacked training.

In one process, on the same data (Fashion-MNIST), for each model:

- **one by one**: per member (activation x seed), the network built after
  ``torch.manual_seed(seed)``, ``DataLoader(TensorDataset)`` with shuffle, ``torch.optim.Adam``,
  test accuracy after each epoch (what a tutorial loop does, K times);
- **stacked**: ``actlab.study.driver.run_study`` with ``--model FILE.py:NAME`` (vmap over the
  members of each activation; no run directory, no diagnostics);
- for the MLP also actlab's **built-in** path (``--model mlp``, the hand-written step).

Models: the example ResNet-8 (examples/resnet.py:resnet8) and the built-in MLP given as a
user model (examples/mlp.py:mlp). Prints the times, the ratios and the accuracies.

    python benchmarks/own_model.py --limit-train 5000 --epochs 1 --seeds 2
    python benchmarks/own_model.py --models resnet --seeds 4 --device cuda   # 16 members
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from actlab.catalog import registry as catalog
from actlab.config import ExperimentConfig, members_for
from actlab.data.datasets import load_dataset
from actlab.nn.user_model import load
from actlab.study.driver import run_study

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "resnet": str(ROOT / "examples" / "resnet.py") + ":resnet8",
    "mlp": str(ROOT / "examples" / "mlp.py") + ":mlp",
}


def one_by_one(reference: str, config: ExperimentConfig, dataset, device) -> tuple[float, dict]:
    """The plain loop, member after member. Returns seconds and final test accuracy per member."""
    user = load(reference)
    x_train = dataset.float_inputs(dataset.x_train)
    x_test = dataset.float_inputs(dataset.x_test).to(device)
    y_test = dataset.y_test.to(device)
    accuracies = {}
    start = time.perf_counter()
    for member in members_for(config):
        torch.manual_seed(member.seed)
        model = user.factory(lambda spec=member.activation: catalog.get(spec)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=member.lr)
        loader = DataLoader(
            TensorDataset(x_train, dataset.y_train),
            batch_size=config.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(member.seed),
        )
        for _ in range(config.epochs):
            model.train()
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                correct = sum(
                    (model(x_test[i : i + 1000]).argmax(1) == y_test[i : i + 1000]).sum().item()
                    for i in range(0, len(y_test), 1000)
                )
        accuracies[member.label] = correct / len(y_test)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, accuracies


def stacked(config: ExperimentConfig, dataset) -> tuple[float, dict]:
    start = time.perf_counter()
    result = run_study(config, dataset=dataset)
    seconds = time.perf_counter() - start
    final = result.metrics[result.metrics["epoch"] == config.epochs]
    labels = [m.label for m in members_for(config)]
    return seconds, dict(zip(labels, final.sort_values("member")["test_acc"], strict=True))


def mean_accuracy(accuracies: dict) -> str:
    values = list(accuracies.values())
    return f"{100 * sum(values) / len(values):.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet,mlp")
    parser.add_argument("--activations", default="relu,gelu,silu,mish")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit-train", type=int, default=5000)
    parser.add_argument("--limit-test", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1, help="alternate both sides N times")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dataset = load_dataset(
        "fashion-mnist", limit_train=args.limit_train, limit_test=args.limit_test, progress=False
    )
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(
        f"{where}, torch {torch.__version__}, {torch.get_num_threads()} threads; Fashion-MNIST "
        f"{dataset.train_size} train / {dataset.test_size} test, {args.epochs} epoch(s), batch "
        f"{args.batch_size}"
    )
    activations = tuple(a for a in args.activations.split(",") if a)
    rows = []
    for name in args.models.split(","):
        reference = MODELS[name]
        loaded = load(reference)
        config = ExperimentConfig(
            dataset="fashion-mnist", model=reference, model_source=loaded.source,
            model_sha256=loaded.sha256, activations=activations,
            seeds=tuple(range(args.seeds)), epochs=args.epochs, batch_size=args.batch_size,
            limit_train=args.limit_train, limit_test=args.limit_test, device=args.device,
            diagnostics=False,
        )  # fmt: skip
        members = len(members_for(config))
        # Alternate the two sides `repeats` times: a shared machine's speed drifts, and
        # each pair's ratio is measured under about the same load.
        ratios = []
        for _ in range(args.repeats):
            plain_s, plain_acc = one_by_one(reference, config, dataset, device)
            stacked_s, stacked_acc = stacked(config, dataset)
            ratios.append(plain_s / stacked_s)
            if args.repeats > 1:
                print(f"  {name} pair: one by one {plain_s:.1f} s, stacked {stacked_s:.1f} s, "
                      f"{plain_s / stacked_s:.2f}x", flush=True)  # fmt: skip
        row = [name, members, plain_s, stacked_s, plain_s / stacked_s, plain_acc, stacked_acc]
        if name == "mlp":
            builtin = config.replace(
                model="mlp", model_source=None, model_sha256=None, hidden=(128, 128)
            )
            builtin_s, builtin_acc = stacked(builtin, dataset)
            row += [builtin_s, builtin_acc]
        rows.append(row)
        print(
            f"{name}: {members} members; one by one {plain_s:.1f} s (mean acc "
            f"{mean_accuracy(plain_acc)}), stacked {stacked_s:.1f} s ({mean_accuracy(stacked_acc)})"
            f", one-by-one / stacked = {plain_s / stacked_s:.2f}x"
            + (
                f" (median of {len(ratios)} pairs {statistics.median(ratios):.2f}x)"
                if len(ratios) > 1
                else ""
            )
            + (
                f"; built-in hand-written path {row[7]:.1f} s ({mean_accuracy(row[8])}), "
                f"stacked user model / built-in = {stacked_s / row[7]:.2f}x"
                if len(row) > 7
                else ""
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
