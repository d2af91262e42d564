"""What each activation costs: time per element, memory for backward, achieved bandwidth.

Time: ``torch.utils.benchmark.Timer`` (the fastest of many short blocks) of the forward
``f(x)`` and of forward+backward ``torch.autograd.grad(f(x), x, g)``, on a tensor of
``size`` elements shaped (size / 1024, 1024) (a batch of 1024-wide layers), with torch's
current number of threads (``OMP_NUM_THREADS`` sets it). Reported in ns per element and as a ratio to ReLU (``nn.ReLU``, timed at
the start and the end of the same run; the median of those and of a "relu" row counts).

Bandwidth: an elementwise forward reads x and writes y (2 tensors); forward+backward also
reads the upstream gradient and a saved tensor and writes the input gradient (5 tensors in
all, a lower bound: some backward formulas read both x and y). Achieved GB/s is that
traffic over the time, shown next to the GB/s of a plain copy ``y.copy_(x)`` of the same
size timed in the same run. An op near the copy's GB/s is memory-bound (its arithmetic is
free); one far below it is compute-bound. Only for tensors of at least 4 MiB, bigger than a
core's L2 cache (below that, both numbers measure caches and call overheads); an activation
that returns its input unchanged (``linear``) moves no bytes and is marked ``no-op``.

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

import math
import os
import statistics
import time
import weakref
from collections.abc import Callable, Sequence
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
MIN_RUN_TIME = 0.1  # seconds per timing; the whole catalog runs in well under a minute
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
    "tensor_bytes", "error",
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
) -> list[dict]:
    """One row per activation (columns: :data:`COLUMNS`). Unknown names raise the catalog's
    one-line error before anything is timed."""
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

    copy_seconds = _time("y.copy_(x)", {"x": x, "y": torch.empty_like(x)}, min_run_time)
    copy_gbps = 2 * tensor_bytes / copy_seconds / 1e9
    relu_times = [_times(nn.ReLU(), x, grad_out, min_run_time)]
    rows = []
    for spec, (module, inplace_module) in zip(specs, activations, strict=True):
        row = dict.fromkeys(COLUMNS)
        row |= {"name": spec, "device": device, "dtype": dtype, "size": x.numel()}
        row |= {"threads": torch.get_num_threads(), "tensor_bytes": tensor_bytes}
        row |= {"copy_gbps": copy_gbps}
        try:
            row |= _measure(
                module.to(device=device, dtype=torch_dtype), x, grad_out, row, min_run_time
            )
        except RuntimeError as error:  # e.g. an op without a bfloat16 kernel
            row["error"] = str(error).splitlines()[0]
        if row["error"] is None and isinstance(module, nn.ReLU) and not module.inplace:
            relu_times.append(
                (row["fwd_ns"] * 1e-9 * x.numel(), row["fwdbwd_ns"] * 1e-9 * x.numel())
            )
        if row["error"] is None and inplace_module is not None:
            inplace_module = inplace_module.to(device=device, dtype=torch_dtype)
            try:
                fwd_peak, kept, peak = measure_memory(inplace_module, x, grad_out)
                row["inplace_fwd_peak_bytes"] = fwd_peak
                row["inplace_kept_bytes"] = kept
                row["inplace_peak_bytes"] = peak
            except RuntimeError as error:  # inplace that autograd refuses
                row["error"] = f"inplace: {str(error).splitlines()[0]}"
        rows.append(row)
    # The ReLU reference: the median of its timings at the start, at the end and in a
    # "relu" row, so that the ratios do not hang on one disturbed measurement.
    relu_times.append(_times(nn.ReLU(), x, grad_out, min_run_time))
    relu_fwd = statistics.median(fwd for fwd, _ in relu_times)
    relu_fwdbwd = statistics.median(fwdbwd for _, fwdbwd in relu_times)
    for row in rows:
        if row["fwd_ns"] is not None:
            row["fwd_vs_relu"] = row["fwd_ns"] * 1e-9 * x.numel() / relu_fwd
            row["fwdbwd_vs_relu"] = row["fwdbwd_ns"] * 1e-9 * x.numel() / relu_fwdbwd
    return rows


def _measure(
    module: nn.Module, x: Tensor, grad_out: Tensor, row: dict, min_run_time: float
) -> dict:
    """Times, bandwidth and memory of one activation (the columns it fills in a row)."""
    fwd, fwdbwd = _times(module, x, grad_out, min_run_time)
    out = {"fwd_ns": fwd * 1e9 / x.numel(), "fwdbwd_ns": fwdbwd * 1e9 / x.numel()}
    with torch.no_grad():
        no_op = module(x).data_ptr() == x.data_ptr()  # e.g. linear returns x itself
    tensor_bytes = row["tensor_bytes"]
    if no_op:
        out["bound"] = "no-op"
    elif tensor_bytes >= BANDWIDTH_MIN_BYTES:
        out["fwd_gbps"] = 2 * tensor_bytes / fwd / 1e9
        out["fwdbwd_gbps"] = 5 * tensor_bytes / fwdbwd / 1e9
        memory_bound = out["fwd_gbps"] >= MEMORY_BOUND * row["copy_gbps"]
        out["bound"] = "memory" if memory_bound else "compute"
    fwd_peak, kept, peak = measure_memory(module, x, grad_out)
    return out | {"fwd_peak_bytes": fwd_peak, "kept_bytes": kept, "peak_bytes": peak}


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
    fastest short block is the estimate least disturbed by them (a median, or a long block
    as ``blocked_autorange`` uses, moves with their load)."""
    timer = benchmark.Timer(stmt=stmt, globals=names, num_threads=torch.get_num_threads())
    first = timer.timeit(3).mean  # also the warm-up: page faults, allocator growth, lazy init
    number = max(1, math.ceil(1e-3 / max(first, 1e-9)))
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < min_run_time:
        times.append(timer.timeit(number).mean)
    return min(times)


def _times(module: nn.Module, x: Tensor, grad_out: Tensor, min_run_time: float):
    """(forward seconds, forward+backward seconds) of ``module`` on ``x``."""
    leaf = x.detach().requires_grad_(True)
    names = {"f": module, "x": x, "leaf": leaf, "g": grad_out, "torch": torch}
    with torch.no_grad():
        forward = _time("f(x)", names, min_run_time)
    both = _time("torch.autograd.grad(f(leaf), leaf, g)", names, min_run_time)
    return forward, both


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
        lines.append(
            f"{row['name']:<36} {row['fwd_ns']:>9.3f} {row['fwdbwd_ns']:>9.3f} "
            f"{row['fwd_vs_relu']:>8.2f} {row['fwdbwd_vs_relu']:>8.2f} {gbps:>8} "
            f"{row['bound'] or '-':>7}  {memory(''):>12}  {memory('inplace_'):>12}"
        )
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
        return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    except OSError:  # not available on this platform
        return "load average unknown"


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
