"""The classic seed protocol, timed three ways in one process on the same data.

1. The plain loop: per activation, one after another, an nn.Sequential MLP 784-128-128-10,
   a DataLoader over TensorDataset (batch 64, shuffle) and torch.optim.Adam(lr=1e-3).
2. The vmap peer: the four networks at once as PyTorch's model-ensembling tutorial trains
   an ensemble (torch.func.stack_module_state + functional_call + vmap, torch.optim.Adam
   over the stacked parameters).
3. actlab's engine: the same four networks as one stacked model (`actlab.study.driver.run_study`).

It prints the times, their ratios, the test accuracies of every side, the peak RSS, and a
profile of the fused step (matmuls vs the rest). `--floor` adds the step floor of
benchmarks/floor.py (the GEMMs and the Adam pass of every step, and the test-set GEMMs,
measured here); `--members 4,16,48` the cost per member-epoch as members are added
(activation x seed), against the floor per member.

    python benchmarks/seed_protocol.py                     # 10 epochs, Fashion-MNIST
    python benchmarks/seed_protocol.py --epochs 1          # a quick run
    python benchmarks/seed_protocol.py --interleave --floor  # also epoch by epoch, alternately
    python benchmarks/seed_protocol.py --epochs 3 --members 4,16,48 --skip-plain --skip-peer
    python benchmarks/seed_protocol.py --device cuda       # on a GPU (plain loop moves batches)
"""

from __future__ import annotations

import argparse
import importlib
import math
import platform
import resource
import statistics
import time

import torch
from floor import StepFloor, StepShape, alternate, ratio_summary
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from actlab.config import ExperimentConfig
from actlab.data.datasets import load_dataset
from actlab.engine.batches import DeviceData
from actlab.engine.trainer import Trainer
from actlab.study.driver import run_study

ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu")
PLAIN_ACTIVATIONS = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}
MATMUL_OPS = ("aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm", "aten::matmul")


def cpu_model() -> str:
    """The CPU's model name (lscpu's), e.g. "Intel(R) Xeon(R) Processor"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


class MixedActivation(nn.Module):
    """The four activations weighted by a one-hot buffer `choice`: vmap runs one program
    for every member, so a member's activation has to be data (its row of the stacked
    buffer). The weights are 0 or 1, so each member's output and gradient are those of its
    own activation (the other three are computed and multiplied by 0)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.fns = [PLAIN_ACTIVATIONS[a]() for a in ACTIVATIONS]
        choice = torch.zeros(len(ACTIVATIONS))
        choice[ACTIVATIONS.index(name)] = 1.0
        self.register_buffer("choice", choice)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(fn(x) * self.choice[i] for i, fn in enumerate(self.fns))


