"""Fuzzing the edge where user input enters (issue 11): CLI arguments and expression specs.

Whatever the input, `actlab` exits 0, or writes one line on stderr and exits 2 (bad input)
or 1 (the environment), never with a traceback, and within a time bound. In-process
(`actlab.cli.main.main`), on a tiny dataset, with few examples: a net for the classes of
mistakes, cheap enough to run in every CI build.
"""

import contextlib
import io
import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actlab.catalog.expr import FUNCTIONS
from actlab.cli.main import main
from actlab.report import render as report

pytestmark = pytest.mark.usefixtures("one_thread")

TIME_BOUND_S = 60  # per example, on a busy shared 2-core machine
# More examples (and fresh ones each run) with ACTLAB_FUZZ_EXAMPLES=1000, for a deeper hunt.
EXAMPLES = int(os.environ.get("ACTLAB_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the time bound is asserted below; hypothesis' deadline flakes on a busy CPU
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize="ACTLAB_FUZZ_EXAMPLES" not in os.environ,  # CI: the same examples every run
)


def check_outcome(argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse: --help, and usage errors
            code = exit.code
    elapsed = time.perf_counter() - start
    text = err.getvalue()
    assert elapsed < TIME_BOUND_S, (argv, elapsed)
    assert "Traceback" not in text, (argv, text)
    if code == 0:
        return
    if code == 3 and argv[0] == "compare":  # finished, some members diverged (documented)
        assert "some members diverged" in out.getvalue(), (argv, out.getvalue())
        return
    assert code in (1, 2), (argv, code, text)
    lines = [line for line in text.splitlines() if not line.startswith("actlab: note: ")]
    assert len(lines) == 1 and text.endswith("\n"), (argv, text)
    assert ": error: " in lines[0], (argv, text)


# --- expression specs ------------------------------------------------------------------------

NAMES = [*FUNCTIONS, "x", "pi", "e", "y", "__import__", "open", "lambda", "exec", "inf", "nan"]


def expressions() -> st.SearchStrategy[str]:
    numbers = st.one_of(
        st.integers(-(10**400), 10**400).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.sampled_from(["1e400", "0", "0.0", "-0", "1e-400", "0x10", "1_0", "1j"]),
    )
    leaves = st.one_of(numbers, st.sampled_from(NAMES))

    def grow(inner):
        return st.one_of(
            st.tuples(
                inner,
                st.sampled_from(["+", "-", "*", "/", "**", "//", "%", "@", "<", "and"]),
                inner,
            ).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(st.sampled_from(NAMES), st.lists(inner, max_size=4)).map(
                lambda t: f"{t[0]}({', '.join(t[1])})"
            ),
            inner.map(lambda a: f"-{a}"),
            inner.map(lambda a: f"{a}[0]"),
            inner.map(lambda a: f"{a}.real"),
        )

    formulas = st.recursive(leaves, grow, max_leaves=8)
    junk = st.text(
        alphabet=st.sampled_from(list("x()+-*/., 0123456789e_'\"[]{}:;=$\\\n\f\x1e\x00é")),
        max_size=30,
    )
    return st.one_of(formulas, junk)


@FUZZ
@given(formula=expressions())
def test_fuzzed_expression_specs_end_in_0_or_one_line(formula):
    check_outcome(["show", f"expr:{formula}"])


# --- CLI arguments -----------------------------------------------------------------------------

ODD_VALUES = ["0", "-1", "1", "2", "1e999", "nan", "inf", "-inf", "x", "", "9" * 30, "1,2", ",",
              "relu", "expr:1", "\n", "a\x1eb", "$a^b$", "/proc/x", "../x", "🙂"]  # fmt: skip
SMALL_INTS = ["0", "-3", "1", "2", "x", "", "1,1", "99999999999999999999"]
COMPARE_OPTIONS = {
    "--seeds": ["0", "1", "2", "0,0", "0,5", "-1", "100001", "x", "1,", "99999999999999999999"],
    "--lr": ["1e-3", "0", "-1", "nan", "inf", "1e-3,1e-3", "1e-3,3e-3", "x"],
    "--activations": [
        "relu",
        "RELU,relu",
        "relu,tanh",
        "expr:x*sigmoid(x)",
        "expr:1",
        "softmax",
        "softmax(dim=-1)",
        "prelu(num_parameters=3)",
        "rrelu",
        "rleu",
        "relu,,tanh",
        "glu",
        "elu(alpha=1e308)",
        "expr:exp(exp(exp(x)))",
    ],  # fmt: skip
    "--epochs": SMALL_INTS,
    "--hidden": ["4", "0", "4,4", "-4", "x", "99999999999", "4,"],
    "--depths": ["1", "0", "1,2", "x"],
    "--batch-size": ["1", "0", "-1", "100000", "x"],
    "--dropout": ["0", "0.5", "1", "-0.1", "nan"],
    "--val-size": ["0", "0.5", "1", "10", "100000", "nan", "-1", "0.999999"],
    "--limit-train": SMALL_INTS,
    "--limit-test": SMALL_INTS,
    "--threads": ["0", "1", "-1", "100000", "x"],
    "--device": ["cpu", "cuda", "cuda:3", "mps", "meta", "x", ""],
    "--model": ["mlp", "cnn", "x"],
    "--optimizer": ["adam", "sgd", "adamw", "x"],
    "--weight-decay": ["0", "-1", "nan", "1e308"],
    "--momentum": ["0.9", "inf", "-1"],
    "--init": ["pytorch", "glorot", "x"],
    "--select": ["auto", "final", "val", "x"],
    "--output-activation": ["linear", "softmax", "relu", ""],
    # Ray (issue 14): malformed, or nothing listening (never "auto": a cluster may be running).
    "--ray": ["x", "127.0.0.1:1", ""],
    "--shard-size": ["0", "2", "x"],
    "--checkpoint-every": ["0", "1", "x"],
}
FLAGS = ["--standardize", "--init-gain", "--no-diagnostics", "--resume", "--no-download"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (48, 4, 4), dtype=np.uint8)
    y = rng.integers(0, 3, 48)
    np.savez(folder / "d.npz", x_train=x, y_train=y, x_test=x[:12], y_test=y[:12])
    return folder


@pytest.fixture(autouse=True)
def no_charts(monkeypatch):
    monkeypatch.setattr(report, "charts", lambda analysis: [])
    monkeypatch.setattr(report, "_activation_figure", lambda analysis: None)


@FUZZ
@given(
    options=st.dictionaries(
        st.sampled_from(sorted(COMPARE_OPTIONS)),
        st.integers(0, 100),
        max_size=5,
    ),
    flags=st.lists(st.sampled_from(FLAGS), max_size=2, unique=True),
    dataset=st.sampled_from(["npz:{d}", "npz:{d}x", "digits2", "idx:{d}", "npz:", "cifar10"]),
    out=st.sampled_from(["{d}/runs/a", "{d}/runs/b", "{d}/d.npz/run", "/proc/actlab", "{d}"]),
)
def test_fuzzed_compare_arguments_end_in_0_or_one_line(workdir, options, flags, dataset, out):
    argv = ["compare", "--quiet", "--no-report", "--no-download", "--threads", "1",
            "--epochs", "1", "--hidden", "4", "--seeds", "1"]  # fmt: skip
    for option, pick in options.items():
        values = COMPARE_OPTIONS[option]
        argv += [option, values[pick % len(values)]]
    argv += flags
    argv += ["--dataset", dataset.format(d=workdir / "d.npz"), "--out", out.format(d=workdir)]
    argv = [a.replace("{d}", str(workdir)) for a in argv]
    check_outcome(argv)


@FUZZ
@given(
    verb=st.sampled_from(["show", "plot", "report", "bench", "datasets", "list", "nope"]),
    words=st.lists(
        st.sampled_from(
            [
                *ODD_VALUES,
                "-o",
                "--range",
                "--derivatives",
                "--size",
                "--dtype",
                "--device",
                "--data-dir",
            ]
        ),
        max_size=5,
    ),  # fmt: skip
)
def test_fuzzed_other_verbs_end_in_0_or_one_line(workdir, verb, words):
    if verb == "list" and not words:
        return  # a full `actlab list` measures every activation: seconds, covered elsewhere
    argv = [verb, "relu", *words] if verb == "bench" else [verb, *words]  # never the catalog
    if verb in ("plot", "bench"):
        argv += ["-o", str(workdir / ("p.png" if verb == "plot" else "b.csv"))]
    if verb == "bench":
        argv += ["--size", "4096"] if "--size" not in words else []
    check_outcome(argv)
