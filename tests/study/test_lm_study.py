"""A language-model study end to end: CLI, run directory, report, SIGKILL and resume,
`actlab extract`."""

import signal

import numpy as np
import pandas as pd
import pytest
import torch
from fixtures.kill import durable_calls, quiet_main, rows

from actlab.cli.main import main
from actlab.data import text
from actlab.report import loss_report, page
from actlab.study import store
from actlab.study.extract import extract_member

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def corpus(tmp_path):
    words = ["def", "return", "self", "x", "=", "(", ")", ":", "\n", "    ", "if", "for"]
    rng = np.random.default_rng(0)
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(rng.choice(words, 2500)), encoding="utf-8")
    return path


def command(corpus, out, epochs=3) -> list[str]:
    return ["compare", "--threads", "1", "--quiet", "--net", "gpt", "--dataset", f"text:{corpus}",
            "--activations", "relu,swiglu", "--seeds", "2", "--epochs", str(epochs),
            "--width", "16", "--layers", "1", "--heads", "2", "--context", "16",
            "--batch-size", "16", "--lr", "3e-3", "--schedule", "cosine", "--warmup", "5",
            "--clip", "1.0", "--out", str(out)]  # fmt: skip


def test_lm_study_writes_rows_and_a_report_in_bits_per_character(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([a for a in command(corpus, out, epochs=2) if a != "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "parameters per member: relu" in printed and "final test bpc" in printed
    verdict = printed[printed.index("verdict:") :]
    assert "bits per character" in verdict and "accuracy" not in verdict
    metrics = pd.read_csv(out / store.METRICS_FILE)
    assert len(metrics) == 2 * 2 * 2 and (metrics["status"] == "ok").all()
    assert metrics["test_acc"].isna().all()  # no accuracy for a language model
    assert (metrics.groupby("member")["test_loss"].last() < np.log(256)).all()
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "bits per character" in report and "lower is better" in report
    assert "accuracy" not in report.lower()
    final = metrics[metrics["epoch"] == 2].groupby("activation")["test_loss"].mean()
    best = final.idxmin()  # lower is better: the best arm has the lowest loss
    bpc = final[best] / np.log(2)
    assert f"Lowest mean (not shown to be the best): {best} at {bpc:.4f} bpc" in report
    config = (out / "config.json").read_text()
    assert '"schedule": "cosine"' in config and '"clip": 1.0' in config
    # exports take a study without accuracy (they read the test loss, and bpc)
    assert main(["export", str(out), "--tensorboard", str(tmp_path / "tb")]) == 0


def test_the_lm_report_is_one_escaped_page_model_that_shows_the_runs_problems(
    corpus, tmp_path, capsys
):
    """report.html, report.md and the terminal show one summary table (typed cells); names
    are escaped; a repair made while reading the run is reported, as in a classifier's."""
    out = tmp_path / "run"
    odd = tmp_path / "c<o&r>pus_1.txt"  # a corpus named with HTML and Markdown punctuation
    odd.write_bytes(corpus.read_bytes())
    cmd = command(odd, out, epochs=1)
    cmd[cmd.index("relu,swiglu")] = "relu,expr:x*sigmoid(x)"
    assert main(cmd) == 0
    with open(out / store.METRICS_FILE, "a", encoding="utf-8") as handle:
        handle.write("0,0,relu")  # a row cut off mid-row, as a killed writer leaves it
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    html = (out / "report.html").read_text(encoding="utf-8")
    markdown = (out / "report.md").read_text(encoding="utf-8")
    table = loss_report.summary_table(loss_report.loss_analysis(store.read_run(out)))
    assert len(table.rows) == 2
    assert page.table_html(table) in html
    assert page.table_markdown(table) in markdown
    assert page.to_terminal(table) in printed
    assert "c&lt;o&amp;r&gt;pus_1" in html and "c<o" not in html
    assert "c&lt;o&amp;r&gt;pus\\_1" in markdown and "c<o" not in markdown
    assert "expr:x\\*sigmoid(x)" in markdown
    problem = "metrics.csv: last row cut off mid-row"
    assert problem in html and problem in markdown


def test_sigkill_then_rerun_gives_the_rows_of_an_uninterrupted_run(corpus, tmp_path):
    reference = tmp_path / "reference"
    total = durable_calls(command(corpus, reference))
    expected = rows(reference, store.METRICS_FILE)
    for kill_at in sorted({int(p) for p in np.linspace(3, total - 2, 4).round()}):
        run = tmp_path / f"killed-{kill_at}"
        assert durable_calls(command(corpus, run), kill_at, truncate=True) == signal.SIGKILL
        assert quiet_main(command(corpus, run)) == 0, f"rerun after a kill at call {kill_at}"
        pd.testing.assert_frame_equal(rows(run, store.METRICS_FILE), expected, check_exact=True)


def test_an_extracted_member_reproduces_its_recorded_test_loss(corpus, tmp_path):
    out = tmp_path / "run"
    assert quiet_main(command(corpus, out, epochs=1)) == 0
    main(
        ["extract", str(out), "--activation", "swiglu", "--seed", "1", "-o", str(tmp_path / "m.pt")]
    )
    extracted = extract_member(out, "swiglu", 1)
    from actlab.nn.gpt import GPT

    module = GPT("swiglu", width=16, layers=1, heads=2, context=16)
    module.load_state_dict(torch.load(tmp_path / "m.pt"))
    dataset = text.load_text(f"text:{corpus}", context=16)
    x, y = dataset.windows(dataset.test_bytes)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(
            module(x.long()).reshape(-1, 256), y.long().reshape(-1)
        )
    metrics = pd.read_csv(out / store.METRICS_FILE)
    recorded = metrics[(metrics["activation"] == "swiglu") & (metrics["seed"] == 1)]["test_loss"]
    # float32 logits, summed in float64 by the engine and in float32 here
    assert loss.item() == pytest.approx(float(recorded.iloc[-1]), rel=1e-5)
    assert extracted.member.activation == "swiglu" and extracted.epoch == 1
    assert main(["extract", str(out), "--activation", "tanh", "--seed", "0"]) == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--net", "gpt"], "--net gpt is a language model: give --dataset text:PATH"),
        (["--net", "gpt", "--dataset", "text:/no/such.txt"], "text file '/no/such.txt' not found"),
        (["--dataset", "text:stdlib"], "language-modelling corpus: add --net gpt"),
        (["--net", "gpt", "--dataset", "text:stdlib", "--width", "30"], "multiple of --heads"),
        (["--net", "gpt", "--dataset", "text:stdlib", "--activations", "softmax(dim=-1)"],
         "not elementwise and not a gated unit"),
    ],
)  # fmt: skip
def test_lm_mistakes_are_one_line_and_exit_2(extra, message, capsys, tmp_path):
    assert main(["compare", "--quiet", "--out", str(tmp_path / "r"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
