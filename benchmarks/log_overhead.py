"""The cost of `compare --log`: the seed protocol with and without live logging, in one process.

The classic protocol (Fashion-MNIST, relu/sigmoid/tanh/leaky_relu, 10 epochs, 1 seed, with
diagnostics and a run directory, as `actlab compare` writes it) is trained twice at once,
epoch by epoch, alternately: one study without logging, one with `--log tensorboard=DIR --log
mlflow=sqlite:///DB` (both), so that a drift in a shared machine's speed hits both alike.

An epoch of the logged study is timed until its export has finished (`LiveLog.flush`), so
the background thread's work is counted in full, never hidden in the other study's epoch:
with training and export overlapping (as in `actlab compare`) the cost is at most this. The
export's own time (from `on_epoch` to the end of `flush`) is also printed per epoch, as a
fraction of the logged epoch: on a shared machine whose speed jumps from epoch to epoch
this is the steadier figure. Most of that time is spent waiting (sqlite's fsync at each
MLflow commit), not computing: the CPU time of the export threads (`LiveLog.cpu_seconds`,
opening the stores included) is what they can take from training when, as in `actlab
compare`, they run beside it.
The tracking store is a copy of an empty sqlite store (MLflow creates its tables once per
store, in seconds: done before the clock starts).

    python benchmarks/log_overhead.py                  # 10 epochs
    python benchmarks/log_overhead.py --epochs 3 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from actlab.config import ExperimentConfig
from actlab.data.datasets import load_dataset
from actlab.engine.batches import DeviceData
from actlab.engine.trainer import members_of, train
from actlab.export.live import LiveLog
from actlab.study import store


def study_epochs(config, dataset, data, out: Path, live: LiveLog | None):
    """A study's epochs as `api.run_study` runs them (train, append rows, checkpoint,
    on_epoch), one per `next()`, which gives the seconds spent waiting for the export (0
    without logging)."""
    writer = store.open_run_dir(
        out,
        config,
        members=[dataclasses.asdict(m) for m in members_of(config)],
        dataset=dataset.summary(),
        environment=store.describe_environment("cpu", torch.get_num_threads()),
    )
    with writer:
        for result in train(config, data):
            writer.append_rows(result.metrics, result.diagnostics)
            writer.save_checkpoint(
                {"depth_index": 0, "depth": None, "epoch": result.epoch, "engine": result.state}
            )
            waited = 0.0
            if live is not None:
                start = time.perf_counter()
                live.on_epoch(result)
                live.flush()
                waited = time.perf_counter() - start
            yield waited


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset, progress=False)
    data = DeviceData.from_dataset(dataset, "cpu")
    config = ExperimentConfig(
        dataset=args.dataset, epochs=args.epochs, threads=args.threads, device="cpu", seeds=(0,)
    )
    print(
        f"{store._cpu_model_name()}, {platform.machine()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.dataset}, {len(config.activations)} members, "
        f"{args.epochs} epochs, diagnostics on"
    )
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        MlflowClient(f"sqlite:///{root / 'empty.db'}").search_experiments()  # tables, once
        shutil.copy(root / "empty.db", root / "mlflow.db")
        warnings: list[str] = []
        specs = {"tensorboard": str(root / "tb"), "mlflow": f"sqlite:///{root / 'mlflow.db'}"}
        live = LiveLog(specs, root / "logged", warn=warnings.append)
        plain = study_epochs(config, dataset, data, root / "plain", None)
        logged = study_epochs(config, dataset, data, root / "logged", live)
        ratios, fractions, totals, exported = [], [], [0.0, 0.0], 0.0
        for epoch in range(1, args.epochs + 1):
            times, waited = [], 0.0
            for side in (plain, logged) if epoch % 2 else (logged, plain):
                start = time.perf_counter()
                waited += next(side)
                times.append(time.perf_counter() - start)
            base, with_log = times if epoch % 2 else times[::-1]
            totals[0] += base
            totals[1] += with_log
            exported += waited
            ratios.append(with_log / base)
            fractions.append(waited / with_log)
            print(
                f"epoch {epoch:2d}: without --log {base:.2f} s, with {with_log:.2f} s "
                f"(ratio {with_log / base:.3f}), of which the export {waited:.3f} s "
                f"({100 * waited / with_log:.2f}%)"
            )
        start = time.perf_counter()
        lines = live.close()
        tail = time.perf_counter() - start
        cpu = live.cpu_seconds
        if warnings:
            raise SystemExit(f"the exports failed: {warnings}")
    print("\n".join(lines))
    print(
        f"total: without {totals[0]:.1f} s, with {totals[1]:.1f} s, "
        f"ratio {totals[1] / totals[0]:.3f}; per-epoch median ratio "
        f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})"
    )
    print(
        f"export time: {exported:.2f} s of {totals[1]:.1f} s = {100 * exported / totals[1]:.2f}% "
        f"(per epoch: median {100 * statistics.median(fractions):.2f}%, "
        f"max {100 * max(fractions):.2f}%, epoch 1 opens the stores); "
        f"close() after training: {tail:.2f} s"
    )
    print(
        f"export CPU time (all threads, opening the stores included): {cpu:.2f} s = "
        f"{100 * cpu / totals[1]:.2f}% of the logged study's time"
    )


if __name__ == "__main__":
    main()