class PeerRun:
    """PyTorch's documented way to train many models at once (the model-ensembling
    tutorial, https://pytorch.org/tutorials/intermediate/ensembling.html): K nn.Sequential
    models, torch.func.stack_module_state, functional_call + vmap over the members (one
    minibatch shared by all, in_dims None), the sum of the members' mean losses backward,
    and torch.optim.Adam over the stacked parameters (elementwise, so K independent Adams).
    Each model is built after torch.manual_seed(0), as the plain loop's; batches are
    index_select'ed from the whole train tensor (no DataLoader: the faster way)."""

    def __init__(self, dataset, x_train: torch.Tensor, device: str = "cpu") -> None:
        from torch.func import functional_call, stack_module_state, vmap

        self.device = torch.device(device)
        self.x_train = x_train.to(self.device)
        self.y_train = dataset.y_train.to(self.device)
        models = []
        for name in ACTIVATIONS:
            torch.manual_seed(0)
            models.append(
                nn.Sequential(
                    nn.Flatten(),
                    nn.Linear(x_train[0].numel(), 128),
                    MixedActivation(name),
                    nn.Linear(128, 128),
                    MixedActivation(name),
                    nn.Linear(128, dataset.num_classes),
                ).to(self.device)
            )
        self.params, self.buffers = stack_module_state(models)
        base = models[0].to("meta")

        def member_loss(params, buffers, x, y):
            return nn.functional.cross_entropy(functional_call(base, (params, buffers), (x,)), y)

        def member_logits(params, buffers, x):
            return functional_call(base, (params, buffers), (x,))

        self.losses = vmap(member_loss, in_dims=(0, 0, None, None))
        self.logits = vmap(member_logits, in_dims=(0, 0, None))
        self.optimizer = torch.optim.Adam(self.params.values(), lr=1e-3)
        self.generator = torch.Generator().manual_seed(0)

    def train_epoch(self) -> None:
        n = self.x_train.shape[0]
        perm = torch.randperm(n, generator=self.generator).to(self.device)
        for start in range(0, n, 64):
            index = perm[start : start + 64]
            x, y = self.x_train.index_select(0, index), self.y_train.index_select(0, index)
            self.optimizer.zero_grad()
            self.losses(self.params, self.buffers, x, y).sum().backward()
            self.optimizer.step()

    @torch.no_grad()
    def test_accuracy(self, dataset, x_test: torch.Tensor) -> dict[str, float]:
        logits = self.logits(self.params, self.buffers, x_test.to(self.device))
        correct = (logits.argmax(-1).cpu() == dataset.y_test).double().mean(dim=1)
        return dict(zip(ACTIVATIONS, correct.tolist(), strict=True))


def peer_loop(dataset, epochs: int, device: str = "cpu") -> tuple[float, dict[str, float]]:
    """The vmap peer: the four networks trained at once, as PyTorch's tutorial does."""
    x_train = dataset.float_inputs(dataset.x_train)
    start = time.perf_counter()
    run = PeerRun(dataset, x_train, device)
    for _ in range(epochs):
        run.train_epoch()
    accuracies = run.test_accuracy(dataset, dataset.float_inputs(dataset.x_test))
    return time.perf_counter() - start, accuracies


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


