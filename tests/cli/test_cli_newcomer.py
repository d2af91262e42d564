"""What a newcomer hit on the command line (issue 21, item 6): each test failed before."""

import re

import pytest
from fixtures.cli import run_cli
from fixtures.data import write_npz
from fixtures.run_dir import write_run

from actlab.cli.compare import EXAMPLES, default_out
from actlab.cli.main import EPILOG, main

pytestmark = pytest.mark.usefixtures("restore_threads")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> str:
    return write_npz(tmp_path_factory.mktemp("data") / "small.npz", 256, 64)


def help_text(*argv: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_checkpoint_every_help_gives_its_default_once(capsys):
    text = help_text("compare", capsys=capsys)
    section = re.search(r"--checkpoint-every CHECKPOINT_EVERY (.*?\))", text).group(1)
    assert section.endswith("driver (default: 1)") and section.count("default") == 1


@pytest.mark.parametrize("argv", [["--range", "-6,6"], ["--range=-6,6"], ["--range", "-6", "6"],
                                  ["--range", "-6.5,6e0"]])  # fmt: skip
def test_plot_range_takes_a_negative_low_end(argv, tmp_path, monkeypatch):
    from actlab.report import plots

    seen = {}
    real = plots.plot_activations

    def spy(names, x_range, orders):
        seen["range"] = x_range
        return real(names, x_range, orders)

    monkeypatch.setattr(plots, "plot_activations", spy)
    code, out, err = run_cli("plot", "relu", *argv, "-o", tmp_path / "a.png")
    assert code == 0, err
    assert seen["range"][1] == 6 and seen["range"][0] in (-6, -6.5)


def test_plot_range_mistakes_are_one_line(tmp_path):
    code, _, err = run_cli("plot", "relu", "--range", "-6,6,7", "-o", tmp_path / "a.png")
    assert code == 2 and len(err.splitlines()) == 1 and "--range" in err


def test_help_examples_use_the_directory_compare_writes(capsys):
    datasets = re.findall(r"actlab compare .*--dataset (\S+)", EPILOG) or ["mnist"]
    written = {default_out(d) for d in datasets}
    for verb in ("report", "export"):
        for directory in re.findall(rf"actlab {verb} (\S+)", EPILOG):
            assert directory in written, (verb, directory, written)
    assert "actlab compare                " in EXAMPLES  # the default study: runs/compare-mnist
    assert "runs/compare " not in help_text("report", capsys=capsys) + " "


def test_compare_prints_one_progress_line_per_epoch_and_members_with_verbose(small, tmp_path):
    argv = ["compare", "--dataset", small, "--epochs", "2", "--hidden", "8", "--seeds", "3",
            "--activations", "relu,tanh", "--threads", "1", "--no-report"]  # fmt: skip
    code, out, _ = run_cli(*argv, "--out", tmp_path / "a")
    assert code == 0
    before_table = out.split("\nrank ")[0].splitlines()
    assert [line.split(" (")[0] for line in before_table if "epoch" in line] == [
        "progress: 1/2 epochs", "progress: 2/2 epochs",
    ]  # fmt: skip
    assert not any("seed 0" in line for line in before_table)
    code, out, _ = run_cli(*argv, "--out", tmp_path / "b", "--verbose")
    members = [line for line in out.splitlines() if re.match(r"(relu|tanh) +seed \d  epoch", line)]
    assert code == 0 and len(members) == 2 * 3 * 2  # activations x seeds x epochs


def test_report_prints_the_summary_and_the_verdict(tmp_path):
    run = write_run(tmp_path / "run", diagnostics=False)
    code, out, _ = run_cli("report", run)
    assert code == 0
    assert "verdict:\n  3 activations (relu, tanh and sigmoid) on fashion-mnist" in out
    assert out.splitlines()[0].split()[:2] == ["rank", "activation"]
    assert out.splitlines()[-1] == str(run / "report.md")
