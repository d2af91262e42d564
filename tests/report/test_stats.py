"""Statistics against scipy.stats and hand-computed cases (equal samples, a known shift, n=1)."""

import math

import numpy as np
import pandas as pd
import pytest
from fixtures.run_dir import write_run
from scipy import stats as scipy_stats

from actlab.report import stats
from actlab.study.store import read_run


def test_t_interval_matches_scipy():
    values = np.array([0.91, 0.93, 0.92, 0.95, 0.90])
    interval = stats.t_interval(values)
    low, high = scipy_stats.t.interval(0.95, 4, loc=values.mean(), scale=scipy_stats.sem(values))
    assert interval.n == 5
    assert interval.mean == pytest.approx(values.mean())
    assert interval.std == pytest.approx(values.std(ddof=1))
    assert (interval.ci_low, interval.ci_high) == pytest.approx((low, high))


def test_t_interval_by_hand_two_values():
    # mean 2, std sqrt(2), t_{0.975,1} = 12.7062: half width 12.7062 * sqrt(2) / sqrt(2)
    interval = stats.t_interval([1.0, 3.0])
    assert interval.half_width == pytest.approx(12.7062047, rel=1e-6)


def test_single_seed_gives_no_interval():
    interval = stats.t_interval([0.9])
    assert interval.n == 1 and interval.mean == 0.9
    assert math.isnan(interval.std) and math.isnan(interval.ci_low) and math.isnan(interval.ci_high)
    result = stats.paired_test([0.9], [0.8])
    assert result["mean_diff"] == pytest.approx(0.1)
    assert math.isnan(result["p"]) and math.isnan(result["ci_low"])


def test_paired_test_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(0.9, 0.01, 6)
    b = a - 0.004 + rng.normal(0, 0.003, 6)
    result = stats.paired_test(a, b)
    reference = scipy_stats.ttest_rel(a, b)
    assert result["p"] == pytest.approx(reference.pvalue)
    low, high = reference.confidence_interval(0.95)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((low, high))


def test_paired_test_equal_samples_and_known_shift():
    a = np.array([0.90, 0.92, 0.91])
    equal = stats.paired_test(a, a)
    assert equal["mean_diff"] == 0 and equal["p"] == 1.0
    assert equal["ci_low"] == 0 and equal["ci_high"] == 0
    shifted = stats.paired_test(a + 0.01, a)
    assert shifted["mean_diff"] == pytest.approx(0.01)
    assert shifted["p"] < 1e-6  # a constant shift: perfectly consistent across seeds
    # Pairing matters: the seed effect is large, the shift small and consistent.
    seed_effect = np.array([0.0, 0.05, -0.05, 0.03])
    x = 0.9 + seed_effect + np.array([0.002, 0.003, 0.002, 0.0025])
    y = 0.9 + seed_effect
    assert stats.paired_test(x, y)["p"] < 0.01
    assert scipy_stats.ttest_ind(x, y).pvalue > 0.5


def test_holm_by_hand():
    # sorted p: 0.01*3=0.03, 0.02*2=0.04, 0.04*1=0.04 (monotone), NaN untouched
    adjusted = stats.holm([0.04, 0.01, math.nan, 0.02])
    assert adjusted[[0, 1, 3]] == pytest.approx([0.04, 0.03, 0.04])
    assert math.isnan(adjusted[2])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def _pairs(rows):
    frame = pd.DataFrame(rows, columns=["a", "b", "p_holm"])
    frame["significant"] = frame["p_holm"] < 0.05
    return frame


def test_letter_groups():
    # a ~ b, b ~ c, a != c: letters a, ab, b
    pairs = _pairs([("x", "y", 0.3), ("x", "z", 0.01), ("y", "z", 0.2)])
    assert stats.letter_groups(["x", "y", "z"], pairs) == {"x": "a", "y": "ab", "z": "b"}
    all_same = _pairs([("x", "y", 0.3), ("x", "z", 0.4), ("y", "z", 0.2)])
    assert stats.letter_groups(["x", "y", "z"], all_same) == {"x": "a", "y": "a", "z": "a"}
    no_p = _pairs([("x", "y", math.nan)])
    assert stats.letter_groups(["x", "y"], no_p) == {}


