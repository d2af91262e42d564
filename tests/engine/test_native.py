"""The compiled CPU kernels (actlab/engine/native_step.c) against torch's own ops, autograd and a
float64 reference; their fallback; and the whole step trained both ways."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures.data import write_npz
from fixtures.engine import make_data, small_config

from actlab.catalog.closed_forms import closed_form
from actlab.config import ExperimentConfig
from actlab.engine import native
from actlab.engine.trainer import Trainer
from actlab.study.driver import run_study

pytestmark = pytest.mark.usefixtures("one_thread")

if native.library() is None:
    if shutil.which("cc") or shutil.which("gcc"):
        pytest.fail(f"a C compiler is here but the kernels are not: {native.status()}")
    pytest.skip(f"no compiled kernels here: {native.status()}", allow_module_level=True)
LIB = native.library()

# name, params, torch forward
ACTIVATIONS = {
    "linear": ({}, lambda x: x.clone()),
    "relu": ({}, torch.relu),
    "leaky_relu": ({"negative_slope": 0.2}, lambda x: F.leaky_relu(x, 0.2)),
    "relu6": ({}, F.relu6),
    "hard_tanh": ({"min_val": -0.5, "max_val": 2.0}, lambda x: F.hardtanh(x, -0.5, 2.0)),
    "sigmoid": ({}, torch.sigmoid),
    "tanh": ({}, torch.tanh),
    "silu": ({}, F.silu),
    "elu": ({"alpha": 1.3}, lambda x: F.elu(x, 1.3)),
    "selu": ({}, F.selu),
    "celu": ({"alpha": 0.7}, lambda x: F.celu(x, 0.7)),
    "gelu": ({"approximate": "none"}, F.gelu),
    "gelu_tanh": ({}, lambda x: F.gelu(x, approximate="tanh")),
    "hard_sigmoid": ({}, F.hardsigmoid),
    "hard_swish": ({}, F.hardswish),
    "softplus": ({"beta": 2.0, "threshold": 15.0}, lambda x: F.softplus(x, 2.0, 15.0)),
    "mish": ({}, F.mish),
    "soft_shrink": ({"lambd": 0.5}, lambda x: F.softshrink(x, 0.5)),
    "hard_shrink": ({"lambd": 0.5}, lambda x: F.hardshrink(x, 0.5)),
}
PIECEWISE_LINEAR = ("linear", "relu", "leaky_relu", "relu6", "hard_tanh", "hard_sigmoid")
PIECEWISE = (*PIECEWISE_LINEAR, "hard_swish", "soft_shrink", "hard_shrink")
SMOOTH = ("sigmoid", "tanh", "silu", "elu", "selu", "celu", "gelu", "gelu_tanh", "softplus", "mish")


def reference(name: str, x: torch.Tensor) -> torch.Tensor:
    """The activation in float64."""
    alpha = {"elu": 1.3, "celu": 0.7, "selu": 1.6732632423543772848170429916717}.get(name)
    if name in ("elu", "selu", "celu"):
        scale = 1.0507009873554804934193349852946 if name == "selu" else 1.0
        c = 1 / alpha if name == "celu" else 1.0
        return torch.where(x > 0, scale * x, alpha * scale * torch.expm1(x * c))
    if name == "gelu":
        return x * 0.5 * torch.special.erfc(-x / 2**0.5)
    if name == "softplus":  # beta 2, threshold 15
        return torch.where(2 * x > 15, x, torch.log1p(torch.exp(2 * x)) / 2)
    if name == "mish":
        return x * torch.tanh(torch.log1p(torch.exp(x)))
    if name == "gelu_tanh":  # x (1 + tanh u) / 2 = x sigmoid(2u): no cancellation near -1
        return x * torch.sigmoid(2 * (2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3))
    return {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "silu": F.silu}[name](x)


SPECIAL = [0.0, -0.0, 1e-30, -1e-30, 0.5, 0.625, -0.625, 6.0, -0.5, 2.0, 30.0, -30.0]
SPECIAL += [87.0, 88.5, 88.8, 89.0, 104.0, -87.0, -87.5, -88.8, -89.0, -104.0, -200.0, 200.0]
SPECIAL += [float("inf"), float("-inf"), float("nan")]


def values(n: int = 200_000) -> torch.Tensor:
    """A dense grid over [-30, 30], both signs of a log grid down to 1e-30, edge cases."""
    logs = torch.logspace(-30, 2, n // 4)
    return torch.cat([torch.linspace(-30, 30, n // 2), logs, -logs, torch.tensor(SPECIAL)])


def codes_for(names, params_of=None):
    coded = [native.code_and_params(n, (params_of or {}).get(n, ACTIVATIONS[n][0])) for n in names]
    codes = torch.tensor([c[0] for c in coded], dtype=torch.int32)
    params = torch.tensor([c[1:] for c in coded], dtype=torch.float32)
    return codes, params


def forward(names, z):
    """act_forward on z (K, units, B), member k with activation names[k]."""
    codes, params = codes_for(names)
    h = torch.empty_like(z)
    K, units, B = z.shape
    LIB.act_forward(K, units, B, codes.data_ptr(), params.data_ptr(), z.data_ptr(),
                    h.data_ptr(), native.threads_for(z.numel()))  # fmt: skip
    return h


def backward(names, dh, z, h):
    codes, params = codes_for(names)
    dz, db = torch.empty_like(z), torch.empty(z.shape[:2])
    K, units, B = z.shape
    LIB.act_backward(K, units, B, codes.data_ptr(), params.data_ptr(), dh.data_ptr(),
                     z.data_ptr(), h.data_ptr(), dz.data_ptr(), db.data_ptr(),
                     native.threads_for(z.numel()))  # fmt: skip
    return dz, db


def ulps(a: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """|a - reference| in units of the float32 spacing at the reference (float64)."""
    spacing = np.spacing(np.abs(reference.float().numpy())).astype(np.float64)
    return (a.double() - reference).abs() / torch.from_numpy(spacing)


@pytest.mark.parametrize("name", PIECEWISE)
def test_piecewise_activations_equal_torch_bit_for_bit(name):
    x = values()
    h = forward([name], x.view(1, 1, -1)).view(-1)
    torch.testing.assert_close(h, ACTIVATIONS[name][1](x), rtol=0, atol=0, equal_nan=True)
    assert torch.equal(h.isnan()[x.isnan()], x.isnan()[x.isnan()])  # NaN stays NaN


@pytest.mark.parametrize("name", SMOOTH)
def test_smooth_activations_are_as_accurate_as_torch(name):
    x = values()
    h = forward([name], x.view(1, 1, -1)).view(-1)
    expected = ACTIVATIONS[name][1](x)
    # Inf, NaN and the limits where torch's values are exact: the same (but that exp
    # underflows to 0 below -87.3, where torch's goes through denormals: mish(-89) is
    # -0 here, -2e-37 there).
    exact = ~x.isfinite() | (x.abs() >= 89)
    atol = 1e-36 if name in ("mish", "softplus") else 0.0
    torch.testing.assert_close(h[exact], expected[exact], rtol=0, atol=atol, equal_nan=True)
    # Elsewhere within 2.5 ulp of the float64 value (gelu: 7, Numerical Recipes' erfc fit;
    # mish: 3.5, exp, log1p and tanh in a row), or no further from it than torch's own
    # kernel, which loses every digit where
    # 1 + erf(x) or 1 + tanh(u) cancel, and near exp's overflow.
    truth = reference(name, x[~exact].double())
    ours, theirs = ulps(h[~exact], truth), ulps(expected[~exact], truth)
    tiny = truth.abs() < 1e-30  # no ulp to speak of: absolutely
    bound = torch.full_like(truth, {"gelu": 7.0, "gelu_tanh": 7.0, "mish": 3.5}.get(name, 2.5))
    if name == "gelu_tanh":  # x sigmoid(v): float's rounding of v = 2u costs |v| ulp
        v = 2 * (2 / torch.pi) ** 0.5 * (x[~exact].double() + 0.044715 * x[~exact].double() ** 3)
        bound += 4 * v.abs()
    assert (ours[~tiny] <= torch.maximum(theirs, bound)[~tiny]).all()
    assert (h[~exact][tiny].double() - truth[tiny]).abs().max() < 1e-30


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_derivatives_and_bias_gradient_match_autograd(name):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, 37, generator=gen) * 4
    z[0, 0, :4] = torch.tensor([0.0, -0.5, 2.0, 6.0])  # kinks: one-sided slopes as torch's
    dh = torch.randn(3, 5, 37, generator=gen)
    h = forward([name] * 3, z)
    dz, db = backward([name] * 3, dh, z, h)
    leaf = z.clone().requires_grad_(True)
    params, fn = ACTIVATIONS[name]
    (expected,) = torch.autograd.grad(fn(leaf), leaf, dh)
    if name in PIECEWISE:
        assert torch.equal(dz, expected)
    else:  # f' from y = f(z), whose last-bit differences 1 - y^2 magnifies near |y| = 1
        torch.testing.assert_close(dz, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(db, dz.sum(dim=2), rtol=1e-6, atol=1e-6)
    # The step's own torch kernels (the fallback) agree as well.
    form = closed_form(name)
    fallback = form.backward(dh, z, h, params, torch.empty_like(z))
    if name in PIECEWISE:
        assert torch.equal(dz, fallback)
    else:
        torch.testing.assert_close(dz, fallback, rtol=1e-5, atol=1e-6)


def test_each_member_gets_its_own_activation_and_threads_do_not_change_results(restore_threads):
    names = list(ACTIVATIONS)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(len(names), 64, 131, generator=gen) * 3  # 67k values: parallel kernels
    dh = torch.randn(z.shape, generator=gen)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        h = forward(names, z)
        results.append((h, *backward(names, dh, z, h)))
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)
    h = results[0][0]
    for k, name in enumerate(names):
        torch.testing.assert_close(h[k], ACTIVATIONS[name][1](z[k]), rtol=1e-5, atol=1e-6)


def xent(logits, targets):
    K, C, B = logits.shape
    d, db = torch.empty_like(logits), torch.empty(K, C)
    losses, correct = torch.empty(K), torch.full((K,), -7, dtype=torch.long)
    LIB.xent_forward_backward(K, C, B, logits.data_ptr(), targets.data_ptr(), d.data_ptr(),
                              db.data_ptr(), losses.data_ptr(), correct.data_ptr(), 1)  # fmt: skip
    return d, db, losses, correct


def test_cross_entropy_loss_gradient_and_hits_match_torch():
    gen = torch.Generator().manual_seed(2)
    K, C, B = 5, 10, 33
    logits = torch.randn(K, C, B, generator=gen) * 5  # feature-major, as the step lays out
    logits[1] *= 30  # confident: large margins
    logits[2, :, :6] = 1.5  # ties: the first largest logit is the prediction, as argmax
    targets = torch.randint(0, C, (K, B), generator=gen)
    d, db, losses, correct = xent(logits, targets)
    leaf = logits.clone().requires_grad_(True)
    expected = F.cross_entropy(
        leaf.transpose(1, 2).reshape(K * B, C), targets.reshape(K * B), reduction="none"
    )
    expected = expected.view(K, B).mean(dim=1)
    (grad,) = torch.autograd.grad(expected.sum(), leaf)
    torch.testing.assert_close(losses, expected.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(d, grad, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(db, d.sum(dim=2), rtol=1e-6, atol=1e-7)
    assert correct.tolist() == (logits.argmax(dim=1) == targets).sum(dim=1).tolist()


def test_cross_entropy_keeps_a_nan_member_to_itself():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 16, generator=gen)
    targets = torch.randint(0, 4, (3, 16), generator=gen)
    clean = xent(logits, targets)
    logits[1, 2, 5] = float("nan")
    poisoned = xent(logits, targets)
    assert poisoned[2][1].isnan() and not poisoned[2][[0, 2]].isnan().any()
    for a, b in zip(clean, poisoned, strict=True):
        assert torch.equal(a[[0, 2]], b[[0, 2]])


def test_a_label_out_of_range_makes_its_member_diverge_and_reads_nothing_outside():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 4, 16, generator=gen)
    targets = torch.randint(0, 4, (3, 16), generator=gen)
    clean = xent(logits, targets)
    targets[1, 3], targets[2, 0] = 4, -1
    _, _, losses, _ = xent(logits, targets)
    assert losses[0] == clean[2][0] and losses[1:].isnan().all()


def test_the_step_trains_alike_with_the_compiled_and_the_torch_kernels(monkeypatch):
    data = make_data()
    activations = ("relu", "sigmoid", "tanh", "gelu", "mish", "soft_shrink")
    config = small_config(activations=activations, epochs=2, dropout=0.2)
    compiled = Trainer(config, data)
    assert compiled.mlp_step.native is not None
    monkeypatch.setattr(native, "library", lambda: None)
    fallback = Trainer(config, data)
    assert fallback.mlp_step.native is None
    for _ in range(2):
        a, b = compiled.train_epoch(), fallback.train_epoch()
        for row_a, row_b in zip(a.metrics, b.metrics, strict=True):
            for key in ("train_loss", "test_loss", "test_acc"):
                assert row_a[key] == pytest.approx(row_b[key], rel=1e-4, abs=1e-3), key
    for p, q in zip(compiled.model.parameters(), fallback.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


def test_activations_without_a_kernel_run_as_torch_ops_beside_the_kernels(monkeypatch):
    monkeypatch.delitem(native.CODES, "gelu")  # every closed form has a kernel: take one away
    step = Trainer(small_config(activations=("relu", "gelu", "tanh")), make_data()).mlp_step
    assert step.native is not None and step._uncoded == [1]
    assert step.describe_kernels().endswith("; torch ops for gelu (no compiled kernel)")
    config = small_config(activations=("relu", "tanh"), batch_size=native.MAX_BATCH + 1)
    step = Trainer(config, make_data()).mlp_step
    assert step.native is not None and step._native_for(native.MAX_BATCH + 1) is None


def test_no_compiler_means_the_torch_kernels_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    native.library.cache_clear()
    try:
        assert native.library() is None
        assert native.status().startswith("off (") and "no-such-cc" in native.status()
        assert Trainer(small_config(), make_data()).mlp_step.native is None
        monkeypatch.delenv("CC")
        monkeypatch.setenv("ACTLAB_NATIVE", "0")
        native.library.cache_clear()
        assert native.library() is None and "ACTLAB_NATIVE=0" in native.status()
    finally:
        native.library.cache_clear()


def test_a_broken_build_falls_back_and_a_built_library_is_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    false = shutil.which("false")
    monkeypatch.setenv("CC", false)
    native.library.cache_clear()
    try:
        assert native.library() is None and "failed" in native.status()
        assert not list(tmp_path.rglob("*.so"))  # no half-written library left behind
        monkeypatch.delenv("CC")
        native.library.cache_clear()
        assert native.library() is not None
        (built,) = tmp_path.rglob("*.so")
        monkeypatch.setattr(native, "_compile", lambda *a: pytest.fail("compiled again"))
        native.library.cache_clear()
        assert native.library() is not None and str(built) in native.status()
    finally:
        native.library.cache_clear()


def test_a_missing_source_means_the_torch_kernels_and_says_which_file(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "SOURCE", tmp_path / "native_step.c")  # an install without it
    native.library.cache_clear()
    try:
        assert native.library() is None
        assert str(tmp_path / "native_step.c") in native.why_off()
        assert "reinstall" in native.why_off()
        assert Trainer(small_config(), make_data()).mlp_step.native is None
    finally:
        native.library.cache_clear()


def test_the_package_data_names_the_c_source():
    """A wheel carries only the non-Python files pyproject names (see .ci/run's wheel check)."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["*"]
    assert any(native.SOURCE.match(pattern) for pattern in patterns)


def test_an_unwritable_cache_says_where_and_how_out(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    native.library.cache_clear()
    try:
        assert native.library() is None
        assert str(blocker) in native.why_off() and "XDG_CACHE_HOME" in native.why_off()
        assert native.status() == f"off ({native.why_off()})"
    finally:
        native.library.cache_clear()


def test_the_study_says_which_kernels_its_step_runs(tmp_path, restore_threads):
    data = write_npz(tmp_path / "small.npz", 256, 64)
    plans = []
    for name, activations in (("run", ("relu", "gelu")), ("other", ("relu", "log_sigmoid"))):
        config = ExperimentConfig(seeds=(0,), dataset=data, activations=activations, hidden=(16,),
                                  epochs=1, threads=1, device="cpu")  # fmt: skip
        run_study(config, out=tmp_path / name, on_plan=plans.append)
    assert plans[0].kernels.startswith("compiled (native_step.c")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["environment"]["step_kernels"] == plans[0].kernels
    assert plans[1].kernels == "torch ops (an activation is differentiated by autograd)"


# --- the cache is verified before use (issue 25) ------------------------------------------


def fresh_process_status(cache: Path, **env: str) -> subprocess.CompletedProcess:
    """native.status() and one compiled step in a new process using `cache` (a damaged
    library must be caught before dlopen: dlopen'ed, it could kill the process)."""
    code = (
        "from actlab.engine import native\n"
        "print(native.status())\n"
        "lib = native.library()\n"
        "print('failures:', native.known_answer_failures(lib) if lib else None)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "XDG_CACHE_HOME": str(cache), **env},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def cached_library(cache: Path) -> Path:
    (path,) = (cache / "actlab" / "native").glob("native_step-*.so")
    return path


def build_cache(cache: Path) -> Path:
    run = fresh_process_status(cache)
    assert run.returncode == 0 and run.stdout.startswith("on ("), run.stderr
    return cached_library(cache)


def compile_into_cache(cache: Path, source: str) -> Path:
    """`source` compiled as if it were native_step.c, under the name (key and digest) the
    cache would give the real one: a library that passes the digest check."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = native.cache_key(native.SOURCE.read_text(), compiler, version)
    folder = cache / "actlab" / "native"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "source.c").write_text(source)
    built = folder / "built.so"
    command = [compiler, *native.FLAGS, str(folder / "source.c"), "-o", str(built), "-lm"]
    subprocess.run(command, check=True, capture_output=True)
    target = native._digest_path(folder / f"native_step-{key}.so", native._file_digest(built))
    built.rename(target)
    return target


@pytest.mark.parametrize("damage", ["truncated", "8 flipped bits"])
def test_a_damaged_cached_library_is_never_loaded_and_is_rebuilt(tmp_path, damage):
    library = build_cache(tmp_path)
    data = bytearray(library.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 3]  # dlopen'ed, the first call would die with SIGBUS
    else:
        middle = len(data) // 2
        for i in range(8):
            data[middle + 97 * i] ^= 1 << i
    library.write_bytes(bytes(data))
    run = fresh_process_status(tmp_path)
    assert run.returncode == 0, run.stderr  # no SIGBUS, SIGSEGV or SIGILL
    assert run.stdout.startswith("on (") and "failures: []" in run.stdout
    assert native._file_digest(cached_library(tmp_path)) in cached_library(tmp_path).name


WRONG_TANH = native.SOURCE.read_text().replace(
    "static inline float tanh_f(float x) {",
    "static inline float tanh_f(float x) {\n    x *= 1.01f;",
)


def test_a_library_that_computes_wrongly_fails_its_known_answer_test(tmp_path):
    wrong = compile_into_cache(tmp_path, WRONG_TANH)
    lib, why = native._open(wrong)
    assert lib is None and "fails its known-answer test (tanh forward" in why
    run = fresh_process_status(tmp_path)  # rebuilt from the real source, then used
    assert run.returncode == 0 and run.stdout.startswith("on (") and "failures: []" in run.stdout
    assert not wrong.exists()


def test_a_compiler_that_keeps_making_a_wrong_library_means_the_torch_kernels(tmp_path):
    wrong = compile_into_cache(tmp_path / "made", WRONG_TANH)
    fake = tmp_path / "fake-cc"  # "compiles" by copying the wrong library to -o
    fake.write_text(
        '#!/bin/sh\nif [ "$1" = --version ]; then echo fake 1; exit 0; fi\n'
        'while [ $# -gt 0 ]; do if [ "$1" = -o ]; then cp ' + str(wrong) + ' "$2"; fi; shift; done\n'
    )  # fmt: skip
    fake.chmod(0o755)
    run = fresh_process_status(tmp_path / "cache", CC=str(fake))
    assert run.returncode == 0, run.stderr
    status = run.stdout.splitlines()[0]
    assert status.startswith("off (") and "fails its known-answer test (tanh forward" in status


def test_a_library_without_the_kernels_is_one_status_line(tmp_path):
    empty = compile_into_cache(tmp_path, "int unrelated(void) { return 0; }\n")
    lib, why = native._open(empty)
    assert lib is None and "act_forward" in why and "\n" not in why
    run = fresh_process_status(tmp_path)
    assert run.returncode == 0 and run.stdout.startswith("on (") and "Traceback" not in run.stderr
