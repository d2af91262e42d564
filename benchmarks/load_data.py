"""Time loading Fashion-MNIST from disk (target: under 1 s).

    python benchmarks/load_data.py [--data-dir DIR] [--repeats 5]

Prints the median and best of `load_dataset("fashion-mnist", download=False)` with and
without checksum verification, next to the plain baseline measured in the same process:
`gzip.open(f).read()` + `np.frombuffer` of the four files (no checks, no tensors).
"""

from __future__ import annotations

import argparse
import gzip
import platform
import statistics
import time

import numpy as np
import torch

from actlab.data import registry
from actlab.data.datasets import load_dataset


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def plain_baseline(folder: str) -> None:
    for stem in registry.IDX_FILES.values():
        with gzip.open(f"{folder}/{stem}.gz") as f:
            np.frombuffer(f.read(), dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    first = load_dataset("fashion-mnist", data_dir=args.data_dir, download=False, progress=False)
    print(
        f"source: {first.source}  train {tuple(first.x_train.shape)}  test {tuple(first.x_test.shape)}"
    )
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}"
    )
    runs = {
        "load_dataset (verified)": lambda: load_dataset(
            "fashion-mnist", data_dir=args.data_dir, download=False, progress=False
        ),
        "load_dataset (verify=False)": lambda: load_dataset(
            "fashion-mnist", data_dir=args.data_dir, download=False, progress=False, verify=False
        ),
        "baseline gzip.open+frombuffer": lambda: plain_baseline(first.source),
    }
    results = {name: timed(fn, args.repeats) for name, fn in runs.items()}
    baseline = statistics.median(results["baseline gzip.open+frombuffer"])
    for name, times in results.items():
        median = statistics.median(times)
        print(
            f"{name:32s} median {median:.3f} s  best {min(times):.3f} s  "
            f"({median / baseline:.2f}x baseline, {args.repeats} runs)"
        )
    verdict = "under" if statistics.median(results["load_dataset (verified)"]) < 1.0 else "OVER"
    print(f"target: {verdict} 1 s")


if __name__ == "__main__":
    main()
