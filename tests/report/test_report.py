"""The report from a synthetic run directory: parses, self-contained, numbers equal the CSV's."""

import base64
import re
from html.parser import HTMLParser

import pandas as pd
import pytest
from fixtures.run_dir import write_run

from actlab.cli.main import main
from actlab.report.render import write_report
from actlab.study.store import merge_runs, read_run


class TableParser(HTMLParser):
    """Collects every <table id=...> as rows of cell text, and every <img src>/<figure>."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self.figures = 0
        self.svgs = 0
        self.urls: list[str] = []
        self._table = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href"):
            if name in attrs and attrs[name]:
                self.urls.append(attrs[name])
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id") or f"t{len(self.tables)}", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "figure":
            self.figures += 1
        elif tag == "svg":
            self.svgs += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self._table[-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def parse(path):
    parser = TableParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def as_records(table):
    header, *rows = table
    return [dict(zip(header, row, strict=True)) for row in rows]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run_dir = write_run(
        tmp_path_factory.mktemp("run") / "run",
        activations=("relu", "leaky_relu", "tanh", "sigmoid"),
        seeds=(0, 1, 2),
        diverge=("tanh", 1),
    )
    return run_dir, write_report(run_dir), parse(run_dir / "report.html")


@pytest.mark.slow
def test_report_is_self_contained(report):
    run_dir, path, parsed = report
    assert path == run_dir / "report.html" and (run_dir / "report.md").is_file()
    # training curves, activations (when the catalog plot exists), differences, 2 diagnostics
    assert parsed.figures >= 4
    assert len(parsed.images) + parsed.svgs == parsed.figures
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [u for u in parsed.urls if not u.startswith("data:")]
    assert not re.search(r"url\(\s*['\"]?https?:", path.read_text())


@pytest.mark.slow
def test_member_table_equals_csv(report):
    run_dir, _, parsed = report
    metrics = read_run(run_dir).metrics
    rows = as_records(parsed.tables["members-table"])
    assert len(rows) == 12
    for row in rows:
        own = metrics[
            (metrics["activation"] == row["activation"]) & (metrics["seed"] == int(row["seed"]))
        ]
        ok = own[own["status"] == "ok"].sort_values("epoch")
        last = ok.iloc[-1]
        assert int(row["epochs"]) == last["epoch"]
        assert float(row["final test acc %"]) == pytest.approx(100 * last["test_acc"], abs=0.006)
        assert float(row["best test acc %"]) == pytest.approx(100 * ok["test_acc"].max(), abs=0.006)
        assert float(row["final test loss"]) == pytest.approx(last["test_loss"], abs=6e-5)
        assert row["status"].startswith("diverged") == (own["status"] == "diverged").any()


@pytest.mark.slow
def test_summary_table_equals_csv(report):
    run_dir, _, parsed = report
    metrics = read_run(run_dir).metrics
    rows = {r["activation"]: r for r in as_records(parsed.tables["summary-table"])}
    assert set(rows) == {"relu", "leaky_relu", "tanh", "sigmoid"}
    for activation, row in rows.items():
        final = metrics[(metrics["activation"] == activation) & (metrics["epoch"] == 4)]["test_acc"]
        assert int(row["seeds"]) == len(final)  # the diverged tanh seed is left out
        assert float(row["final test acc %"]) == pytest.approx(100 * final.mean(), abs=0.006)
        assert float(row["± SD"]) == pytest.approx(100 * final.std(ddof=1), abs=0.006)
        interval, caution = row["95% CI"].split("] ")
        low, high = (float(x) for x in interval.strip("[").split(","))
        assert low < float(row["final test acc %"]) < high
        assert caution == f"({len(final) - 1} df!)"  # fewer than 5 seeds: marked
        per_seed = metrics[(metrics["activation"] == activation) & (metrics["epoch"] == 4)]
        per_seed = per_seed.sort_values("seed")["test_acc"].dropna()
        assert row["per seed %"] == ", ".join(f"{100 * v:.2f}" for v in per_seed)
    assert rows["tanh"]["diverged"] == "1"
    # tanh's diverged seed counts as a failure (0%): it ranks last; 3 seeds resolve nothing
    assert rows["tanh"]["rank"] == "4" and rows["sigmoid"]["rank"] == "3"
    assert {r["group"] for r in rows.values()} == {"a"}


@pytest.mark.slow
def test_verdict_and_markdown(report):
    run_dir, _, _ = report
    text = (run_dir / "report.html").read_text()
    assert "Highest mean: " in text and "significantly better than" not in text
    assert "counted as a failure" in text and "not resolved against relu" in text
    markdown = (run_dir / "report.md").read_text()
    assert "| rank | activation" in markdown and "95% CI" in markdown


def test_single_seed_says_no_interval(tmp_path):
    run_dir = write_run(tmp_path / "run", seeds=(0,), diagnostics=False)
    parsed = parse(write_report(run_dir))
    text = (run_dir / "report.html").read_text()
    assert "no confidence interval or significance test can be given" in text
    for row in as_records(parsed.tables["summary-table"]):
        assert row["95% CI"] == "n/a (1 seed)" and row["group"] == "–"
        assert "per seed %" not in row  # one value is the mean
    assert 'id="diagnostics"' not in text


@pytest.mark.slow
def test_merge_adds_seeds(tmp_path):
    a = write_run(tmp_path / "a", seeds=(0, 1))
    b = write_run(tmp_path / "b", seeds=(2, 3))
    path = write_report([a, b], tmp_path / "merged" / "report.html")
    rows = as_records(parse(path).tables["summary-table"])
    assert {r["seeds"] for r in rows} == {"4"}


@pytest.mark.slow
def test_lr_selection_section(tmp_path):
    run_dir = write_run(tmp_path / "run", lrs=(3e-4, 1e-3, 3e-3), val_size=500, select="val")
    parsed = parse(write_report(run_dir))
    rows = as_records(parsed.tables["lr-table"])
    assert {r["selected lr"] for r in rows} == {"0.001"}
    summary = as_records(parsed.tables["summary-table"])
    assert len(summary) == 3 and {r["lr"] for r in summary} == {"0.001"}
    assert 'alt="Validation accuracy vs learning rate:' in (run_dir / "report.html").read_text()


@pytest.mark.slow
def test_depth_study_report(tmp_path):
    run_dir = write_run(tmp_path / "run", depths=(2, 4), seeds=(0, 1))
    parsed = parse(write_report(run_dir))
    summary = as_records(parsed.tables["summary-table"])
    assert {r["depth"] for r in summary} == {"2", "4"}
    assert "Depth study" in (run_dir / "report.html").read_text()


# --- bad input -----------------------------------------------------------------------------


def test_cli_not_a_run_directory(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "not an actlab run directory" in err and "actlab compare --out" in err


def test_cli_merge_different_configs(tmp_path, capsys):
    a = write_run(tmp_path / "a", epochs=3, diagnostics=False)
    b = write_run(tmp_path / "b", epochs=4, seeds=(5,), diagnostics=False)
    assert main(["report", str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'epochs'" in err and "3 vs 4" in err


def test_cli_metrics_cut_off_mid_row(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run", diagnostics=False)
    text = (run_dir / "metrics.csv").read_text()
    complete = text.count("\n") - 1
    (run_dir / "metrics.csv").write_text(text[: text.rindex("\n", 0, len(text) - 1) + 25])
    run = read_run(run_dir)
    assert len(run.metrics) == complete - 1
    assert run.problems == [
        f"metrics.csv: last row cut off mid-row (line {complete + 1}), kept {complete - 1} complete rows"
    ]
    assert main(["report", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert "actlab: warning: metrics.csv: last row cut off" in captured.err
    assert "last row cut off" in (run_dir / "report.html").read_text()


def test_corrupt_and_future_config(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run", diagnostics=False)
    (run_dir / "config.json").write_text('{"schema": 1, "config": {')
    assert main(["report", str(run_dir)]) == 2
    assert "corrupt" in capsys.readouterr().err
    (run_dir / "config.json").write_text('{"schema": 99, "config": {}}')
    assert main(["report", str(run_dir)]) == 2
    assert "schema version 99" in capsys.readouterr().err


def test_metrics_read_back_types(tmp_path):
    run = read_run(write_run(tmp_path / "run", diagnostics=False))
    assert run.metrics["depth"].isna().all() and run.metrics["test_acc"].dtype == float
    assert run.diagnostics is None
    assert isinstance(run.metrics, pd.DataFrame) and run.config.seeds == (0, 1, 2)


def test_merge_overlapping_seeds_keeps_one_copy(tmp_path):
    a = write_run(tmp_path / "a", seeds=(0, 1), epochs=3, diagnostics=False)
    b = write_run(tmp_path / "b", seeds=(1, 2), epochs=3, diagnostics=False)
    run = merge_runs([a, b])
    assert run.config.seeds == (0, 1, 2)
    keys = run.metrics[["activation", "seed", "lr", "epoch"]]
    assert not keys.duplicated().any() and len(run.metrics) == 3 * 3 * 3
    assert len(run.problems) == 3 and all("seed=1 is in both" in p for p in run.problems)
    assert set(run.metrics.loc[run.metrics["seed"] == 1, "run"]) == {0}
