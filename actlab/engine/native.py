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

import contextlib
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


def _compile(compiler: str, target: Path) -> tuple[Path | None, str | None]:
    """Compile SOURCE into the cache as ``TARGET_STEM-DIGEST.so``, the digest being the
    SHA-256 of the library's bytes (recorded in its name, so that the digest and the file
    are renamed into place as one); (the path, None), or (None, why it failed)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        return None, f"cannot write {target.parent} ({exc.strerror}); set XDG_CACHE_HOME"
    try:
        last = ""
        for extra in ((OPENMP,), ()):  # without OpenMP where libgomp is missing
            command = [compiler, *FLAGS, *extra, str(SOURCE), "-o", tmp, "-lm"]
            result = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if result.returncode == 0:
                built = _digest_path(target, _file_digest(Path(tmp)))
                os.replace(tmp, built)
                return built, None
            last = (result.stderr.strip().splitlines() or ["exit " + str(result.returncode)])[-1]
        return None, last
    except (OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


DIGEST_CHARS = 32  # of the SHA-256, in the library's file name


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:DIGEST_CHARS]


def _digest_path(target: Path, digest: str) -> Path:
    return target.with_name(f"{target.stem}-{digest}.so")


def _cached(target: Path) -> Path | None:
    """A cached library for `target` whose bytes match the digest in its name; one that
    does not (truncated, bit flips, replaced) is removed unopened: a damaged library must
    never be dlopen'ed (a truncated one kills the process with SIGBUS)."""
    for path in sorted(target.parent.glob(f"{target.stem}-*.so")):
        digest = path.stem.rpartition("-")[2]
        try:
            good = len(digest) == DIGEST_CHARS and _file_digest(path) == digest
        except OSError:
            good = False
        if good:
            return path
        with contextlib.suppress(OSError):
            path.unlink()
    return None