def interleaved(dataset, config: ExperimentConfig, *, floor: bool, peer: bool) -> None:
    """Epoch by epoch, alternately: the four plain models, the vmap peer, actlab's stacked
    model and (`floor`) the floor's epoch (benchmarks/floor.py: the GEMMs and Adam pass of
    every step, and the evaluation GEMMs, at the protocol's shapes).

    The same work as the sequential runs, but a drift in the machine's speed (a shared VM)
    hits every side alike, so the per-epoch ratios are steadier. actlab's epoch also
    evaluates the test set (the plain loop and the peer do not): that counts against it."""
    x_train = dataset.float_inputs(dataset.x_train)
    trainer = Trainer(config, DeviceData.from_dataset(dataset, "cpu"))
    sides = {"plain": [PlainRun(dataset, name, x_train) for name in ACTIVATIONS]}
    epochs = {"plain": lambda: [run.train_epoch() for run in sides["plain"]]}
    if peer:
        peer_run = PeerRun(dataset, x_train)
        epochs["peer"] = peer_run.train_epoch
    epochs["actlab"] = trainer.train_epoch
    if floor:
        shape = StepShape.of(config, x_train[0].numel(), dataset.num_classes)
        step_floor = StepFloor(shape)
        steps = math.ceil(dataset.train_size / config.batch_size)
        epochs["floor"] = lambda: step_floor.epoch(steps, dataset.test_size)
    times: dict[str, list[float]] = {name: [] for name in epochs}
    for _ in range(config.epochs):
        for name, epoch in epochs.items():
            start = time.perf_counter()
            epoch()
            times[name].append(time.perf_counter() - start)
    names = list(times)
    print(f"\ninterleaved, epoch by epoch ({', then '.join(names)}), seconds:")
    print("  epoch " + "".join(f"{name:>9}" for name in names)
          + "   plain/actlab" + ("   peer/actlab" if peer else "")
          + ("   actlab/floor" if floor else ""))  # fmt: skip
    rows = list(zip(*times.values(), strict=True))
    for epoch, row in enumerate(rows, start=1):
        t = dict(zip(names, row, strict=True))
        line = f"  {epoch:5d} " + "".join(f"{v:9.2f}" for v in row)
        line += f"   {t['plain'] / t['actlab']:12.2f}x"
        if peer:
            line += f"   {t['peer'] / t['actlab']:11.2f}x"
        if floor:
            line += f"   {t['actlab'] / t['floor']:12.2f}x"
        print(line)
    print("  total " + "".join(f"{sum(times[name]):9.1f}" for name in names))
    print(f"  plain / actlab:  {ratio_summary(times['plain'], times['actlab'])}")
    if peer:
        print(f"  peer / actlab:   {ratio_summary(times['peer'], times['actlab'])}")
    if floor:
        print(f"  actlab / floor:  {ratio_summary(times['actlab'], times['floor'])}")
        print(f"  floor epoch: median {statistics.median(times['floor']):.2f} s "
              f"({steps} steps of {shape.flops / 1e6:.0f} MFLOP and a "
              f"{28 * shape.params / 1e6:.1f} MB Adam pass, + the test-set GEMMs)")  # fmt: skip
    if peer:
        accuracies = peer_run.test_accuracy(dataset, dataset.float_inputs(dataset.x_test))
        print("  peer final test accuracy: "
              + ", ".join(f"{n} {100 * a:.2f}%" for n, a in accuracies.items()))  # fmt: skip


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
    adam = sum(e.self_cpu_time_total for e in events if e.key == "aten::_fused_adam_")
    per_step = 1e-3 / steps  # profiler microseconds in total -> ms a step
    kernels = trainer.mlp_step.describe_kernels() if trainer.mlp_step else "autograd"
    print(f"\nprofile of {steps} fused steps ({wall / steps * 1e3:.2f} ms/step wall; "
          f"step kernels: {kernels}):")  # fmt: skip
    print(f"  matmuls (bmm/baddbmm/mm/addmm): {matmul * per_step:.3f} ms a step")
    print(f"  fused Adam:                     {adam * per_step:.3f} ms")
    print(f"  other torch ops:                {(total - matmul - adam) * per_step:.3f} ms")
    print(f"  outside torch ops (compiled kernels, Python; wall - ops, under the profiler): "
          f"{wall / steps * 1e3 - total * per_step:.3f} ms")  # fmt: skip
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))


