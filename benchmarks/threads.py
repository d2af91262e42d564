"""The thread count chosen by measuring (the default) against every forced `--threads N`,
on an idle machine and with busy-loop processes beside it.

    python benchmarks/threads.py                      # the README's headline command
    python benchmarks/threads.py --epochs 1 --repeats 3 --busy 1

For each condition (idle, then `--busy` busy-loop processes running) it runs the same
`actlab compare` command as a subprocess with the default threads ("auto") and with each
forced count 1..CPUs, interleaved over `--repeats` rounds, and prints the median wall time
of each and the ratio auto / best forced (issue 12's target: within 1.1x idle, 1.3x busy).
Wall time is the whole command (data loading, the measurement itself, training, no report).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from actlab.engine.threads import available_cpus
from actlab.study.store import _cpu_model_name

BUSY_LOOP = "while True: pass"


def run_compare(arguments: list[str], threads: int | None, out: str) -> tuple[float, str]:
    """Wall seconds of one `actlab compare` and the thread count it recorded."""
    command = [sys.executable, "-m", "actlab", "compare", *arguments, "--out", out, "--no-report"]
    if threads is not None:
        command += ["--threads", str(threads)]
    start = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if finished.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(command)} failed:\n{finished.stderr}")
    environment = json.loads(Path(out, "config.json").read_text())["environment"]
    return seconds, str(environment["threads"])


def measure(arguments: list[str], counts: list[int], repeats: int) -> dict:
    """Median wall time per mode ("auto" and each forced count), interleaved rounds."""
    times: dict[object, list[float]] = {"auto": [], **{n: [] for n in counts}}
    chosen = []
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(repeats):
            modes = list(times)
            shift = round_index % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                out = os.path.join(folder, f"run-{mode}-{round_index}")
                seconds, line = run_compare(arguments, None if mode == "auto" else mode, out)
                times[mode].append(seconds)
                if mode == "auto":
                    chosen.append(line)
                print(f"  {'auto' if mode == 'auto' else f'--threads {mode}':<12} {seconds:7.1f} s")
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    return {"medians": medians, "chosen": chosen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--seeds", default="3")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", type=int, default=1, help="busy-loop processes beside it")
    parser.add_argument("--conditions", default="idle,busy", help="idle, busy or both")
    args = parser.parse_args()

    arguments = ["--dataset", args.dataset, "--seeds", args.seeds, "--epochs", str(args.epochs)]
    arguments += ["--quiet", "--no-download"]
    if args.limit_train:
        arguments += ["--limit-train", str(args.limit_train)]
    cpus = available_cpus()
    counts = list(range(1, cpus + 1))
    print(
        f"{_cpu_model_name()}, {cpus} CPUs available, python {platform.python_version()}; "
        f"actlab compare {' '.join(arguments)}"
    )
    results = {}
    for condition in args.conditions.split(","):
        busy = []
        if condition == "busy":
            busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.busy)]
        load = os.getloadavg()[0]
        print(f"{condition}{f' ({args.busy} busy-loop process)' if busy else ''}, "
              f"load average before: {load:.1f}:")  # fmt: skip
        try:
            results[condition] = measure(arguments, counts, args.repeats)
        finally:
            for process in busy:
                process.kill()
                process.wait()
    print()
    print(
        "condition  "
        + "  ".join(f"--threads {n:<3}" for n in counts)
        + "  auto     auto/best  auto chose"
    )
    for condition, result in results.items():
        medians = result["medians"]
        best = min(medians[n] for n in counts)
        cells = "  ".join(f"{medians[n]:>9.1f} s " for n in counts)
        print(
            f"{condition:<10} {cells}  {medians['auto']:6.1f} s  {medians['auto'] / best:8.2f}x  "
            f"{', '.join(result['chosen'])}"
        )


if __name__ == "__main__":
    main()
