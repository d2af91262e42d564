"""A study on Ray with 1 and 2 workers against the local run, in one process; bytes per epoch.

Runs the same study three ways, one after another in this process: locally (one stacked
model, `actlab.study.driver.run_study`), then on a local Ray cluster started with ``ray.init
(num_cpus=1)`` (one worker, so by default one shard of all the members) and with
``num_cpus=2`` (two workers, two shards). Every way uses one thread per worker. Prints the wall time of each (Ray's
includes starting the cluster's workers, shipping the dataset, every epoch's rows and
checkpoints), the throughput in member-epochs per second, the scaling efficiency
``t(1 worker) / (2 * t(2 workers))``, checks that all three wrote the same metrics, and
measures what a shard sends to the driver per epoch: the pickled rows (every epoch) and
the pickled engine state (every ``--checkpoint-every`` epochs).

Usage: python benchmarks/ray_scaling.py [--dataset fashion-mnist] [--limit-train 20000]
       [--epochs 2] [--seeds 2]
On a shared machine the times move with the others' load: compare them as ratios.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import platform
import tempfile
import time
from pathlib import Path

import torch

from actlab.config import ExperimentConfig, members_for
from actlab.study import cluster, store
from actlab.study.driver import load_study_dataset, run_study


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def metrics_without_time(path: Path) -> list[list[str]]:
    lines = (path / store.METRICS_FILE).read_text().splitlines()
    column = store.METRICS_COLUMNS.index("epoch_time_s")
    return [line.split(",")[:column] + line.split(",")[column + 1 :] for line in lines]


def timed_ray_run(config, dataset, out: Path, workers: int) -> float:
    import ray

    # A throwaway cluster on this machine: no token authentication (Ray would otherwise
    # create ~/.ray/auth_token and turn it on for every later `ray start` here).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
    try:
        start = time.perf_counter()
        cluster.run_study_on_ray(config, out=out, dataset=dataset)
        return time.perf_counter() - start
    finally:
        ray.shutdown()


def bytes_per_epoch(config, dataset) -> tuple[int, int, int]:
    """Pickled size of one shard's per-epoch yield without and with its state, and the
    shard's member count (a shard of one seed)."""
    shard = cluster.shards_of(config, cluster.plan_shards(config, None, slots=len(config.seeds)))[0]
    members = len(members_for(config))
    parts = list(
        cluster.train_shard(
            cluster.shard_config(config.replace(epochs=1), shard), None, dataset, None, 1, members
        )
    )
    (part,) = parts
    with_state = len(pickle.dumps(part, protocol=5))
    rows_only = len(pickle.dumps({**part, "state": None}, protocol=5))
    return rows_only, with_state, len(shard.members)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--limit-train", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    config = ExperimentConfig(
        dataset=args.dataset,
        limit_train=args.limit_train,
        epochs=args.epochs,
        seeds=tuple(range(args.seeds)),
        threads=1,
    )
    dataset = load_study_dataset(config)
    member_epochs = len(members_for(config)) * config.epochs
    print(
        f"{args.dataset}, {dataset.train_size} train samples, {config.epochs} epochs, "
        f"{len(members_for(config))} members ({len(config.activations)} activations x "
        f"{args.seeds} seeds, MLP 784-128-128-10), 1 thread per worker; {cpu_name()}, "
        f"torch {torch.__version__}"
    )
    torch.set_num_threads(1)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        start = time.perf_counter()
        run_study(config, out=root / "local", dataset=dataset)
        local = time.perf_counter() - start
        one = timed_ray_run(config, dataset, root / "ray1", 1)
        two = timed_ray_run(config, dataset, root / "ray2", 2)
        same = (
            metrics_without_time(root / "local")
            == metrics_without_time(root / "ray1")
            == metrics_without_time(root / "ray2")
        )
    print(f"  load average before: {load[0]:.1f}, after: {os.getloadavg()[0]:.1f}")
    for name, seconds in (
        ("local (no Ray)", local),
        ("ray, 1 worker", one),
        ("ray, 2 workers", two),
    ):
        print(f"  {name:<15} {seconds:7.1f} s  {member_epochs / seconds:6.2f} member-epochs/s")
    print(f"  ray 1 worker / local: {one / local:.2f}x (Ray's own overhead)")
    print(f"  speedup 2 workers vs 1: {one / two:.2f}x, scaling efficiency {one / (2 * two):.0%}")
    print(f"  metrics.csv identical in all three: {same}")
    rows, with_state, members = bytes_per_epoch(config, dataset)
    print(
        f"  sent per shard-epoch ({members} members): rows {rows} B ({rows / members:.0f} B per "
        f"member), with the checkpoint {with_state} B ({(with_state - rows) / members / 1e6:.2f} MB "
        "per member)"
    )


if __name__ == "__main__":
    main()
