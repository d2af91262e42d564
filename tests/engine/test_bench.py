"""actlab bench: rows, memory accounting on cases with a known answer, the CLI."""

import pandas as pd
import pytest
import torch
from torch import nn

from actlab.catalog import registry as catalog
from actlab.cli.main import main
from actlab.engine import bench
from actlab.engine.bench import (
    COLUMNS,
    StorageCounter,
    default_specs,
    format_table,
    measure_memory,
    run_bench,
)
from actlab.errors import ActlabError, UnknownActivationError

SIZE = 64 * 1024
TENSOR_BYTES = SIZE * 4


def test_storage_counter_counts_new_storages_only():
    x = torch.randn(1000)
    with StorageCounter() as counter:
        y = x * 2  # new: 4000 bytes
        z = y.view(10, 100)  # a view: no new storage
        y.mul_(3)  # inplace: no new storage
        w = x + 1  # new: 4000 bytes
        del w  # freed
        assert counter.current == 4000
    assert counter.peak == 8000
    assert z.shape == (10, 100)


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SIZE // 1024, 1024, generator=generator)
    return x, torch.randn(x.shape, generator=generator)


def test_relu_keeps_only_its_output_and_inplace_halves_the_forward_peak(inputs):
    x, grad_out = inputs
    fwd_peak, kept, peak = measure_memory(nn.ReLU(), x, grad_out)
    # h = x.clone() and y = relu(h) are both alive in the forward; relu saves y only.
    assert (fwd_peak, kept) == (2 * TENSOR_BYTES, TENSOR_BYTES)
    inplace = measure_memory(nn.ReLU(inplace=True), x, grad_out)
    assert inplace[:2] == (TENSOR_BYTES, TENSOR_BYTES)  # y is h
    # The backward adds the gradient tensor either way.
    assert peak == inplace[2] == 2 * TENSOR_BYTES


def test_gelu_keeps_its_input_for_backward(inputs):
    x, grad_out = inputs
    _, kept, _ = measure_memory(nn.GELU(), x, grad_out)
    assert kept == 2 * TENSOR_BYTES  # y, and h saved for gelu's backward


def test_leaky_relu_inplace_keeps_less(inputs):
    # leaky_relu saves its input; leaky_relu_ saves its output, which is the same storage.
    x, grad_out = inputs
    assert measure_memory(nn.LeakyReLU(), x, grad_out)[1] == 2 * TENSOR_BYTES
    assert measure_memory(nn.LeakyReLU(inplace=True), x, grad_out)[1] == TENSOR_BYTES


@pytest.mark.slow
def test_run_bench_rows():
    rows = run_bench(["relu", "tanh", "leaky_relu(negative_slope=0.2)"], SIZE, min_run_time=0.01)
    assert [row["name"] for row in rows] == ["relu", "tanh", "leaky_relu(negative_slope=0.2)"]
    for row in rows:
        assert set(row) == set(COLUMNS)
        assert row["error"] is None
        assert row["fwd_ns"] > 0 and row["fwdbwd_ns"] > 0
        assert row["fwd_vs_relu"] > 0
        assert row["size"] == SIZE and row["tensor_bytes"] == TENSOR_BYTES
        assert row["copy_gbps"] > 0
        # 256 KiB is below the bandwidth threshold: no GB/s claim for cache-sized tensors.
        assert row["fwd_gbps"] is None and row["bound"] is None
    relu, tanh, leaky = rows
    assert relu["inplace_peak_bytes"] is not None and leaky["inplace_kept_bytes"] is not None
    assert tanh["inplace_peak_bytes"] is None  # tanh has no inplace variant
    table = format_table(rows)
    assert "leaky_relu(negative_slope=0.2)" in table and "2/2/1" in table


def test_run_bench_reports_bandwidth_for_large_tensors():
    (row,) = run_bench(["relu"], 1 << 21, min_run_time=0.01)  # 8 MiB
    assert row["fwd_gbps"] > 0 and row["fwdbwd_gbps"] > 0
    # On a busy machine the figures may be flagged instead of classified.
    assert row["bound"] in ("memory", "compute") or (row["bound"] == "?" and row["warning"])


# --- robust timing: scripted clocks stand in for the machine --------------------------------

LARGE = 1 << 20  # 4 MiB of float32: bandwidth is reported
UNDISTURBED = {  # seconds per run on a quiet machine
    "copy": 1.0e-3,
    ("ReLU", "fwd"): 1.0e-3,
    ("ReLU", "fwdbwd"): 2.5e-3,
    ("Tanh", "fwd"): 2.0e-3,
    ("Tanh", "fwdbwd"): 5.0e-3,
}


def scripted_time(truth, slow_calls=(), factor=10.0):
    """A stand-in for bench._time: the seconds of `truth` for each statement, `factor`
    times more for the calls whose index is in `slow_calls` (another process was busy)."""
    calls = []

    def fake(stmt, names, min_run_time):
        if stmt in ("x.clone()", "y.copy_(x)"):  # the copy reference, now and before
            key = "copy"
        else:
            kind = "fwd" if stmt == "f(x)" else "fwdbwd"
            key = (type(names["f"]).__name__, kind)
        seconds = truth[key] if not callable(truth[key]) else truth[key](len(calls))
        seconds *= factor if len(calls) in slow_calls else 1.0
        calls.append(key)
        return seconds

    return fake


