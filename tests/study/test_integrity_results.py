"""Wrong results that used to pass silently (issue 11): an unfinished run reported as final,
an activation dropped by a control character in its spec, a study resumed on other data,
an empty test split reported as measured, and `report -o` clobbering or renaming files."""

import numpy as np
import pandas as pd
import pytest
from fixtures.cli import run_cli
from fixtures.data import write_npz
from fixtures.run_dir import write_run

from actlab.config import ExperimentConfig
from actlab.errors import ConfigError, SpecError
from actlab.report import render as report
from actlab.report import stats
from actlab.study import store
from actlab.study import unfinished as completion
from actlab.study.driver import run_study

pytestmark = pytest.mark.usefixtures("one_thread", "no_charts")


def interrupted_study(config: ExperimentConfig, out, after_epoch: int, data) -> None:
    """Train `config` into `out` and stop it (as Ctrl-C would) after `after_epoch`."""

    def stop(result) -> None:
        if result.epoch == after_epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(config, out=out, dataset=data, on_epoch=stop)


# --- unfinished runs ----------------------------------------------------------------------


def test_completion_finds_the_comparable_epoch_and_what_is_missing():
    members = [{"depth": None, "activation": a, "lr": 1e-3, "seed": s}
               for a in ("relu", "tanh", "sigmoid") for s in (0, 1)]  # fmt: skip
    rows = []
    for m in members:
        last = {("relu", 1): 2, ("sigmoid", 0): 0}.get((m["activation"], m["seed"]), 4)
        for epoch in range(1, last + 1):
            diverged = m["activation"] == "tanh" and m["seed"] == 0 and epoch == 1
            rows.append({**m, "epoch": epoch, "status": "diverged" if diverged else "ok"})
            if diverged:
                break
    metrics = pd.DataFrame(rows)
    (state,) = completion.completion(metrics, members, planned=4)
    # tanh seed 0 diverged at epoch 1 (stopped on purpose), sigmoid seed 0 has no row
    assert state.epoch == 2 and not state.finished
    assert state.missing == (
        "relu lr=0.001 seed 1 (epochs 3-4)",
        "sigmoid lr=0.001 seed 0 (no epoch)",
    )
    kept = completion.at_comparable_epoch(metrics, [state])
    assert kept["epoch"].max() == 2 and len(kept) == len(metrics[metrics["epoch"] <= 2])
    text = completion.unfinished_text([state])
    assert text.startswith("unfinished: epoch 2 of 4, missing relu lr=0.001 seed 1 (epochs 3-4)")
    finished = completion.completion(metrics[metrics["activation"] == "tanh"], members[2:4], 4)
    assert finished[0].finished and completion.unfinished_text(finished) == ""


def test_report_of_an_interrupted_run_is_labelled_and_compares_the_last_common_epoch(tmp_path):
    data_path = write_npz(tmp_path / "d.npz", 192, 64)
    config = ExperimentConfig(dataset=data_path, activations=("relu", "tanh"), seeds=(0, 1),
                              epochs=4, hidden=(8,), threads=1, diagnostics=False)  # fmt: skip
    from actlab.study.driver import load_study_dataset

    data = load_study_dataset(config)
    interrupted_study(config, tmp_path / "run", after_epoch=2, data=data)
    run = store.read_run(tmp_path / "run")
    analysis = report.analyse(run)
    assert analysis.unfinished == "unfinished: epoch 2 of 4, missing " + ", ".join(
        f"{a} lr=0.001 seed {s} (epochs 3-4)" for s in (0, 1) for a in ("relu", "tanh")
    )
    # the oracle: each arm's mean over seeds of test_acc at epoch 2
    at_2 = run.metrics[run.metrics["epoch"] == 2].groupby("activation")["test_acc"].mean()
    summary = analysis.summary.set_index("arm")
    for activation, mean in at_2.items():
        assert summary.loc[activation, "final_test_acc_mean"] == pytest.approx(mean, abs=1e-12)
    paragraphs = report.verdict(analysis)
    assert paragraphs[0].startswith("This study is unfinished: epoch 2 of 4")
    assert "compared at epoch 2" in paragraphs[0]
    header, rows = report.summary_rows(analysis)
    assert "last common epoch test acc %" in header and "final test acc %" not in header
    member_header, member_cells = report.member_rows(analysis)
    assert {r[-1] for r in member_cells} == {"unfinished: epoch 2 of 4"}
    html_path = report.write_run_report(run)
    html = html_path.read_text(encoding="utf-8")
    assert "UNFINISHED: EPOCH 2 OF 4" in html and "last common epoch test acc" in html
    assert "unfinished: epoch 2 of 4" in html_path.with_suffix(".md").read_text(encoding="utf-8")
    code, out, err = run_cli("report", str(tmp_path / "run"))
    assert code == 0 and err.startswith("actlab: note: unfinished: epoch 2 of 4, missing relu")


