"""The verdict's words for a resolved, an equivalent and an unresolved pair, and the small-n
cautions, on run data whose per-seed accuracies are set by hand."""

import re

import numpy as np
import pytest
from fixtures.verdict import run_with

from actlab.cli.report import summary_text
from actlab.report import stats
from actlab.report.render import analyse, p_is, summary_rows, verdict, with_min_gap

SEEDS = 10
RNG = np.random.default_rng(11)
SEED_EFFECT = RNG.normal(0, 0.004, SEEDS)  # shared by the members of a seed
BEST = 0.880 + SEED_EFFECT + RNG.normal(0, 0.0005, SEEDS)
STUDY = {
    "relu": BEST,
    # resolved: a full point behind on every seed
    "sigmoid": BEST - 0.010 + RNG.normal(0, 0.001, SEEDS),
    # equivalent: within a few hundredths of a point on every seed
    "leaky_relu": BEST - 0.0002 + RNG.normal(0, 0.0004, SEEDS),
    # unresolved: 0.3 pp behind on average with a seed-to-seed spread of 0.8 pp
    "tanh": BEST - 0.003 + RNG.normal(0, 0.008, SEEDS),
}


@pytest.fixture(scope="module")
def analysis():
    return analyse(run_with(STUDY))


def pair(analysis, a, b):
    pairs = analysis.pairs
    return pairs[(pairs["a"] == a) & (pairs["b"] == b)].iloc[0]


def test_the_three_kinds_of_pair(analysis):
    assert pair(analysis, "relu", "sigmoid")["significant"]
    assert not pair(analysis, "relu", "sigmoid")["equivalent"]
    assert pair(analysis, "relu", "leaky_relu")["equivalent"]
    assert not pair(analysis, "relu", "leaky_relu")["significant"]
    tanh = pair(analysis, "relu", "tanh")
    assert not tanh["significant"] and not tanh["equivalent"]


def test_wording_resolved_equivalent_unresolved(analysis):
    text = " ".join(verdict(analysis))
    sigmoid = pair(analysis, "relu", "sigmoid")
    assert re.search(
        rf"It is significantly better than sigmoid \(gap \+{100 * sigmoid['mean_diff']:.2f} pp, "
        r"Holm-level 99\.2% CI \[\+\d\.\d\d, \+\d\.\d\d\], Holm p [<=] ",
        text,
    )
    leaky = pair(analysis, "relu", "leaky_relu")
    assert (
        f"It is practically equivalent (within ±0.5 pp) to leaky_relu (gap "
        f"+{100 * leaky['mean_diff']:.2f} pp, Holm-level "
        f"[{100 * leaky['tost_low']:+.2f}, {100 * leaky['tost_high']:+.2f}] inside ±0.5 pp, "
        f"TOST Holm p {p_is(leaky['tost_p_holm'])})."
        in text.replace(f"{100 * leaky['tost_confidence']:.1f}% CI ", "")
    )
    assert "It is not resolved against tanh (gap +" in text
    assert "neither a difference nor equivalence within ±0.5 pp" in text
    assert "open question, not a tie" in text
    # the numbers of the power sentence are the stats module's, from the observed SD
    tanh = pair(analysis, "relu", "tanh")
    level = 0.05 / 6
    gap = stats.detectable_gap(tanh["std"], SEEDS, level)
    needed = stats.seed_plan(0.005, tanh["std"], SEEDS, level)
    assert gap > 0.005 and needed > SEEDS
    assert (
        f"With {SEEDS} seeds, gaps below about {100 * gap:.2f} pp would be missed more often than "
        "20% of the time (t-test power at the Holm level 0.05/6 = 0.00833" in text
    )
    equivalence = stats.seeds_for_equivalence(0.005, stats.sd_upper_limit(tanh["std"], SEEDS),
                                              level)  # fmt: skip
    assert (
        f"to detect 0.5 pp plan about {needed:.0f} seeds, and about {equivalence:.0f} seeds to "
        "show equivalence within ±0.5 pp" in text
    )
    assert "cannot be told apart" not in text and "Caution" not in text


def test_significant_and_within_the_margin_says_both():
    study = {
        "relu": BEST,
        "gelu": BEST - 0.001 + RNG.normal(0, 0.0002, SEEDS),  # 0.1 pp behind, every seed
    }
    text = " ".join(verdict(analyse(run_with(study))))
    assert (
        "It is significantly better than gelu (gap +0.09 pp, Holm-level 95% CI [+0.08, +0.11]"
        in text
    )
    assert "but by less than 0.5 pp: practically equivalent." in text


