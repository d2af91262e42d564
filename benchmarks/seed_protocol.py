"""The classic seed protocol, timed two ways in one process on the same data.

1. The plain loop: per activation, one after another, an nn.Sequential MLP 784-128-128-10,
   a DataLoader over TensorDataset (batch 64, shuffle) and torch.optim.Adam(lr=1e-3).
2. actlab's engine: the same four networks as one stacked model (`actlab.api.run_study`).

It prints both times, their ratio, both sets of test accuracies, the peak RSS, and a
profile of the fused step (matmuls vs the rest). `--members 4,12,24,48` adds the cost per
member as members are added (activation x seed).

    python benchmarks/seed_protocol.py                 # 10 epochs, Fashion-MNIST
    python benchmarks/seed_protocol.py --epochs 1      # a quick run
    python benchmarks/seed_protocol.py --epochs 1 --members 4,12,24,48 --skip-plain
    python benchmarks/seed_protocol.py --interleave   # also epoch by epoch, alternately
    python benchmarks/seed_protocol.py --device cuda  # on a GPU (plain loop moves each batch)
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from actlab.api import run_study
from actlab.config import ExperimentConfig
from actlab.data import load_dataset
from actlab.engine import DeviceData, Trainer

ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu")
PLAIN_ACTIVATIONS = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}
MATMUL_OPS = ("aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm", "aten::matmul")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class PlainRun:
    """The loop a tutorial writes for one activation: nn.Sequential, DataLoader, Adam."""

    def __init__(self, dataset, name: str, x_train: torch.Tensor, device: str = "cpu") -> None:
        torch.manual_seed(0)
        self.device = torch.device(device)
        act = PLAIN_ACTIVATIONS[name]
        self.model = nn.Sequential(
            nn.Flatten(),
            nn.Linear(x_train[0].numel(), 128),
            act(),
            nn.Linear(128, 128),
            act(),
            nn.Linear(128, dataset.num_classes),
        ).to(self.device)
        self.loader = DataLoader(
            TensorDataset(x_train, dataset.y_train), batch_size=64, shuffle=True
        )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss_fn = nn.CrossEntropyLoss()

    def train_epoch(self) -> None:
        self.model.train()
        for x, y in self.loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            self.optimizer.zero_grad()
            loss = self.loss_fn(self.model(x), y)
            loss.backward()
            self.optimizer.step()

    @torch.no_grad()
    def test_accuracy(self, dataset, x_test: torch.Tensor) -> float:
        self.model.eval()
        predictions = self.model(x_test.to(self.device)).argmax(1).cpu()
        return (predictions == dataset.y_test).double().mean().item()


def plain_loop(dataset, epochs: int, device: str = "cpu") -> tuple[float, dict[str, float]]:
    """The plain loop, once per activation, one after another (the data stays on the CPU
    in the DataLoader; each batch moves to the device, as a tutorial does)."""
    x_train = dataset.float_inputs(dataset.x_train)
    x_test = dataset.float_inputs(dataset.x_test)
    accuracies = {}
    start = time.perf_counter()
    for name in ACTIVATIONS:
        run = PlainRun(dataset, name, x_train, device)
        for _ in range(epochs):
            run.train_epoch()
        accuracies[name] = run.test_accuracy(dataset, x_test)
    return time.perf_counter() - start, accuracies


def interleaved(dataset, config: ExperimentConfig) -> None:
    """Epoch by epoch, alternately: the four plain models, then the stacked model.

    The same work as the sequential runs, but a drift in the machine's speed (a shared VM)
    hits both sides alike, so the per-epoch ratios are steadier. actlab's epoch also
    evaluates the test set (the plain loop does not): that counts against actlab."""
    x_train = dataset.float_inputs(dataset.x_train)
    runs = [PlainRun(dataset, name, x_train) for name in ACTIVATIONS]
    trainer = Trainer(config, DeviceData.from_dataset(dataset, "cpu"))
    plain_times, fused_times = [], []
    for _ in range(config.epochs):
        start = time.perf_counter()
        for run in runs:
            run.train_epoch()
        plain_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        trainer.train_epoch()
        fused_times.append(time.perf_counter() - start)
    ratios = sorted(p / f for p, f in zip(plain_times, fused_times, strict=True))
    print("\ninterleaved, epoch by epoch (plain 4 models, then actlab's stacked model):")
    print("  epoch  plain s  actlab s  ratio")
    for epoch, (p, f) in enumerate(zip(plain_times, fused_times, strict=True), start=1):
        print(f"  {epoch:5d}  {p:7.2f}  {f:8.2f}  {p / f:5.2f}x")
    print(f"  total  {sum(plain_times):7.1f}  {sum(fused_times):8.1f}  "
          f"{sum(plain_times) / sum(fused_times):5.2f}x  "
          f"(per-epoch ratio: median {ratios[len(ratios) // 2]:.2f}x, "
          f"range {ratios[0]:.2f}-{ratios[-1]:.2f}x)")  # fmt: skip


def fused(dataset, config: ExperimentConfig) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    result = run_study(config, dataset=dataset)
    elapsed = time.perf_counter() - start
    last = result.metrics[result.metrics["epoch"] == config.epochs]
    return elapsed, dict(zip(last["activation"], last["test_acc"], strict=True))


def profile_fused_step(dataset, config: ExperimentConfig, steps: int = 100) -> None:
    """Where the fused training step's time goes (torch.profiler, CPU self time)."""
    from torch.profiler import ProfilerActivity, profile

    trainer = Trainer(config, DeviceData.from_dataset(dataset, "cpu"))
    limited = DeviceData(
        trainer.data.x_train[: steps * config.batch_size],
        trainer.data.y_train[: steps * config.batch_size],
        trainer.data.x_val,
        trainer.data.y_val,
        trainer.data.x_test[:1],
        trainer.data.y_test[:1],
        trainer.data.num_classes,
        trainer.data.input_shape,
    )
    trainer.data = limited
    trainer._train_steps(None)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        trainer._train_steps(None)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    print(f"\nprofile of {steps} fused steps ({wall / steps * 1e3:.2f} ms/step wall):")
    print(f"  matmuls (bmm/baddbmm/mm/addmm): {100 * matmul / total:.1f}% of op self time")
    print(f"  everything else:                {100 * (total - matmul) / total:.1f}%")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))