def scaling(dataset, members: list[int], rounds: int, device: str) -> None:
    """Cost per member-epoch as members (activation x seed) are added, against the floor
    per member at the same K: actlab's epoch and the floor's epoch alternately."""
    print(f"\nmember scaling (1 actlab epoch, then 1 floor epoch, {rounds} times; medians)")
    print("      K  seeds  actlab s/epoch  floor s/epoch  actlab ms/member-epoch  "
          "floor ms/member-epoch  actlab/floor")  # fmt: skip
    data = DeviceData.from_dataset(dataset, device)
    for count in members:
        if count % len(ACTIVATIONS):
            raise SystemExit(f"--members: {count} is not a multiple of {len(ACTIVATIONS)}")
        seeds = tuple(range(count // len(ACTIVATIONS)))
        config = ExperimentConfig(
            dataset=dataset.name,
            seeds=seeds,
            epochs=rounds,
            device=device,
            diagnostics=False,
        )
        trainer = Trainer(config, data)
        shape = StepShape.of(config, data.x_train[0].numel(), dataset.num_classes)
        step_floor = StepFloor(shape, device)
        steps = math.ceil(dataset.train_size / config.batch_size)

        def floor_epoch(f=step_floor, n=steps):
            f.epoch(n, dataset.test_size)
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        times = alternate(
            {"actlab": trainer.train_epoch, "floor": floor_epoch}, rounds, warmup=False
        )
        actlab_s, floor_s = (statistics.median(times[side]) for side in ("actlab", "floor"))
        print(f"  {count:5d}  {len(seeds):5d}  {actlab_s:14.2f}  {floor_s:13.2f}  "
              f"{actlab_s / count * 1e3:22.0f}  {floor_s / count * 1e3:21.0f}  "
              f"{ratio_summary(times['actlab'], times['floor'])}")  # fmt: skip
        del trainer, step_floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--members", default=None, help="e.g. 4,16,48: cost per member-epoch vs the floor"
    )
    parser.add_argument("--skip-plain", action="store_true", help="skip the plain loop")
    parser.add_argument("--skip-peer", action="store_true", help="skip the vmap peer")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the profile: CPU only)")
    parser.add_argument(
        "--interleave", action="store_true", help="also time the sides epoch by epoch, alternately"
    )
    parser.add_argument(
        "--floor", action="store_true", help="also time the step floor (benchmarks/floor.py)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    dataset = load_dataset(args.dataset, progress=False)
    importlib.import_module("torch._dynamo")  # torch.optim's first use imports it: seconds
    print(
        f"{args.dataset}: {dataset.train_size} train, {dataset.test_size} test; "
        f"{args.epochs} epochs; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{cpu_model()}"
        + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else "")
    )
    config = ExperimentConfig(
        dataset=args.dataset,
        epochs=args.epochs,
        device=args.device,
        threads=args.threads,
        seeds=(0,),
    )
    accuracies = {}
    if not args.skip_plain:
        plain_time, accuracies["plain"] = plain_loop(dataset, args.epochs, args.device)
        print(f"plain loop:          {plain_time:7.1f} s  (peak RSS {peak_rss_mb():.0f} MB)")
    if not args.skip_peer:
        peer_time, accuracies["peer"] = peer_loop(dataset, args.epochs, args.device)
        print(f"vmap peer:           {peer_time:7.1f} s  (peak RSS {peak_rss_mb():.0f} MB)")
    fused_time, accuracies["actlab"] = fused(dataset, config.replace(diagnostics=False))
    print(f"actlab (no diag):    {fused_time:7.1f} s  (peak RSS {peak_rss_mb():.0f} MB)")
    diag_time, _ = fused(dataset, config)
    print(f"actlab (diagnostics):{diag_time:7.1f} s  (+{100 * (diag_time / fused_time - 1):.0f}%)")
    if args.floor and args.device == "cpu":
        shape = StepShape.of(config, dataset.x_train[0].numel(), dataset.num_classes)
        steps = math.ceil(dataset.train_size / config.batch_size)
        step_floor = StepFloor(shape)
        start = time.perf_counter()
        for _ in range(args.epochs):
            step_floor.epoch(steps, dataset.test_size)
        floor_time = time.perf_counter() - start
        print(f"step floor:          {floor_time:7.1f} s  (GEMMs and Adam pass only)")
        print(f"actlab / floor: {fused_time / floor_time:.2f}x")
    if not args.skip_plain:
        print(f"speed-up: {plain_time / fused_time:.2f}x (no diagnostics), "
              f"{plain_time / diag_time:.2f}x (with diagnostics)")  # fmt: skip
    if not args.skip_peer:
        print(f"ahead of the vmap peer: {peer_time / fused_time:.2f}x")
    print("\nfinal test accuracy " + "".join(f"{side:>9}" for side in accuracies))
    for name in ACTIVATIONS:
        print(f"  {name:<18}" + "".join(f"{100 * acc[name]:8.2f}%" for acc in accuracies.values()))
    if args.device != "cpu":
        args.interleave, args.no_profile = False, True  # both are CPU measurements
    if args.interleave:
        interleaved(
            dataset, config.replace(diagnostics=False), floor=args.floor, peer=not args.skip_peer
        )
    if not args.no_profile:
        profile_fused_step(dataset, config.replace(diagnostics=False))
    if args.members:
        members = [int(m) for m in args.members.split(",")]
        scaling(dataset, members, args.epochs, args.device)
    print(f"\npeak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
