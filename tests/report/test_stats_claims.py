"""The verdict never claims what the numbers do not support (issue 24): a negative gap is
never "better", zero-variance differences of a quantised accuracy never give p = 0, every
claim sits beside the interval that matches it, percentages stay inside [0, 100], seed plans
are planned from an upper limit of the SD, and the words say "highest mean" unless the arm
is resolved against all the others. Oracles: brute-force enumeration of the 2^n sign
vectors, scipy's chi-square quantiles (Browne 1995)."""

import itertools
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from fixtures.run_dir import write_run
from fixtures.verdict import run_with
from scipy import stats as scipy_stats

from actlab.cli.main import main
from actlab.cli.report import summary_text
from actlab.report import stats
from actlab.report.render import analyse, signed_pp, verdict
from actlab.study.store import read_run

DIGITS_TEST = 359  # sklearn digits' test split: one image is 0.28 pp


def brute_force_p(diff):
    """Two-sided sign-flip p by enumeration: share of the 2^n sign vectors whose
    |mean(s * d)| is at least the observed |mean(d)| (ties count as extreme)."""
    diff = np.asarray(diff, dtype=float)
    observed = abs(diff.mean())
    flips = [abs((np.array(s) * diff).mean()) for s in itertools.product((1, -1), repeat=len(diff))]
    return sum(f >= observed - 1e-12 for f in flips) / len(flips)


# --- 2. p = 0 from zero variance -----------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_constant_differences_never_give_p_zero(n):
    # every seed differs by exactly 2 test images: p is 2 / 2^n, never 0
    a = np.full(n, 0.90)
    b = a - 2 / DIGITS_TEST
    result = stats.sign_flip_test(a - b)
    assert result["p"] == pytest.approx(2 / 2**n)
    assert result["p"] == pytest.approx(brute_force_p(a - b))


@pytest.mark.parametrize("seed", range(6))
def test_sign_flip_p_matches_enumeration(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 11))
    quantised = rng.integers(-3, 5, n) / DIGITS_TEST  # many exact ties
    continuous = rng.normal(0.002, 0.004, n)
    for diff in (quantised, continuous, np.zeros(n)):
        assert stats.sign_flip_test(diff)["p"] == pytest.approx(brute_force_p(diff), abs=1e-12)
        assert stats.sign_flip_test(diff)["p"] >= 2 / 2**n - 1e-15


def test_beyond_exact_enumeration_is_monte_carlo_with_a_fixed_seed():
    rng = np.random.default_rng(1)
    diff = rng.normal(0.001, 0.004, 24)
    first, again = stats.sign_flip_test(diff)["p"], stats.sign_flip_test(diff)["p"]
    assert first == again  # reproducible
    reference = scipy_stats.ttest_1samp(diff, 0).pvalue  # close to the t-test at n = 24
    assert first == pytest.approx(reference, abs=0.03)


def test_zero_variance_run_directory_makes_no_claim(tmp_path):
    """digits-sized test set, 3 seeds each 2 images apart: the old verdict said
    "significantly better ... Holm p < 0.0001"."""
    run_dir = zero_variance_run(tmp_path / "run", seeds=(0, 1, 2))
    assert main(["report", str(run_dir)]) == 0
    text = (run_dir / "report.md").read_text()
    assert "significantly better" not in text and "< 0.0001" not in text
    analysis = analyse(read_run(run_dir))
    assert (analysis.pairs["p"] >= 2 / 2**3 - 1e-12).all()
    words = " ".join(verdict(analysis))
    # the test set's resolution and its own sampling uncertainty are stated
    assert "359 test images" in words and "one image is 0.28 pp" in words
    se = math.sqrt(0.9 * 0.1 / DIGITS_TEST)
    assert "binomial" in words and f"{100 * se:.1f} pp" in words


def zero_variance_run(path, seeds):
    """A run directory on a 359-image test set whose final accuracies are whole image
    counts, and whose arms differ by exactly 2 and 5 images on every seed."""
    run_dir = write_run(path, seeds=seeds, diagnostics=False)
    config = json.loads((run_dir / "config.json").read_text())
    config["dataset"]["test_size"] = DIGITS_TEST
    (run_dir / "config.json").write_text(json.dumps(config))
    metrics = pd.read_csv(run_dir / "metrics.csv")
    last = metrics["epoch"] == metrics["epoch"].max()
    offset = {"relu": 0, "tanh": -2, "sigmoid": -5}
    for (activation, seed), rows in metrics[last].groupby(["activation", "seed"]):
        correct = 323 + seed + offset[activation]  # about 90%
        metrics.loc[rows.index, "test_acc"] = correct / DIGITS_TEST
    metrics.to_csv(run_dir / "metrics.csv", index=False)
    return run_dir


# --- 1. a negative gap is never "better"; a diverged member counts as a failure -------------


