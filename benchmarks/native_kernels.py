"""The CPU step's compiled kernels (actlab/engine/native_step.c) against its torch ops, cold and warm.

The kernels are compiled on first use, so they must win in wall time with the build
counted. This prints, on the machine at hand:

- the build on a cold cache (a fresh process and an empty cache directory: the compiler
  runs) and the load on a warm one (a fresh process, the cached library), both timed
  around `actlab.engine.native.library()`;
- the protocol's training epoch (4 activations, 1 seed, Fashion-MNIST, evaluation
  included) with the compiled kernels and with the torch ops (the fallback, as with
  ACTLAB_NATIVE=0), epoch by epoch, alternately, in one process on the same data;
- the 10-epoch protocol's wall time both ways, the build included on a cold cache, and
  the number of epochs after which the build has paid for itself.

    python benchmarks/native_kernels.py                # 3 alternating epochs, 1 thread
    python benchmarks/native_kernels.py --threads 2 --epochs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from seed_protocol import cpu_model

from actlab.config import ExperimentConfig
from actlab.data.datasets import load_dataset
from actlab.engine import native
from actlab.engine.batches import DeviceData
from actlab.engine.trainer import Trainer

TIME_LIBRARY = (
    "import time; from actlab import native; t = time.perf_counter(); lib = native.library(); "
    "print(time.perf_counter() - t if lib is not None else native.status())"
)


def library_seconds(cache: str) -> float:
    """Seconds `native.library()` takes in a fresh process with cache directory `cache`."""
    env = {**os.environ, "XDG_CACHE_HOME": cache}
    env.pop("ACTLAB_NATIVE", None)
    out = subprocess.run(
        [sys.executable, "-c", TIME_LIBRARY], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        return float(out)
    except ValueError:
        raise SystemExit(f"the compiled kernels are not available here: {out}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="alternating epochs per side")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dataset", default="fashion-mnist")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {cpu_model()}")

    with tempfile.TemporaryDirectory() as cache:
        colds, warms = [], []
        for _ in range(3):
            for entry in os.scandir(cache):  # empty the cache: the next call compiles
                subprocess.run(["rm", "-rf", entry.path], check=True)
            colds.append(library_seconds(cache))
            warms.append(library_seconds(cache))
    cold, warm = statistics.median(colds), statistics.median(warms)
    print(f"build, cold cache: {cold:.2f} s   load, warm cache: {1e3 * warm:.0f} ms   "
          f"(medians of 3 fresh processes each)")  # fmt: skip

    dataset = load_dataset(args.dataset, progress=False)
    data = DeviceData.from_dataset(dataset, "cpu")
    config = ExperimentConfig(
        dataset=args.dataset, threads=args.threads, diagnostics=False, seeds=(0,)
    )
    compiled = Trainer(config, data)
    assert compiled.mlp_step.native is not None, native.status()
    library = native.library
    native.library = lambda: None  # the torch ops, as where no compiler is found
    try:
        fallback = Trainer(config, data)
    finally:
        native.library = library
    assert fallback.mlp_step.native is None
    times: dict[str, list[float]] = {"compiled": [], "torch ops": []}
    accuracy: dict[str, dict[str, float]] = {}
    for _ in range(args.epochs):
        for name, trainer in (("compiled", compiled), ("torch ops", fallback)):
            start = time.perf_counter()
            result = trainer.train_epoch()
            times[name].append(time.perf_counter() - start)
            accuracy[name] = {row["activation"]: row["test_acc"] for row in result.metrics}
    epoch = {name: statistics.median(values) for name, values in times.items()}
    ratios = sorted(t / c for t, c in zip(times["torch ops"], times["compiled"], strict=True))
    print(f"\nprotocol epoch (4 members, {args.epochs} alternating epochs each, medians):")
    for name, seconds in epoch.items():
        print(f"  {name:10s} {seconds:6.2f} s")
    print(f"  torch ops / compiled: median {statistics.median(ratios):.2f}x "
          f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}x)")  # fmt: skip
    saving = epoch["torch ops"] - epoch["compiled"]
    print("\n10-epoch protocol, training wall time:")
    print(f"  torch ops                   {10 * epoch['torch ops']:6.1f} s")
    print(f"  compiled, warm cache        {10 * epoch['compiled'] + warm:6.1f} s")
    print(f"  compiled, cold cache        {10 * epoch['compiled'] + cold:6.1f} s  (build included)")
    if saving > 0:
        print(f"  the cold build pays for itself after {cold / saving:.1f} epochs")
    print(f"\ntest accuracy after {args.epochs} epochs (the same networks, rounding apart):")
    for name, values in accuracy.items():
        print(f"  {name:10s} " + ", ".join(f"{n} {100 * a:.2f}%" for n, a in values.items()))


if __name__ == "__main__":
    main()
