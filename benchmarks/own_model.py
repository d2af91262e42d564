"""Your own model: K plain PyTorch loops vs actlab, end to end, side by side in one run.

In one process, on the same data (Fashion-MNIST), for each model:

- **plain**: per member (activation x seed), the network built after
  ``torch.manual_seed(seed)``, ``DataLoader(TensorDataset)`` with shuffle, ``torch.optim.Adam``,
  test accuracy after each epoch (what a tutorial loop does, K times);
- **actlab** as ``actlab compare --model FILE.py:NAME`` runs it: ``run_study`` into a run
  directory (checks, checkpoint after every epoch, CSVs; no report), once per stacking mode:
  ``vmap`` (each activation's members as one vmapped call), ``loop`` (member by member
  inside each step) and ``auto`` (what actlab picks, and why);
- for the MLP also actlab's **built-in** path (``--model mlp``, the hand-written step).

Models: the example ResNet-8 (examples/resnet.py:resnet8), the example ViT
(examples/vit.py:vit_tiny: nn.MultiheadAttention) and the built-in MLP given as a user
model (examples/mlp.py:mlp). Prints the times, plain / actlab ratios (above 1: actlab is
faster), the checkpoint size and the accuracies. Sides alternate `--repeats` times (a
shared machine's speed drifts; the order rotates); the ratios are medians over the rounds.

    python benchmarks/own_model.py --models resnet,vit --limit-train 2000 --seeds 2 --threads 1
    python benchmarks/own_model.py --models resnet --seeds 4 --device cuda   # 16 members
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from actlab.catalog import registry as catalog
from actlab.config import ExperimentConfig, members_for
from actlab.data.datasets import load_dataset
from actlab.nn.user_model import load
from actlab.study import store
from actlab.study.driver import run_study

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "resnet": str(ROOT / "examples" / "resnet.py") + ":resnet8",
    "vit": str(ROOT / "examples" / "vit.py") + ":vit_tiny",
    "mlp": str(ROOT / "examples" / "mlp.py") + ":mlp",
}


def one_by_one(
    reference: str, config: ExperimentConfig, dataset, device
) -> tuple[float, dict, dict]:
    """The plain loop, member after member. Returns seconds, final test accuracy per member
    and where the time went (build, train, eval: seconds)."""
    user = load(reference)
    x_train = dataset.float_inputs(dataset.x_train)
    x_test = dataset.float_inputs(dataset.x_test).to(device)
    y_test = dataset.y_test.to(device)
    accuracies = {}
    parts = dict.fromkeys(("build", "train", "eval"), 0.0)
    start = time.perf_counter()
    for member in members_for(config):
        begin = time.perf_counter()
        torch.manual_seed(member.seed)
        model = user.factory(lambda spec=member.activation: catalog.get(spec)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=member.lr)
        loader = DataLoader(
            TensorDataset(x_train, dataset.y_train),
            batch_size=config.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(member.seed),
        )
        parts["build"] += time.perf_counter() - begin
        for _ in range(config.epochs):
            begin = time.perf_counter()
            model.train()
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            evaluated = time.perf_counter()
            parts["train"] += evaluated - begin
            model.eval()
            with torch.no_grad():
                correct = sum(
                    (model(x_test[i : i + 1000]).argmax(1) == y_test[i : i + 1000]).sum().item()
                    for i in range(0, len(y_test), 1000)
                )
            parts["eval"] += time.perf_counter() - evaluated
        accuracies[member.label] = correct / len(y_test)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, accuracies, parts


class Clock:
    """Where actlab's time goes, from the study's hooks and its checkpoint writes:
    start-up (loading and checking the model, building the members, the thread choice, the
    run directory: until training starts), train (the steps), eval (after an epoch's last step until its
    checkpoint: evaluation and the CSV rows), checkpoint (writing checkpoint.pt), finish
    (after the last checkpoint: reading the run back)."""

    def __init__(self) -> None:
        self.parts = dict.fromkeys(("start-up", "train", "eval", "checkpoint", "finish"), 0.0)
        self.last = self.start = time.perf_counter()

    def lap(self, part: str) -> None:
        now = time.perf_counter()
        self.parts[part] += now - self.last
        self.last = now

    def started(self, steps_total: int, steps_done: int) -> None:
        self.lap("start-up")

    def step(self, info) -> None:
        self.lap("train")

    @contextlib.contextmanager
    def checkpoints(self):
        """Times RunWriter.save_checkpoint (the evaluation ends where it starts)."""
        save = store.RunWriter.save_checkpoint

        def timed(writer, **kwargs):
            self.lap("eval")
            try:
                return save(writer, **kwargs)
            finally:
                self.lap("checkpoint")

        store.RunWriter.save_checkpoint = timed
        try:
            yield self
        finally:
            store.RunWriter.save_checkpoint = save
            self.lap("finish")


def stacked(config: ExperimentConfig, dataset) -> tuple[float, dict, int, str, dict]:
    """actlab end to end into a fresh run directory. Returns seconds, final test accuracy
    per member, the checkpoint's bytes, the stacking line actlab printed and where the
    time went (`Clock`)."""
    plans: list = []
    with tempfile.TemporaryDirectory() as folder:
        with Clock().checkpoints() as clock:
            result = run_study(config, dataset=dataset, out=Path(folder) / "run",
                               on_plan=plans.append, on_start=clock.started,
                               on_step=clock.step)  # fmt: skip
        seconds = time.perf_counter() - clock.start
        checkpoint = sum(f.stat().st_size for f in Path(folder).rglob("*checkpoint*"))
    final = result.metrics[result.metrics["epoch"] == config.epochs]
    labels = [m.label for m in members_for(config)]
    accuracies = dict(zip(labels, final.sort_values("member")["test_acc"], strict=True))
    line = (plans[0].kernels or "") if plans else ""
    return seconds, accuracies, checkpoint, line, clock.parts


def spent(rounds: list[dict]) -> str:
    """``start-up 1.2 s, train 8.0 s, ...``: the median of each part over the rounds."""
    return ", ".join(
        f"{part} {statistics.median(r[part] for r in rounds):.2f} s" for part in rounds[0]
    )


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
    parser.add_argument("--repeats", type=int, default=1, help="alternate the sides N times")
    parser.add_argument("--modes", default="vmap,loop,auto", help="actlab's --stacking modes")
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
    warnings.simplefilter("ignore")  # actlab's notes (e.g. members trained one by one)
    for name in args.models.split(","):
        compare_model(name, activations, args, dataset, device)


def compare_model(name: str, activations: tuple[str, ...], args, dataset, device) -> None:
    reference = MODELS[name]
    loaded = load(reference)
    config = ExperimentConfig(
        dataset="fashion-mnist", model=reference, model_source=loaded.source,
        model_sha256=loaded.sha256, activations=activations, seeds=tuple(range(args.seeds)),
        epochs=args.epochs, batch_size=args.batch_size, limit_train=args.limit_train,
        limit_test=args.limit_test, device=args.device, threads=args.threads, diagnostics=False,
    )  # fmt: skip
    members = len(members_for(config))
    times: dict[str, list[float]] = {}
    accuracy: dict[str, dict] = {}
    extra: dict[str, tuple[int, str]] = {}
    parts: dict[str, list[dict]] = {}
    # Alternate the sides `repeats` times: a shared machine's speed drifts, and each
    # round's ratios are measured under about the same load.
    # The order rotates from round to round, so that a drifting load favours no side.
    sides = ["plain", *args.modes.split(",")]
    for round_ in range(args.repeats):
        shift = round_ % len(sides)
        for side in sides[shift:] + sides[:shift]:
            if side == "plain":
                seconds, accuracy[side], where = one_by_one(reference, config, dataset, device)
            else:
                seconds, accuracy[side], size, line, where = stacked(
                    config.replace(stacking=side), dataset
                )
                extra[side] = (size, line)
            times.setdefault(side, []).append(seconds)
            parts.setdefault(side, []).append(where)
    plain = times["plain"]
    print(f"{name}: {members} members; plain loops {statistics.median(plain):.1f} s "
          f"(mean acc {mean_accuracy(accuracy['plain'])}; {spent(parts['plain'])})",
          flush=True)  # fmt: skip
    for mode in sides[1:]:
        ratios = [p / s for p, s in zip(plain, times[mode], strict=True)]
        size, line = extra[mode]
        print(
            f"  actlab --stacking {mode}: {statistics.median(times[mode]):.1f} s "
            f"(mean acc {mean_accuracy(accuracy[mode])}), plain / actlab = "
            f"{statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}), "
            f"checkpoint {size / 2**20:.1f} MiB; {spent(parts[mode])}"
            + (f"; {line}" if mode == "auto" else ""),
            flush=True,
        )
    if name == "mlp":
        builtin = config.replace(
            model="mlp", model_source=None, model_sha256=None, hidden=(128, 128)
        )
        seconds, builtin_acc, _, _, _ = stacked(builtin, dataset)
        print(f"  built-in hand-written path {seconds:.1f} s ({mean_accuracy(builtin_acc)})")


if __name__ == "__main__":
    main()