def test_merging_a_finished_and_an_unfinished_seed_pairs_like_epochs(tmp_path):
    finished = write_run(tmp_path / "a", seeds=(0, 1), epochs=4)
    unfinished = write_run(tmp_path / "b", seeds=(2,), epochs=4)
    metrics = pd.read_csv(unfinished / store.METRICS_FILE)
    metrics[metrics["epoch"] <= 2].to_csv(unfinished / store.METRICS_FILE, index=False)
    (unfinished / store.DIAGNOSTICS_FILE).unlink()
    run = store.merge_runs([finished, unfinished])
    analysis = report.analyse(run)
    assert analysis.unfinished.startswith("unfinished: epoch 2 of 4, missing relu lr=0.001 seed 2")
    assert set(analysis.results["epochs"]) == {2}
    # oracle: paired differences of test_acc at epoch 2, seeds 0, 1, 2
    at_2 = run.metrics[run.metrics["epoch"] == 2].pivot_table(
        index="seed", columns="activation", values="test_acc"
    )
    pair = analysis.pairs.set_index(["a", "b"]).loc[("relu", "tanh")]
    expected = stats.sign_flip_test(at_2["relu"] - at_2["tanh"])  # the verdict's test
    assert pair["n"] == 3 and pair["mean_diff"] == pytest.approx(expected["mean_diff"], abs=1e-12)
    assert pair["p"] == pytest.approx(expected["p"], rel=1e-9)


def test_a_finished_run_is_not_labelled(tmp_path):
    analysis = report.analyse(store.read_run(write_run(tmp_path / "run", seeds=(0, 1))))
    assert analysis.unfinished == ""
    assert not report.verdict(analysis)[0].startswith("This study is unfinished")
    assert "final test acc %" in report.summary_rows(analysis)[0]


# --- control characters and CSV ---------------------------------------------------------


@pytest.mark.parametrize("char", ["\n", "\f", "\x1e", "\r", "\x00", "\u2028"])
def test_control_characters_in_a_spec_are_refused_up_front(char):
    spec = f"expr:x *{char} sigmoid(x)"
    with pytest.raises(ConfigError, match="control characters"):
        ExperimentConfig(activations=("relu", spec))
    with pytest.raises(SpecError, match="control characters"):
        from actlab.catalog import registry as catalog

        catalog.resolve(spec)
    code, out, err = run_cli("show", spec)
    assert code == 2 and err.count("\n") == 1 and "control characters" in err


def test_metrics_are_read_with_a_csv_reader(tmp_path):
    """A quoted field may hold commas, quotes and newlines; a line splitter would cut the
    row in two and lose the member (the bug); the CSV reader keeps it."""
    run = write_run(tmp_path / "run", activations=("relu", "tanh"), seeds=(0,), epochs=2)
    frame = pd.read_csv(run / store.METRICS_FILE, dtype={"activation": str})
    frame.loc[frame["activation"] == "tanh", "activation"] = 'odd, "name"\nsecond line'
    frame.to_csv(run / store.METRICS_FILE, index=False)
    metrics = store.read_run(run).metrics
    assert len(metrics) == 4 and store.read_run(run).problems == []
    assert set(metrics["activation"]) == {"relu", 'odd, "name"\nsecond line'}