def diverged_study():
    """relu beats tanh by 0.5 pp on the 9 seeds where both finished; relu diverged on the
    tenth, where tanh scored 99%. Dropping relu's failure made tanh rank first and then
    printed "significantly better than relu (gap -0.50 pp, ...)"."""
    run = run_with({"relu": np.full(10, 0.900), "tanh": np.full(10, 0.895)})
    metrics = run.metrics
    metrics.loc[(metrics["activation"] == "tanh") & (metrics["seed"] == 9), "test_acc"] = 0.99
    failed = (metrics["activation"] == "relu") & (metrics["seed"] == 9)
    metrics.loc[failed, ["test_acc", "test_loss", "train_loss"]] = math.nan
    metrics.loc[failed, "status"] = "diverged"
    return run


def test_every_pair_is_oriented_by_its_own_mean_and_never_better_by_a_negative_gap():
    analysis = analyse(diverged_study())
    assert (analysis.pairs["mean_diff"] >= 0).all()
    text = " ".join(verdict(analysis))
    assert not re.search(r"better than [^.]*gap -", text)
    assert "-0.50 pp" not in text


def test_a_diverged_member_counts_as_a_failure_of_its_arm():
    analysis = analyse(diverged_study())
    pair = analysis.pairs.iloc[0]
    # the tenth seed is compared: relu's failure scores 0% accuracy
    assert pair["n"] == 10 and pair["a"] == "tanh"
    assert pair["n_failed_b"] == 1 and pair["n_failed_a"] == 0
    assert pair["mean_diff"] == pytest.approx((0.99 - 0.0 + 9 * -0.005) / 10)
    assert not pair["significant"]  # one lucky seed against nine losses
    text = " ".join(verdict(analysis))
    assert "counted as a failure" in text and "left out of the statistics" not in text


def test_report_on_a_run_directory_with_a_diverged_member(tmp_path):
    run_dir = write_run(tmp_path / "run", seeds=tuple(range(8)), diverge=("tanh", 1),
                        diagnostics=False)  # fmt: skip
    assert main(["report", str(run_dir)]) == 0
    analysis = analyse(read_run(run_dir))
    assert (analysis.pairs["mean_diff"] >= 0).all()
    tanh = analysis.pairs[(analysis.pairs["a"] == "tanh") | (analysis.pairs["b"] == "tanh")]
    assert (tanh["n"] == 8).all()  # the diverged seed is compared, as a failure
    assert "counted as a failure" in (run_dir / "report.md").read_text()


# --- 3. the interval beside a claim is the one that matches it ----------------------------


@pytest.mark.parametrize("seed", range(8))
def test_claims_and_their_intervals_agree(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 13))
    common = rng.normal(0, 0.004, n)
    study = {
        name: 0.88 + shift + common + rng.normal(0, 0.002, n)
        for name, shift in (("relu", 0.0), ("gelu", -0.001), ("tanh", -0.004), ("sigmoid", -0.01))
    }
    pairs = analyse(run_with(study, min_gap=0.3)).pairs
    for row in pairs.itertuples():
        excludes_zero = row.ci_low > 0 or row.ci_high < 0
        assert bool(row.significant) == excludes_zero, row
        inside = row.tost_low > -0.003 and row.tost_high < 0.003
        assert bool(row.equivalent) == inside, row
        assert row.ci_confidence >= 0.95 and row.tost_confidence >= 0.90


def test_verdict_labels_each_interval_with_its_level():
    rng = np.random.default_rng(4)
    common = rng.normal(0, 0.004, 12)
    study = {
        "relu": 0.88 + common + rng.normal(0, 0.0005, 12),
        "sigmoid": 0.87 + common + rng.normal(0, 0.0005, 12),
        "leaky_relu": 0.8798 + common + rng.normal(0, 0.0003, 12),
    }
    analysis = analyse(run_with(study))
    text = " ".join(verdict(analysis))
    assert re.search(r"significantly better than sigmoid \(gap \+\d\.\d\d pp, Holm-level "
                     r"\d\d\.\d% CI \[\+", text)  # fmt: skip
    assert re.search(r"equivalent \(within ±0\.5 pp\) to leaky_relu \(gap [+-]?\d\.\d\d pp, "
                     r"Holm-level \d\d\.\d% CI \[[^\]]+\] inside ±0\.5 pp", text)  # fmt: skip
    assert "95% CI [" not in text


# --- 4. impossible numbers -----------------------------------------------------------------


def test_percentage_intervals_stay_inside_the_scale():
    analysis = analyse(run_with({"relu": np.array([0.70, 0.99]), "tanh": np.array([0.2, 0.9])}))
    summary = analysis.summary
    assert (summary["final_test_acc_ci_low"] >= 0).all()
    assert (summary["final_test_acc_ci_high"] <= 1).all()
    text = " ".join(verdict(analysis))
    for number in re.findall(r"(\d+(?:\.\d+)?) ?(?:pp|%)", text):
        assert float(number) <= 100, text
    assert "seeds would detect" not in text or "about" not in text


# --- 5. seed plans from an upper confidence limit of the SD -------------------------------