def _open(path: Path) -> tuple[ctypes.CDLL | None, str | None]:
    """dlopen a verified library, declare its three functions and run the known-answer
    test; (the library, None), or (None, why it cannot be used)."""
    try:
        lib = ctypes.CDLL(str(path))
        i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        lib.act_forward.argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr, cint]
        lib.act_backward.argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, cint]
        lib.xent_forward_backward.argtypes = [i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, cint]
        for fn in (lib.act_forward, lib.act_backward, lib.xent_forward_backward):
            fn.restype = None
    except (OSError, AttributeError) as exc:
        return None, f"loading {path} failed: {str(exc).splitlines()[0] if str(exc) else exc}"
    wrong = known_answer_failures(lib)
    if wrong:
        return None, f"{path.name} fails its known-answer test ({', '.join(wrong)})"
    return lib, None


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use; None where they cannot be (see `status`).

    A cached library is used only when its bytes match the digest recorded when it was
    built and it passes the known-answer test (every kernel against the torch ops, see
    `known_answer_failures`); otherwise it is removed and built again, and where the new
    one fails too, the step runs its torch kernels and `status` says why."""
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
    target = _cache_dir() / f"native_step-{cache_key(source, compiler, version)}.so"
    path, why = _cached(target), None
    if path is not None:
        lib, why = _open(path)
        if lib is not None:
            _status = f"on ({Path(compiler).name}, {path})"
            return lib
        with contextlib.suppress(OSError):
            path.unlink()  # a library that loads but computes wrongly: built again
    built, error = _compile(compiler, target)
    if built is None:
        _why_off = f"compiling {SOURCE.name} failed: {error}"
        return None
    if built == path:  # the compiler made the same bytes again: dlopen would reuse them
        _why_off = why or f"{built.name} could not be used"
        return None
    lib, why = _open(built)
    if lib is None:
        _why_off = why
        return None
    _status = f"on ({Path(compiler).name}, {built})"
    return lib


def cache_key(source: str, compiler: str, version: str) -> str:
    """The cache key of a build: the source, the compiler, the flags and the CPU."""
    return hashlib.sha256(
        "\0".join([source, compiler, version, " ".join(FLAGS), _cpu_signature()]).encode()
    ).hexdigest()[:16]


# --- the known-answer test ------------------------------------------------------------------

# One representative of each code, with parameters that exercise them (the test's torch
# op is the closed form the torch fallback runs, actlab.catalog.closed_forms).
KNOWN_ANSWER_CASES: tuple[tuple[str, dict], ...] = (
    ("linear", {}),
    ("relu", {}),
    ("leaky_relu", {"negative_slope": 0.2}),
    ("hard_tanh", {"min_val": -0.5, "max_val": 2.0}),
    ("sigmoid", {}),
    ("tanh", {}),
    ("silu", {}),
    ("elu", {"alpha": 1.3}),
    ("gelu", {"approximate": "none"}),
    ("gelu", {"approximate": "tanh"}),
    ("hard_sigmoid", {}),
    ("hard_swish", {}),
    ("softplus", {"beta": 2.0, "threshold": 15.0}),
    ("mish", {}),
    ("soft_shrink", {"lambd": 0.5}),
    ("hard_shrink", {"lambd": 0.5}),
)
# The kernels are within a few ulp of float64 (tests/engine/test_native.py); a wrong kernel is
# off by far more. Relative to the value, with an absolute floor for values near 0.
KAT_RTOL, KAT_ATOL = 1e-5, 1e-6


def known_answer_failures(lib) -> list[str]:
    """Run every kernel of `lib` once on a small input and compare with the torch ops;
    the names of the kernels that disagree (empty: all agree). Takes about a millisecond."""
    names = [
        name if p.get("approximate") != "tanh" else "gelu_tanh" for name, p in KNOWN_ANSWER_CASES
    ]
    coded = [code_and_params(name, p) for name, p in KNOWN_ANSWER_CASES]
    K, units, B = len(coded), 1, 48
    z = torch.linspace(-6.0, 6.0, B).repeat(K, units, 1).contiguous()
    z[:, :, :4] = torch.tensor([0.0, 0.25, -0.3, 20.0])  # inside the thresholds and beyond
    codes = torch.tensor([c[0] for c in coded], dtype=torch.int32)
    params = torch.tensor([c[1:] for c in coded], dtype=torch.float32)
    h, dz, db = torch.empty_like(z), torch.empty_like(z), torch.empty(K, units)
    dh = torch.linspace(0.5, 1.5, B).expand(K, units, B).contiguous()
    lib.act_forward(K, units, B, codes.data_ptr(), params.data_ptr(), z.data_ptr(), h.data_ptr(), 1)
    lib.act_backward(
        K, units, B, codes.data_ptr(), params.data_ptr(), dh.data_ptr(), z.data_ptr(),
        h.data_ptr(), dz.data_ptr(), db.data_ptr(), 1,
    )  # fmt: skip
    wrong = []
    for k, (name, p) in enumerate(KNOWN_ANSWER_CASES):
        form = closed_forms.closed_form(name)
        want_h = form.forward(z[k], p, torch.empty_like(z[k]))
        want_dz = form.backward(dh[k], z[k], want_h, p, torch.empty_like(z[k]))
        if not torch.allclose(h[k], want_h, rtol=KAT_RTOL, atol=KAT_ATOL):
            wrong.append(f"{names[k]} forward")
        if not torch.allclose(dz[k], want_dz, rtol=KAT_RTOL, atol=KAT_ATOL):
            wrong.append(f"{names[k]} backward")
        elif not torch.allclose(db[k], want_dz.sum(-1), rtol=KAT_RTOL, atol=1e-4):
            wrong.append(f"{names[k]} bias gradient")
    return wrong + _xent_failures(lib)


def _xent_failures(lib) -> list[str]:
    """xent_forward_backward against F.cross_entropy and its gradient."""
    K, C, B = 2, 5, 7
    generator = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(K, C, B, generator=generator)).contiguous()
    t = torch.randint(0, C, (B,), generator=generator)
    targets = t.expand(K, B).contiguous()  # (K, B): each member's targets
    d, db = torch.empty_like(x), torch.empty(K, C)
    losses, correct = torch.empty(K), torch.zeros(K, dtype=torch.int64)
    lib.xent_forward_backward(
        K, C, B, x.data_ptr(), targets.data_ptr(), d.data_ptr(), db.data_ptr(), losses.data_ptr(),
        correct.data_ptr(), 1,
    )  # fmt: skip
    logits = x.transpose(1, 2)  # (K, B, C)
    want_loss = torch.stack([torch.nn.functional.cross_entropy(logits[k], t) for k in range(K)])
    onehot = torch.nn.functional.one_hot(t, C).T.float()
    want_d = (torch.softmax(x, dim=1) - onehot) / B
    hits = (logits.argmax(-1) == t).sum(-1)
    ok = (
        torch.allclose(losses, want_loss, rtol=KAT_RTOL, atol=KAT_ATOL)
        and torch.allclose(d, want_d, rtol=KAT_RTOL, atol=KAT_ATOL)
        and torch.allclose(db, want_d.sum(-1), rtol=KAT_RTOL, atol=1e-5)
        and torch.equal(correct, hits)
    )
    return [] if ok else ["cross-entropy"]


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
