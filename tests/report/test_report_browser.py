"""report.html in a real browser: headless Chromium, offline (scripts/check_report.py).
Skipped where no Chromium is installed (CI installs Debian's)."""

import importlib.util
from pathlib import Path

import pytest
from fixtures.run_dir import write_run

from actlab.report.render import write_report

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_report.py"
spec = importlib.util.spec_from_file_location("check_report", SCRIPT)
check_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_report)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(check_report.find_chromium() is None, reason="no chromium installed"),
]


def test_the_report_loads_offline_without_errors_and_a_broken_one_fails(tmp_path):
    run = write_run(tmp_path / "run", activations=("relu", "tanh", "sigmoid"), seeds=(0, 1, 2),
                    lrs=(3e-4, 1e-3), val_size=500, select="val")  # fmt: skip
    path = write_report(run)
    figures = path.read_text().count("<figure>")
    problems, facts = check_report.check_report(path)
    assert problems == []
    assert facts["images"] == figures >= 6 and facts["headings"] >= 8 and facts["tables"] >= 5
    assert facts["title"] == "actlab: activations on fashion-mnist"
    assert facts["width"] <= 1280  # no horizontal scrolling at a laptop's width

    broken = path.read_text().replace(
        '<h2 id="verdict">',
        '<img src="data:image/png;base64,AAAA" alt="bad"><img src="https://example.com/x.png">'
        '<script>notDefined()</script><h2 id="verdict">',
    )
    (tmp_path / "broken.html").write_text(broken)
    problems, _ = check_report.check_report(tmp_path / "broken.html")
    text = "\n".join(problems)
    assert "notDefined is not defined" in text
    assert "blocked request outside the file: https://example.com/x.png" in text
    assert "image 1 (bad) did not decode" in text
