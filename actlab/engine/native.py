"""The compiled kernels of the CPU training step (actlab/engine/native_step.c), built on first use.

The stacked MLP's hand-written step (actlab.engine.mlp_step) spends as long on its fifty small
elementwise kernels as on its GEMMs at the classic protocol's size: each torch op costs a
few microseconds of dispatch for under a microsecond of arithmetic. native_step.c fuses
them into three C functions (the activations of a layer, their derivatives with the bias
gradient, and the cross-entropy with its gradient and accuracy count), called through
ctypes with pointers prepared once.

The source is compiled by the machine's C compiler (``$CC``, else ``cc``) with
``-O3 -march=native -ffp-contract=off -fno-trapping-math -fopenmp`` (without
-fno-trapping-math gcc leaves the branch-free exp and tanh loops scalar, 9x slower; no
-ffast-math, so the arithmetic stays IEEE), in about a second, into
``$XDG_CACHE_HOME/actlab/native`` (default ``~/.cache/actlab/native``), keyed by the
source, the compiler, the flags and the CPU; later runs load the cached library (3 ms).
OpenMP binds to the libgomp that torch has loaded, so the kernels share torch's threads;
where libgomp is missing the source is compiled without OpenMP.

Where there is no compiler, the build fails, the cache cannot be written, the device is
not a CPU, or ``ACTLAB_NATIVE=0`` is set, the step runs its torch kernels instead (the
fallback, tested against the same oracles), and `status` says why. The kernels follow
torch's formulas (the piecewise ones bit for bit); exp, log and tanh are Cephes's and
erfc Numerical Recipes' (sigmoid within 2.4 ulp of float64, tanh 1.3, elu 2.1, mish 3.4,
gelu 6.6, as torch's own are within 2.5, 0.6, 2.0, 2.6 and, where 1 + erf cancels, no
digit at all), so
results agree with the torch kernels to float rounding, not bit for bit
(benchmarks/native_kernels.py times both).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from actlab.catalog import closed_forms

SOURCE = Path(__file__).with_name("native_step.c")
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math", "-fPIC", "-shared")
OPENMP = "-fopenmp"
MAX_BATCH = 4096  # xent_forward_backward keeps three per-sample rows of this length
# An activation's code in native_step.c, and its two parameters from the catalog's.
CODES: dict[str, int] = {
    "linear": 0,
    "relu": 1,
    "leaky_relu": 2,
    "hard_tanh": 3,
    "relu6": 3,
    "sigmoid": 4,
    "tanh": 5,
    "silu": 6,
    "elu": 7,
    "selu": 7,
    "celu": 7,
    "gelu": 8,  # 9 with approximate="tanh"
    "gelu_tanh": 9,
    "hard_sigmoid": 10,
    "hard_swish": 11,
    "softplus": 12,
    "mish": 13,
    "soft_shrink": 14,
    "hard_shrink": 15,
}
# Below this many values a kernel runs on one thread (an OpenMP fork costs microseconds).
PARALLEL_FROM = 1 << 13

_status = ""  # "on (compiler, library)" once loaded
_why_off = ""  # why the kernels are not in use


def code_and_params(name: str, params: dict) -> tuple[int, float, float, float] | None:
    """(code, p0, p1, p2) of catalog activation `name` with `params`, or None when
    native_step.c does not implement it."""
    if name not in CODES:
        return None
    if name == "leaky_relu":
        return CODES[name], float(params["negative_slope"]), 0.0, 0.0
    if name == "hard_tanh":
        return CODES[name], float(params["min_val"]), float(params["max_val"]), 0.0
    if name == "relu6":
        return CODES[name], 0.0, 6.0, 0.0
    if name in ("elu", "selu", "celu"):  # aten.elu's (alpha * scale, input scale, scale)
        alpha, scale, input_scale = closed_forms.elu_args(name, params)
        alpha_scale = float(np.float32(alpha) * np.float32(scale))  # in float, as aten's
        return CODES[name], alpha_scale, input_scale, scale
    if name == "softplus":
        return CODES[name], float(params["beta"]), float(params["threshold"]), 0.0
    if name in ("soft_shrink", "hard_shrink"):
        return CODES[name], float(params["lambd"]), 0.0, 0.0
    if name == "gelu" and params.get("approximate", "none") == "tanh":
        return CODES["gelu_tanh"], 0.0, 0.0, 0.0
    return CODES[name], 0.0, 0.0, 0.0


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "actlab" / "native"


def _cpu_signature() -> str:
    """The CPU's model and feature flags (-march=native compiles for them)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _compile(compiler: str, target: Path) -> str | None:
    """Compile SOURCE into `target` (atomically); None, or why it failed."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        return f"cannot write {target.parent} ({exc.strerror}); set XDG_CACHE_HOME"
    try:
        last = ""
        for extra in ((OPENMP,), ()):  # without OpenMP where libgomp is missing
            command = [compiler, *FLAGS, *extra, str(SOURCE), "-o", tmp, "-lm"]
            result = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if result.returncode == 0:
                os.replace(tmp, target)
                return None
            last = (result.stderr.strip().splitlines() or ["exit " + str(result.returncode)])[-1]
        return last
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use; None where they cannot be (see `status`)."""
    global _status, _why_off
    _status = _why_off = ""
    if os.environ.get("ACTLAB_NATIVE", "1") == "0":
        _why_off = "ACTLAB_NATIVE=0"
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        _why_off = "no C compiler found; set CC"
        return None
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        _why_off = f"{compiler}: {exc}"
        return None
    try:
        source = SOURCE.read_text()
    except (OSError, UnicodeDecodeError) as exc:  # a broken install: run the torch kernels
        _why_off = (
            f"cannot read {SOURCE} ({getattr(exc, 'strerror', None) or exc}); reinstall actlab"
        )
        return None
    key = hashlib.sha256(
        "\0".join([source, compiler, version, " ".join(FLAGS), _cpu_signature()]).encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"native_step-{key}.so"
    if not target.exists():
        error = _compile(compiler, target)
        if error is not None:
            _why_off = f"compiling {SOURCE.name} failed: {error}"
            return None
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        _why_off = f"loading {target} failed: {exc}"
        return None
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.act_forward.argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr, cint]
    lib.act_backward.argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, cint]
    lib.xent_forward_backward.argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, cint]
    for fn in (lib.act_forward, lib.act_backward, lib.xent_forward_backward):
        fn.restype = None
    _status = f"on ({Path(compiler).name}, {target})"
    return lib


def status() -> str:
    """``on (cc, library path)``, or ``off (why)``."""
    return _status if library() is not None else f"off ({_why_off})"


def why_off() -> str:
    """Why the compiled kernels are not in use ("" when they are)."""
    library()
    return _why_off


def threads_for(values: int) -> int:
    """Threads for a kernel over `values` floats: torch's count, one below PARALLEL_FROM."""
    return torch.get_num_threads() if values >= PARALLEL_FROM else 1


def usable(tensor: Tensor) -> bool:
    """Whether the kernels can run on `tensor`'s device and dtype (CPU float32)."""
    return tensor.device.type == "cpu" and tensor.dtype == torch.float32