def test_pipeline_on_fixture(tmp_path):
    run = read_run(write_run(tmp_path / "run", seeds=(0, 1, 2, 3), diverge=("tanh", 1)))
    results = stats.member_results(run.metrics)
    assert len(results) == 12 and results["diverged"].sum() == 1
    arms = stats.arm_results(results)
    summary = stats.summary_table(arms).set_index("arm")
    # tanh: the diverged seed 1 is excluded
    assert summary.loc["tanh", "n"] == 3 and summary.loc["tanh", "n_diverged"] == 1
    relu_final = run.metrics.query("activation == 'relu' and epoch == 4")["test_acc"]
    assert summary.loc["relu", "final_test_acc_mean"] == pytest.approx(relu_final.mean())
    ranking = stats.ranking(arms).set_index("arm")
    # tanh's diverged seed counts as a failure (0%): it ranks below sigmoid
    assert ranking.loc["relu", "rank"] == 1 and ranking.loc["sigmoid", "rank"] == 2
    assert ranking.loc["tanh", "rank"] == 3
    # 4 seeds: a sign-flip test cannot go below 2/2^4 = 0.125, so nothing is resolved
    assert ranking["tied_with_best"].all()
    pairs = stats.pairwise(arms)
    relu_tanh = pairs[(pairs["a"] == "relu") & (pairs["b"] == "tanh")].iloc[0]
    assert relu_tanh["n"] == 4  # the diverged seed is compared, as a failure of tanh
    assert relu_tanh["n_failed_b"] == 1 and relu_tanh["n_failed_a"] == 0


def test_single_seed_pipeline_has_no_groups(tmp_path):
    run = read_run(write_run(tmp_path / "run", seeds=(0,)))
    arms = stats.arm_results(stats.member_results(run.metrics))
    assert stats.pairwise(arms)["p"].isna().all()
    assert stats.ranking(arms)["group"].isna().all()


def test_lr_selection_never_reads_test_columns(tmp_path):
    run = read_run(write_run(tmp_path / "run", lrs=(3e-4, 1e-3, 3e-3), val_size=500, select="val"))
    results = stats.member_results(run.metrics)
    chosen = stats.select_lr(results)
    assert (chosen["lr"] == 1e-3).all()  # the fixture's best lr
    # Poison every test column: make lr=3e-3 look best on test by far. The choice stays.
    poisoned = run.metrics.copy()
    rng = np.random.default_rng(1)
    poisoned["test_acc"] = rng.permutation(poisoned["test_acc"].to_numpy())
    poisoned.loc[poisoned["lr"] == 3e-3, "test_acc"] = 1.0
    poisoned["test_loss"] = np.nan
    again = stats.select_lr(stats.member_results(poisoned))
    pd.testing.assert_frame_equal(chosen, again)
    # And it does follow the validation split: poison val instead, and the choice moves.
    moved = run.metrics.copy()
    moved.loc[moved["lr"] == 3e-3, "val_acc"] = 0.99
    assert (stats.select_lr(stats.member_results(moved))["lr"] == 3e-3).all()


def test_lr_selection_penalises_divergence():
    results = pd.DataFrame({
        "depth": [None] * 4, "activation": ["relu"] * 4, "lr": [1e-3, 1e-3, 1e-2, 1e-2],
        "seed": [0, 1, 0, 1], "val_score": [0.80, 0.80, 0.95, np.nan],
        "diverged": [False, False, False, True],
    })  # fmt: skip
    assert stats.select_lr(results)["lr"].iloc[0] == 1e-3  # (0.95 + 0) / 2 < 0.80
