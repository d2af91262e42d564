"""What each activation costs: time per element, memory for backward, achieved bandwidth.

Time: ``torch.utils.benchmark.Timer`` (the fastest of at least 5 short blocks) of the
forward ``f(x)`` and of forward+backward ``torch.autograd.grad(f(x), x, g)``, on a tensor of
``size`` elements shaped (size / 1024, 1024) (a batch of 1024-wide layers), with torch's
current number of threads (``OMP_NUM_THREADS`` sets it). Every quantity (the copy, ReLU's
two times, each activation's two) is timed once per round, in ``repeats`` rounds one after
the other, and reported as the median of its rounds: all of them see the same mix of
machine load, so that a busy minute does not fall on one of them only. Reported in ns per
element and as a ratio to ReLU (``nn.ReLU``, timed in every round; the ratio is taken
within each round, then the median of the rounds).

A row is flagged (``warning``) when its figures cannot come from an undisturbed
measurement: a GB/s more than 10% above the copy's (the op moves at least as many bytes),
forward+backward faster than the forward alone, or rounds that differ by more than 50%.
A flagged op is not classified memory- or compute-bound (``?``).

Bandwidth: an elementwise forward reads x and writes y (2 tensors); forward+backward also
reads the upstream gradient and a saved tensor and writes the input gradient (5 tensors in
all, a lower bound: some backward formulas read both x and y). Achieved GB/s is that
traffic over the time, shown next to the GB/s of a plain copy ``x.clone()`` of the same
size timed in the same rounds: it reads x and allocates and writes a new tensor as an
activation's forward does, with no arithmetic, so no elementwise op can beat it. (A copy
into a preallocated tensor, ``y.copy_(x)``, measured up to 1.8x slower than ``clone`` on
the development Xeon, where the freshly allocated output is still in cache: as the
reference it would flag undisturbed ops.) An op near the copy's GB/s is memory-bound (its
arithmetic is free); one far below it is compute-bound. Only for tensors of at least 4 MiB,
bigger than a core's L2 cache (below that, both numbers measure caches and call overheads);
an activation that returns its input unchanged (``linear``) moves no bytes and is marked
``no-op``.

Memory, in multiples of the tensor's size, for one step that stands for a layer: ``h =
x.clone()`` (the layer output that feeds the activation), ``y = f(h)``, ``del h``, then
``torch.autograd.grad(y, x, g)``; x and g exist before and are not counted:

- ``fwd_peak``: the most bytes alive during the forward;
- ``kept``: bytes still alive after the forward (y and what f saved for backward), which
  is what grows with depth in a real network;
- ``peak``: the most bytes alive during forward+backward.

On CPU the bytes are counted exactly by a ``TorchDispatchMode`` that adds the size of every
new tensor storage an op creates and subtracts it when the storage is freed (a finalizer
on the storage); allocator caching and rounding are not included. On CUDA they are
``torch.cuda.max_memory_allocated`` / ``memory_allocated`` deltas. Each is measured without
and, where the catalog says the activation supports it, with ``inplace=True``.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils import benchmark
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from actlab.errors import ConfigError

# 4M elements, 16 MiB in float32: past the L2 caches, but x and y together may still sit
# in a server's L3 (32 MiB on the dev box), so "copy GB/s" is then partly cache bandwidth.
# From 32 MiB up, glibc maps every new tensor fresh and page faults dominate every op.
DEFAULT_SIZE = 1 << 22
MIN_RUN_TIME = 0.02  # seconds per timing and round; the whole catalog runs in about a minute
REPEATS = 5  # interleaved rounds; every time is the median of its rounds
BANDWIDTH_SLACK = 1.1  # an op that moves as many bytes as the copy cannot be >10% faster
SPREAD_WARNING = 0.5  # rounds of one time that differ by more than 50% of it: flagged
BANDWIDTH_MIN_BYTES = 4 << 20  # report GB/s only for tensors of at least 4 MiB
MEMORY_BOUND = 0.5  # at least half the copy's GB/s: memory-bound
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
COLUMNS = (
    "name", "device", "dtype", "size", "threads",
    "fwd_ns", "fwdbwd_ns", "fwd_vs_relu", "fwdbwd_vs_relu",
    "fwd_gbps", "fwdbwd_gbps", "copy_gbps", "bound",
    "fwd_peak_bytes", "kept_bytes", "peak_bytes",
    "inplace_fwd_peak_bytes", "inplace_kept_bytes", "inplace_peak_bytes",
    "tensor_bytes", "warning", "error",
)  # fmt: skip


def default_specs() -> list[str]:
    """Every elementwise catalog entry, as a spec string that resolves."""
    from actlab.catalog import registry as catalog

    return [entry.example for entry in catalog.list_activations() if entry.elementwise]


def run_bench(
    specs: Sequence[str] | None = None,
    size: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    *,
    min_run_time: float = MIN_RUN_TIME,
    repeats: int = REPEATS,
) -> list[dict]:
    """One row per activation (columns: :data:`COLUMNS`). Unknown names raise the catalog's
    one-line error before anything is timed. Every time is the median over ``repeats``
    interleaved rounds (see the module docstring); figures that no undisturbed measurement
    can give are flagged in the row's ``warning``."""
    from actlab.catalog import registry as catalog

    size = DEFAULT_SIZE if size is None else size
    if size < 1:
        raise ConfigError(f"--size must be at least 1 element, got {size}")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu")
    specs = default_specs() if not specs else list(specs)
    activations = [_activation_pair(catalog, spec) for spec in specs]  # fail early
    torch_dtype = DTYPES[dtype]
    from actlab.engine.memory import check_tensor_memory

    # x, grad_out, their float32 sources, and the outputs and gradients of one timed step
    check_tensor_memory(size, 4, 8, torch.device(device), f"--size {size}")
    shape = (size // 1024, 1024) if size % 1024 == 0 else (size,)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    x = x.to(torch_dtype)
    grad_out = torch.randn(shape, generator=generator, device=device).to(torch_dtype)
    tensor_bytes = x.numel() * x.element_size()

    rows, modules = [], {}
    for index, (spec, (module, inplace_module)) in enumerate(zip(specs, activations, strict=True)):
        row = dict.fromkeys(COLUMNS)
        row |= {"name": spec, "device": device, "dtype": dtype, "size": x.numel()}
        row |= {"threads": torch.get_num_threads(), "tensor_bytes": tensor_bytes}
        module = module.to(device=device, dtype=torch_dtype)
        inplace_module = None if inplace_module is None else inplace_module.to(device, torch_dtype)
        try:
            row |= _memory_columns(module, inplace_module, x, grad_out)
            modules[index] = module
        except RuntimeError as error:  # e.g. an op without a bfloat16 kernel
            row["error"] = str(error).splitlines()[0]
        rows.append(row)
    times = _interleaved_times(modules, x, grad_out, min_run_time, repeats)
    copy_gbps = 2 * tensor_bytes / statistics.median(times["copy"]) / 1e9
    for index, row in enumerate(rows):
        row["copy_gbps"] = copy_gbps
        if index in modules:
            try:
                row |= _time_columns(times, index, row, modules[index], x)
            except RuntimeError as error:
                row["error"] = str(error).splitlines()[0]
    return rows


def _memory_columns(
    module: nn.Module, inplace_module: nn.Module | None, x: Tensor, grad_out: Tensor
) -> dict:
    """The memory columns of one row: the module, then its inplace variant if any."""
    fwd_peak, kept, peak = measure_memory(module, x, grad_out)
    out = {"fwd_peak_bytes": fwd_peak, "kept_bytes": kept, "peak_bytes": peak}
    if inplace_module is not None:
        try:
            fwd_peak, kept, peak = measure_memory(inplace_module, x, grad_out)
        except RuntimeError as error:  # inplace that autograd refuses
            return out | {"error": f"inplace: {str(error).splitlines()[0]}"}
        out |= {"inplace_fwd_peak_bytes": fwd_peak, "inplace_kept_bytes": kept}
        out["inplace_peak_bytes"] = peak
    return out


def _interleaved_times(
    modules: Mapping[int, nn.Module],
    x: Tensor,
    grad_out: Tensor,
    min_run_time: float,
    repeats: int,
) -> dict:
    """Seconds per run of every subject in each of ``repeats`` rounds: the copy, ReLU's
    forward and forward+backward (the reference), and each module's two; within a round
    every subject is timed once, so that all of them see the same mix of machine load."""
    leaf = x.detach().requires_grad_(True)
    base = {"x": x, "leaf": leaf, "g": grad_out, "torch": torch}
    subjects: dict[object, tuple[str, dict, bool]] = {"copy": ("x.clone()", base, True)}
    for key, module in [("relu", nn.ReLU()), *modules.items()]:
        names = {**base, "f": module}
        subjects[(key, "fwd")] = ("f(x)", names, True)
        subjects[(key, "fwdbwd")] = ("torch.autograd.grad(f(leaf), leaf, g)", names, False)
    times: dict[object, list[float]] = {key: [] for key in subjects}
    for _ in range(max(1, repeats)):
        for key, (stmt, names, no_grad) in subjects.items():
            if key in times and isinstance(times[key], RuntimeError):
                continue
            try:
                with torch.no_grad() if no_grad else contextlib.nullcontext():
                    times[key].append(_time(stmt, names, min_run_time))
            except RuntimeError as error:  # reported in the module's row
                times[key] = error
    return times


def _time_columns(times: Mapping, index: int, row: dict, module: nn.Module, x: Tensor) -> dict:
    """Times, ratios to ReLU, bandwidth and warnings of one row, from the interleaved
    rounds: medians of the rounds, and ratios taken within each round before the median."""
    fwd_rounds, both_rounds = times[(index, "fwd")], times[(index, "fwdbwd")]
    for rounds in (fwd_rounds, both_rounds):
        if isinstance(rounds, RuntimeError):
            raise rounds
    fwd, fwdbwd = statistics.median(fwd_rounds), statistics.median(both_rounds)
    out = {"fwd_ns": fwd * 1e9 / x.numel(), "fwdbwd_ns": fwdbwd * 1e9 / x.numel()}
    relu_fwd, relu_both = times[("relu", "fwd")], times[("relu", "fwdbwd")]
    out["fwd_vs_relu"] = statistics.median(a / b for a, b in zip(fwd_rounds, relu_fwd, strict=True))
    out["fwdbwd_vs_relu"] = statistics.median(
        a / b for a, b in zip(both_rounds, relu_both, strict=True)
    )
    with torch.no_grad():
        no_op = module(x).data_ptr() == x.data_ptr()  # e.g. linear returns x itself
    warnings = []
    if no_op:
        out["bound"] = "no-op"
    elif row["tensor_bytes"] >= BANDWIDTH_MIN_BYTES:
        out["fwd_gbps"] = 2 * row["tensor_bytes"] / fwd / 1e9
        out["fwdbwd_gbps"] = 5 * row["tensor_bytes"] / fwdbwd / 1e9
        memory_bound = out["fwd_gbps"] >= MEMORY_BOUND * row["copy_gbps"]
        out["bound"] = "memory" if memory_bound else "compute"
        for part, label in (("fwd", "forward"), ("fwdbwd", "forward+backward")):
            if out[f"{part}_gbps"] > BANDWIDTH_SLACK * row["copy_gbps"]:
                warnings.append(
                    f"{label} {out[f'{part}_gbps']:.1f} GB/s exceeds the copy's "
                    f"{row['copy_gbps']:.1f} GB/s measured in the same run"
                )
                out["bound"] = "?"
    if not no_op and fwdbwd < fwd:
        warnings.append("forward+backward timed faster than the forward alone")
    for rounds, label in ((fwd_rounds, "forward"), (both_rounds, "forward+backward")):
        spread = (max(rounds) - min(rounds)) / statistics.median(rounds)
        if len(rounds) > 1 and spread > SPREAD_WARNING:
            warnings.append(f"{label} times vary by {spread:.0%} across {len(rounds)} rounds")
    out["warning"] = "; ".join(warnings) or None
    return out


def _activation_pair(catalog, spec: str) -> tuple[nn.Module, nn.Module | None]:
    """The module for ``spec`` and, when the entry supports it, its inplace variant."""
    entry, params = catalog.resolve(spec)
    if params.get("inplace"):
        raise ConfigError(
            f"bench measures the inplace variant itself; drop inplace=True from {spec!r}"
        )
    module = catalog.get(spec)
    inplace_module = catalog.get(spec, inplace=True) if entry.inplace else None
    return module, inplace_module


def _time(stmt: str, names: dict, min_run_time: float) -> float:
    """Seconds per run of ``stmt`` with torch's current number of threads: the fastest of
    at least 5 blocks of ~1 ms or more, timed with ``torch.utils.benchmark.Timer`` for
    ``min_run_time`` seconds. On a shared machine other processes only add time, so the
    fastest short block is the estimate least disturbed by them within this window; the
    rounds of :func:`run_bench` then spread the windows over the whole run."""
    timer = benchmark.Timer(stmt=stmt, globals=names, num_threads=torch.get_num_threads())
    first = timer.timeit(3).mean  # also the warm-up: page faults, allocator growth, lazy init
    number = max(1, math.ceil(1e-3 / max(first, 1e-9)))
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < min_run_time:
        times.append(timer.timeit(number).mean)
    return min(times)


# === memory ===============================================================================


def measure_memory(module: nn.Module, x: Tensor, grad_out: Tensor) -> tuple[int, int, int]:
    """(forward peak, kept after forward, forward+backward peak) in bytes, for one layer
    step ``y = f(x.clone())`` and its backward; see the module docstring."""
    leaf = x.detach().requires_grad_(True)
    if leaf.is_cuda:
        return _cuda_memory(module, leaf, grad_out)
    with StorageCounter() as counter:
        y = _forward(module, leaf)
        fwd_peak, kept = counter.peak, counter.current
        torch.autograd.grad(y, leaf, grad_out)
        peak = counter.peak
        del y
    return fwd_peak, kept, peak


def _forward(module: nn.Module, leaf: Tensor) -> Tensor:
    hidden = leaf.clone()  # a layer output: a non-leaf that inplace activations may overwrite
    return module(hidden)  # `hidden` dies here unless f saved it for backward


def _cuda_memory(module: nn.Module, leaf: Tensor, grad_out: Tensor) -> tuple[int, int, int]:
    torch.cuda.synchronize(leaf.device)
    base = torch.cuda.memory_allocated(leaf.device)
    torch.cuda.reset_peak_memory_stats(leaf.device)
    y = _forward(module, leaf)
    torch.cuda.synchronize(leaf.device)
    fwd_peak = torch.cuda.max_memory_allocated(leaf.device) - base
    kept = torch.cuda.memory_allocated(leaf.device) - base
    torch.autograd.grad(y, leaf, grad_out)
    torch.cuda.synchronize(leaf.device)
    peak = torch.cuda.max_memory_allocated(leaf.device) - base
    return fwd_peak, kept, peak


class StorageCounter(TorchDispatchMode):
    """Counts the bytes of tensor storages created inside the ``with`` block that are still
    alive (``current``) and the most ever alive at once (``peak``). Storages that existed
    before (inputs, parameters) are not counted; an inplace op creates no storage."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, int] = {}

    def __torch_dispatch__(self, func: Callable, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if _dense(t)
        }
        for tensor in tree_flatten(out)[0]:
            if not _dense(tensor):
                continue
            storage = tensor.untyped_storage()
            pointer = storage.data_ptr()
            if pointer == 0 or pointer in inputs or pointer in self._live:
                continue
            self._live[pointer] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, pointer)
        return out

    def _free(self, pointer: int) -> None:
        self.current -= self._live.pop(pointer, 0)


def _dense(value: object) -> bool:
    return isinstance(value, Tensor) and value.layout == torch.strided


# === table ================================================================================


def format_table(rows: Sequence[dict]) -> str:
    """A fixed-width text table of :func:`run_bench` rows. Memory is in multiples of the
    input tensor's size (the header says "x tensor"; `describe_run` gives that size in
    MiB): forward peak / forward+backward peak / kept for backward."""
    header = (
        f"{'activation':<36} {'fwd ns/el':>9} {'f+b ns/el':>9} {'fwd/relu':>8} {'f+b/relu':>8} "
        f"{'fwd GB/s':>8} {'bound':>7}  {'mem x tensor':>12}  {'inplace mem':>12}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        if row["fwd_ns"] is None:
            lines.append(f"{row['name']:<36} error: {row['error']}")
            continue
        size = row["tensor_bytes"]

        def memory(prefix: str, row=row, size=size) -> str:
            fwd_peak = row[f"{prefix}fwd_peak_bytes"]
            peak, kept = row[f"{prefix}peak_bytes"], row[f"{prefix}kept_bytes"]
            if peak is None:
                return "-"
            return f"{fwd_peak / size:.3g}/{peak / size:.3g}/{kept / size:.3g}"

        gbps = "-" if row["fwd_gbps"] is None else f"{row['fwd_gbps']:.1f}"
        name = f"{row['name']} (!)" if row["warning"] else row["name"]
        lines.append(
            f"{name:<36} {row['fwd_ns']:>9.3f} {row['fwdbwd_ns']:>9.3f} "
            f"{row['fwd_vs_relu']:>8.2f} {row['fwdbwd_vs_relu']:>8.2f} {gbps:>8} "
            f"{row['bound'] or '-':>7}  {memory(''):>12}  {memory('inplace_'):>12}"
        )
    flagged = [row for row in rows if row["warning"]]
    if flagged:
        lines += [
            "",
            "(!) disturbed timings (another process was busy?); rerun on a quiet machine:",
        ]
        lines += [f"  {row['name']}: {row['warning']}" for row in flagged]
    return "\n".join(lines)


def describe_run(rows: Sequence[dict], seconds: float) -> str:
    """One line: what was measured, the copy reference and the wall time."""
    if not rows:
        return "no activations measured"
    first = rows[0]
    size_mib = first["tensor_bytes"] / 2**20
    return (
        "memory columns: forward peak / forward+backward peak / kept for backward, in multiples "
        f"of the input tensor ({_bytes_text(first['tensor_bytes'])}); the CSV has them in bytes\n"
        f"{len(rows)} activations, {first['size']} {first['dtype']} elements ({size_mib:.1f} MiB) "
        f"on {first['device']} with {first['threads']} threads, torch {torch.__version__}; "
        f"copy {first['copy_gbps']:.1f} GB/s; {seconds:.1f} s; {_load()}"
    )


def _bytes_text(count: float) -> str:
    """4096 -> '4.0 KiB', 4194304 -> '4.0 MiB'."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count:.0f} B"


def _load() -> str:
    """The 1-minute load average: other processes on a shared machine inflate every time."""
    try:
        load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    except OSError:  # not available on this platform
        return "load average unknown"
    busy = " (busy: other processes share the CPUs, times are inflated)" if load > cpus else ""
    return f"load average {load:.1f} on {cpus} CPUs{busy}"


def check_output(path: str | Path) -> Path:
    """The CSV path, refused (one line) when its folder does not exist."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {path}: folder {path.parent} does not exist; pick -o")
    return path


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Write the rows (columns :data:`COLUMNS`) as CSV; returns the path."""
    path = check_output(path)
    pd.DataFrame(list(rows), columns=list(COLUMNS)).to_csv(path, index=False)
    return path


__all__ = [
    "check_output",
    "write_csv",
    "COLUMNS",
    "DEFAULT_SIZE",
    "StorageCounter",
    "default_specs",
    "describe_run",
    "format_table",
    "measure_memory",
    "run_bench",
]