@pytest.mark.parametrize(("n", "factor"), [(2, 3.95), (3, 2.12), (5, 1.56)])
def test_browne_upper_limit_of_the_sd(n, factor):
    assert stats.sd_upper_limit(1.0, n) == pytest.approx(factor, abs=0.005)
    df = n - 1
    assert stats.sd_upper_limit(2.0, n) == pytest.approx(
        2.0 * math.sqrt(df / scipy_stats.chi2.ppf(0.2, df))
    )


def test_plans_never_shrink_with_fewer_seeds_and_never_go_below_five():
    rng = np.random.default_rng(5)
    common = rng.normal(0, 0.004, 6)
    values = {"relu": 0.88 + common + rng.normal(0, 0.003, 6),
              "tanh": 0.879 + common + rng.normal(0, 0.003, 6)}  # fmt: skip
    plans = {}
    for n in (2, 3, 6):
        pair = analyse(run_with({k: v[:n] for k, v in values.items()})).pairs.iloc[0]
        sd = stats.sd_upper_limit(pair["std"], n)
        assert pair["seeds_needed"] >= max(stats.SMALL_N, stats.seeds_needed(0.005, sd, 0.05))
        assert pair["seeds_for_equivalence"] >= stats.SMALL_N
        plans[n] = pair["seeds_needed"]
    assert all(v >= stats.SMALL_N for v in plans.values())


def test_seeds_for_equivalence_reach_the_power_in_simulation():
    sd, margin = 0.004, 0.005
    n = int(stats.seeds_for_equivalence(margin, sd, 0.05))
    rng = np.random.default_rng(0)
    hits = sum(stats.sign_flip_tost(rng.normal(0, sd, n), margin)["p"] < 0.05 for _ in range(400))
    assert hits / 400 >= 0.75  # 80% planned; Monte Carlo SE 2 points


# --- 6. wording ----------------------------------------------------------------------------


def test_highest_mean_unless_resolved_against_all():
    rng = np.random.default_rng(2)
    common = rng.normal(0, 0.004, 10)
    unresolved = {"relu": 0.880 + common + rng.normal(0, 0.004, 10),
                  "tanh": 0.879 + common + rng.normal(0, 0.004, 10)}  # fmt: skip
    text = " ".join(verdict(analyse(run_with(unresolved))))
    assert "Highest mean: " in text and "The best is" not in text
    resolved = {"relu": 0.89 + common, "tanh": 0.87 + common + rng.normal(0, 0.0005, 10)}
    assert "The best is relu" in " ".join(verdict(analyse(run_with(resolved))))


def test_no_negative_zero_and_the_sd_is_labelled():
    assert signed_pp(-1e-7) == "0.00 pp" and signed_pp(1e-7) == "0.00 pp"
    tie = {"relu": np.array([0.9, 0.91, 0.92]), "tanh": np.array([0.9, 0.91, 0.92]) + 1e-9}
    analysis = analyse(run_with(tie))
    assert "-0.00" not in " ".join(verdict(analysis))
    assert "± SD" in summary_text(analysis).splitlines()[0]


def test_scope_and_detectable_gap_wording():
    rng = np.random.default_rng(3)
    common = rng.normal(0, 0.004, 10)
    study = {"relu": 0.880 + common + rng.normal(0, 0.004, 10),
             "tanh": 0.879 + common + rng.normal(0, 0.004, 10)}  # fmt: skip
    run = run_with(study, min_gap=0.1)
    run.dataset["test_size"] = 10000
    text = " ".join(verdict(analyse(run)))
    assert "one fixed train/test split (10000 test images)" in text
    assert "1 epochs" not in text and "a budget of 1 epoch" in text
    assert "could be detected" not in text
    assert "gaps below about" in text and "would be missed more often than 20%" in text


# --- issue 21, item 4: a depth study's verdict names each depth's own learning rates -------


def test_depth_study_verdict_names_each_depths_lr(tmp_path):
    run = read_run(write_run(tmp_path / "run", depths=(2, 8), lrs=(1e-3, 3e-3), val_size=500,
                             select="val", diagnostics=False))  # fmt: skip
    metrics = run.metrics
    # depth 2 prefers 3e-3 on validation for every activation; depth 8 keeps 1e-3
    boost = (metrics["depth"] == 2) & (metrics["lr"] == 3e-3)
    metrics.loc[boost, "val_acc"] = 0.99
    analysis = analyse(run)
    chosen = {(int(r.depth), r.activation): r.lr for r in analysis.selected.itertuples()}
    assert chosen[(2, "relu")] == 3e-3 and chosen[(8, "relu")] == 1e-3
    text = " ".join(verdict(analysis))
    assert "depth 2: relu 0.003, tanh 0.003, sigmoid 0.003" in text
    assert "depth 8: relu 0.001, tanh 0.001, sigmoid 0.001" in text


def test_summary_carries_the_test_sets_binomial_se(tmp_path):
    analysis = analyse(read_run(zero_variance_run(tmp_path / "run", seeds=(0, 1, 2))))
    p = analysis.summary["final_test_acc_mean"]
    expected = np.sqrt(p * (1 - p) / DIGITS_TEST)
    assert np.allclose(analysis.summary["final_test_acc_test_se"], expected)