def test_a_busy_moment_does_not_fall_on_one_measurement(monkeypatch):
    # The machine is busy for the first three timings of the run, then quiet: timed one
    # after the other, the copy alone would be slow and ReLU would "beat" it 10x.
    monkeypatch.setattr(bench, "_time", scripted_time(UNDISTURBED, slow_calls={0, 1, 2}))
    relu, tanh = run_bench(["relu", "tanh"], LARGE)
    tensor_bytes = LARGE * 4
    assert relu["copy_gbps"] == pytest.approx(2 * tensor_bytes / 1e-3 / 1e9)
    assert relu["fwd_gbps"] == pytest.approx(relu["copy_gbps"])
    assert tanh["fwd_ns"] == pytest.approx(2e-3 * 1e9 / LARGE)
    assert tanh["fwd_vs_relu"] == pytest.approx(2.0) and tanh["fwdbwd_vs_relu"] == pytest.approx(
        2.0
    )
    assert relu["warning"] is None and tanh["warning"] is None
    assert relu["bound"] == "memory" and tanh["fwd_gbps"] == pytest.approx(relu["copy_gbps"] / 2)


def test_figures_beyond_the_copy_bandwidth_are_flagged_not_classified(monkeypatch, capsys):
    impossible = {**UNDISTURBED, ("ReLU", "fwd"): 0.5e-3}  # 2x the copy's bandwidth
    monkeypatch.setattr(bench, "_time", scripted_time(impossible))
    relu, tanh = run_bench(["relu", "tanh"], LARGE)
    assert "forward" in relu["warning"] and "exceeds the copy's" in relu["warning"]
    assert relu["bound"] == "?" and tanh["warning"] is None
    table = format_table([relu, tanh])
    assert "relu (!)" in table and "disturbed timings" in table and "exceeds the copy's" in table


def test_forward_backward_faster_than_forward_is_flagged(monkeypatch):
    backwards = {**UNDISTURBED, ("Tanh", "fwdbwd"): 1.5e-3}  # less than its forward's 2e-3
    monkeypatch.setattr(bench, "_time", scripted_time(backwards))
    _, tanh = run_bench(["relu", "tanh"], LARGE)
    assert "forward+backward timed faster than the forward alone" in tanh["warning"]


def test_rounds_that_disagree_are_flagged(monkeypatch):
    unsteady = {**UNDISTURBED, ("Tanh", "fwd"): lambda call: 2e-3 * (1 + 2 * (call % 2))}
    monkeypatch.setattr(bench, "_time", scripted_time(unsteady))
    _, tanh = run_bench(["relu", "tanh"], LARGE, repeats=4)
    assert "forward times vary by" in tanh["warning"]


def test_default_specs_are_every_elementwise_entry():
    specs = default_specs()
    elementwise = [entry for entry in catalog.list_activations() if entry.elementwise]
    assert len(specs) == len(elementwise)
    assert "relu" in specs and not any(spec.startswith("softmax") for spec in specs)
    for spec in specs:
        catalog.resolve(spec)  # every default resolves (threshold gets its required params)


def test_bench_refuses_bad_input():
    with pytest.raises(UnknownActivationError, match="rleu"):
        run_bench(["rleu"], SIZE)
    with pytest.raises(ActlabError, match="--size"):
        run_bench(["relu"], 0)
    with pytest.raises(ActlabError, match="drop inplace=True"):
        run_bench(["relu(inplace=True)"], SIZE)


def test_an_op_that_fails_is_a_row_with_its_error():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("no kernel for this dtype\nsecond line")

    catalog.register("broken_for_bench", module=Broken, overwrite=True)
    try:
        (row,) = run_bench(["broken_for_bench"], SIZE, min_run_time=0.01)
    finally:
        catalog.unregister("broken_for_bench")
    assert row["error"] == "no kernel for this dtype" and row["fwd_ns"] is None
    assert "error: no kernel for this dtype" in format_table([row])


@pytest.mark.slow
def test_cli_bench_writes_csv(tmp_path, capsys):
    output = tmp_path / "bench.csv"
    assert main(["bench", "relu", "sigmoid", "--size", str(SIZE), "-o", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "sigmoid" in printed and "copy" in printed and f"wrote {output}" in printed
    assert "mem x tensor" in printed and "in multiples of the input tensor (" in printed
    frame = pd.read_csv(output)
    assert list(frame.columns) == list(COLUMNS)
    assert frame["name"].tolist() == ["relu", "sigmoid"]


def test_cli_bench_user_errors_exit_2(tmp_path, capsys):
    assert main(["bench", "rleu", "--size", "1024", "-o", str(tmp_path / "b.csv")]) == 2
    assert capsys.readouterr().err.startswith("actlab: error: ")
    missing = tmp_path / "no" / "b.csv"
    assert main(["bench", "relu", "--size", "1024", "-o", str(missing)]) == 2