def scaling(dataset, members: list[int], epochs: int, threads: int | None, device: str) -> None:
    """Cost per member per epoch as members (activation x seed) are added."""
    print("\nmembers  seeds  epoch time  per member per epoch")
    for count in members:
        if count % len(ACTIVATIONS):
            raise SystemExit(f"--members: {count} is not a multiple of {len(ACTIVATIONS)}")
        seeds = tuple(range(count // len(ACTIVATIONS)))
        config = ExperimentConfig(
            dataset=dataset.name,
            seeds=seeds,
            epochs=epochs,
            device=device,
            threads=threads,
            diagnostics=False,
        )
        elapsed, _ = fused(dataset, config)
        per_epoch = elapsed / epochs
        print(f"{count:7d}  {len(seeds):5d}  {per_epoch:9.2f}s  {per_epoch / count * 1e3:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--members", default=None, help="e.g. 4,12,24,48: cost per member")
    parser.add_argument("--skip-plain", action="store_true", help="skip the plain loop")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the profile: CPU only)")
    parser.add_argument(
        "--interleave", action="store_true", help="also time both sides epoch by epoch, alternately"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    dataset = load_dataset(args.dataset, progress=False)
    print(
        f"{args.dataset}: {dataset.train_size} train, {dataset.test_size} test; "
        f"{args.epochs} epochs; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
        + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else "")
    )
    config = ExperimentConfig(
        dataset=args.dataset, epochs=args.epochs, device=args.device, threads=args.threads
    )
    if not args.skip_plain:
        plain_time, plain_acc = plain_loop(dataset, args.epochs, args.device)
        print(f"plain loop:          {plain_time:7.1f} s  (peak RSS {peak_rss_mb():.0f} MB)")
    fused_time, fused_acc = fused(dataset, config.replace(diagnostics=False))
    print(f"actlab (no diag):    {fused_time:7.1f} s  (peak RSS {peak_rss_mb():.0f} MB)")
    diag_time, _ = fused(dataset, config)
    print(f"actlab (diagnostics):{diag_time:7.1f} s  (+{100 * (diag_time / fused_time - 1):.0f}%)")
    if not args.skip_plain:
        print(f"speed-up: {plain_time / fused_time:.2f}x (no diagnostics), "
              f"{plain_time / diag_time:.2f}x (with diagnostics)")  # fmt: skip
    print("\nfinal test accuracy    plain    actlab")
    for name in ACTIVATIONS:
        plain = f"{100 * plain_acc[name]:6.2f}%" if not args.skip_plain else "      -"
        print(f"  {name:<18} {plain}  {100 * fused_acc[name]:6.2f}%")
    if args.device != "cpu":
        args.interleave, args.no_profile = False, True  # both are CPU measurements
    if args.interleave:
        interleaved(dataset, config.replace(diagnostics=False))
    if not args.no_profile:
        profile_fused_step(dataset, config.replace(diagnostics=False))
    if args.members:
        members = [int(m) for m in args.members.split(",")]
        scaling(dataset, members, args.epochs, args.threads, args.device)
    print(f"\npeak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