def test_min_gap_changes_the_words_not_the_numbers():
    narrow = analyse(with_min_gap(run_with(STUDY), 0.01))
    text = " ".join(verdict(narrow))
    assert "practically equivalent" not in text
    assert "not resolved against leaky_relu" in text and "to detect 0.01 pp plan" in text
    assert list(narrow.pairs["p_holm"]) == list(analyse(run_with(STUDY)).pairs["p_holm"])


def test_small_n_caution_and_per_seed_values():
    few = {name: values[:3] for name, values in STUDY.items()}
    analysis = analyse(run_with(few))
    paragraphs = verdict(analysis)
    best = analysis.summary["arm"].iloc[0]  # with 3 seeds, not necessarily relu
    per_seed = ", ".join(f"{100 * v:.2f}" for v in few[best])
    assert f"Highest mean: {best} with " in paragraphs[1]  # 3 seeds resolve nothing
    assert f"from 3 seeds: {per_seed})" in paragraphs[1]
    caution = [p for p in paragraphs if p.startswith("Caution: only 3 seeds.")]
    assert caution and "2 degrees of freedom" in caution[0]
    header, rows = summary_rows(analysis)
    assert "per seed %" in header
    by_arm = {row[header.index("activation")]: row for row in rows}
    assert by_arm[best][header.index("per seed %")] == per_seed
    assert all(row[header.index("95% CI")].endswith(" (2 df!)") for row in rows)
    # ten seeds: no caution, no per-seed column
    header, _ = summary_rows(analyse(run_with(STUDY)))
    assert "per seed %" not in header


def test_terminal_summary_is_the_reports_table_not_a_recomputation():
    few = analyse(run_with({name: values[:3] for name, values in STUDY.items()}))
    lines = summary_text(few).splitlines()
    assert lines[0].split() == ["rank", "activation", "lr", "seeds", "final", "test", "acc", "%",
                                "±", "SD", "95%", "CI", "per", "seed", "%", "group",
                                "diverged"]  # fmt: skip
    header, rows = summary_rows(few)
    # every cell on the screen is the report's cell, in the report's order (best first)
    for line, row in zip(lines[2:], rows, strict=True):
        cells = [row[header.index(h)] for h in ("rank", "activation", "final test acc %", "95% CI")]
        assert all(cell in line for cell in cells), (line, cells)
    interval = stats.t_interval(STUDY["relu"][:3])
    relu = next(line for line in lines if " relu " in line)
    assert f"[{100 * interval.ci_low:.2f}, {100 * interval.ci_high:.2f}] (2 df!)" in relu
    many = summary_text(analyse(run_with(STUDY)))
    assert "per seed" not in many and "95% CI" in many


def test_pairs_table_reading_column(analysis):
    from actlab.report.render import pair_rows

    header, rows = pair_rows(analysis)
    assert header[-4:] == ["detectable gap (pp)", "seeds for 0.5 pp", "TOST p (Holm)", "reading"]
    reading = {row[0]: row[-1] for row in rows}
    assert reading["relu − sigmoid"] == "different"
    assert reading["relu − leaky_relu"] == "practically equivalent"
    assert reading["relu − tanh"] == "not resolved"
    tanh = pair(analysis, "relu", "tanh")
    row = next(r for r in rows if r[0] == "relu − tanh")
    assert row[-3] == f"{tanh['seeds_needed']:.0f}"
    assert float(row[-4]) == pytest.approx(100 * tanh["detectable_gap"], abs=0.006)


def test_bad_min_gap_is_one_line(tmp_path, capsys):
    from fixtures.run_dir import write_run

    from actlab.cli.main import main

    assert main(["compare", "--dataset", "mnist", "--no-download", "--min-gap", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--min-gap" in err and "(0, 100)" in err
    run_dir = write_run(tmp_path / "run", diagnostics=False)
    assert main(["report", str(run_dir), "--min-gap", "-0.3"]) == 2
    assert "--min-gap" in capsys.readouterr().err
    assert main(["report", str(run_dir), "--min-gap", "0.2"]) == 0
    assert "within ±0.2 pp" in (run_dir / "report.md").read_text()


def test_three_seeds_cannot_be_significant_and_the_caution_says_why():
    # a 1 pp gap on each of 3 seeds: the t-test said p = 0.0000 on 2 degrees of freedom; a
    # sign-flip test of 3 seeds cannot go below 2/2^3 = 0.25
    study = {"relu": BEST[:3], "sigmoid": BEST[:3] - 0.010 + np.array([0.0001, -0.0001, 0.0])}
    text = " ".join(verdict(analyse(run_with(study))))
    assert "significantly better" not in text
    assert "It is not resolved against sigmoid (gap +1.00 pp, 3 seeds are too few for a " in text
    assert "cannot give p below 2/2^3 = 0.25, so no difference can be called significant" in text
    assert "Caution: only 3 seeds." in text