# --- data fingerprint ---------------------------------------------------------------------


def test_a_study_is_not_resumed_on_other_data(tmp_path):
    data = tmp_path / "d.npz"
    argv = ["compare", "--threads", "1", "--no-report", "--quiet", "--seeds", "1", "--dataset", f"npz:{data}",
            "--epochs", "1", "--hidden", "4", "--activations", "relu", "--out", str(tmp_path / "run")]  # fmt: skip
    write_npz(data, 64, 16, seed=0)
    assert run_cli(*argv)[0] == 0
    before = (tmp_path / "run" / store.METRICS_FILE).read_text()
    write_npz(data, 96, 16, seed=0)  # other sizes
    code, _, err = run_cli(*argv)
    assert code == 2 and "started on other data (train_size 64 there, 96 now" in err
    write_npz(data, 64, 16, seed=1)  # same sizes, other content
    code, _, err = run_cli(*argv)
    assert code == 2 and "started on other data (fingerprint 'sha256:" in err
    assert err.count("\n") == 1
    assert (tmp_path / "run" / store.METRICS_FILE).read_text() == before
    write_npz(data, 64, 16, seed=0)  # the original data again: resumes (already complete)
    code, out, _ = run_cli(*argv)
    assert code == 0 and "already complete" in out


def test_the_fingerprint_covers_every_split(tmp_path):
    from actlab.data.datasets import load_dataset

    data = tmp_path / "d.npz"
    write_npz(data, 64, 16)
    base = load_dataset(f"npz:{data}", val_size=8).fingerprint()
    assert base == load_dataset(f"npz:{data}", val_size=8).fingerprint()
    assert base != load_dataset(f"npz:{data}", val_size=9).fingerprint()
    assert base != load_dataset(f"npz:{data}", val_size=8, limit_test=15).fingerprint()
    arrays = dict(np.load(data))
    arrays["y_test"] = np.roll(arrays["y_test"], 1)  # the same classes, another order
    np.savez(data, **arrays)
    assert base != load_dataset(f"npz:{data}", val_size=8).fingerprint()


def test_an_empty_split_is_refused_not_reported_as_zero(tmp_path):
    x = np.zeros((16, 4, 4), np.uint8)
    y = np.arange(16) % 2
    np.savez(tmp_path / "e.npz", x_train=x, y_train=y, x_test=x[:0], y_test=y[:0])
    code, _, err = run_cli("compare", "--no-report", "--seeds", "1", "--dataset", f"npz:{tmp_path / 'e.npz'}",
                           "--out", str(tmp_path / "run"))  # fmt: skip
    assert code == 2 and "the test split is empty" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


# --- report -o ----------------------------------------------------------------------------


def test_report_output_must_be_html_and_never_clobbers_a_users_markdown(tmp_path):
    run = write_run(tmp_path / "run", seeds=(0, 1))
    code, _, err = run_cli("report", str(run), "-o", str(tmp_path / "x.txt"))
    assert code == 2 and "ending in .html" in err
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "x.txt").exists()

    paper = tmp_path / "paper.md"
    paper.write_text("# My paper\n\nweeks of work\n")
    code, _, err = run_cli("report", str(run), "-o", str(tmp_path / "paper.html"))
    assert code == 2 and "paper.md exists and was not written by actlab" in err
    assert paper.read_text() == "# My paper\n\nweeks of work\n"
    assert not (tmp_path / "paper.html").exists()

    code, out, _ = run_cli("report", str(run), "-o", str(tmp_path / "out" / "r.html"))
    assert code == 0
    assert out.splitlines()[-2:] == [
        str(tmp_path / "out" / "r.html"),
        str(tmp_path / "out" / "r.md"),
    ]
    # a report actlab wrote is replaced by the next one
    assert run_cli("report", str(run), "-o", str(tmp_path / "out" / "r.html"))[0] == 0
