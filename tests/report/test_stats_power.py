"""Power, detectable gap, seeds needed and TOST against independent references.

References: the power of the two-sided t-test by direct numerical integration over the
chi-square distribution of the sample variance (no noncentral t involved); statsmodels'
TTestPower and ttost_paired; G*Power's published sample size for a paired t-test; the
closed-form t CDF with 2 degrees of freedom, F(t) = 1/2 + t / (2 sqrt(t^2 + 2)), for TOST
by hand."""

import math

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as scipy_stats
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

from actlab.report import stats

HOLM_6 = 0.05 / 6


def power_by_integration(effect: float, n: int, alpha: float) -> float:
    """P(|T| > c) with T = (Z + nc) / sqrt(V / df), Z ~ N(0, 1), V ~ chi2(df): average
    P(Z > c sqrt(v/df) - nc) + P(Z < -c sqrt(v/df) - nc) over V, as an integral over its
    quantiles v = F^-1(u), u in (0, 1) (so the mass is found whatever df)."""
    df = n - 1
    critical = scipy_stats.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n)

    def integrand(u: float) -> float:
        scale = critical * math.sqrt(scipy_stats.chi2.ppf(u, df) / df)
        return scipy_stats.norm.cdf(nc - scale) + scipy_stats.norm.cdf(-nc - scale)

    return integrate.quad(integrand, 0, 1, limit=200, epsabs=1e-12, epsrel=1e-10)[0]


@pytest.mark.parametrize(
    ("effect", "n", "alpha"),
    [(0.5, 34, 0.05), (0.8, 15, 0.05), (2.0, 3, HOLM_6), (1.0, 10, HOLM_6), (8.0, 3, HOLM_6),
     (0.3, 50, 0.01), (3.0, 2, 0.05), (0.0, 5, 0.05)],
)  # fmt: skip
def test_power_matches_integration_and_statsmodels(effect, n, alpha):
    power = stats.paired_t_power(effect, n, alpha)
    assert power == pytest.approx(power_by_integration(effect, n, alpha), rel=1e-7, abs=1e-10)
    assert power == pytest.approx(TTestPower().power(effect, n, alpha), rel=1e-9)
    assert stats.paired_t_power(-effect, n, alpha) == pytest.approx(power)  # two-sided


def test_power_at_zero_effect_is_alpha_and_one_seed_has_none():
    assert stats.paired_t_power(0.0, 7, 0.05) == pytest.approx(0.05)
    assert math.isnan(stats.paired_t_power(1.0, 1, 0.05))


def test_issue_example_three_seeds_holm_six_pairs_has_about_ten_percent_power():
    # "at n = 3 with Holm over 6 pairs a paired test has about 10% power even for a gap
    # twice the SD of the per-seed differences"
    assert stats.paired_t_power(2.0, 3, HOLM_6) == pytest.approx(0.1023, abs=5e-4)


def test_gpower_published_sample_size():
    # G*Power 3, matched pairs, d = 0.5, alpha 0.05 two-tailed, power 0.80: N = 34
    # (actual power 0.8078); d = 0.8: N = 15 (0.8213).
    assert stats.seeds_needed(0.5, 1.0, 0.05) == 34
    assert stats.seeds_needed(0.8, 1.0, 0.05) == 15
    assert stats.paired_t_power(0.5, 34, 0.05) == pytest.approx(0.8078, abs=1e-4)


@pytest.mark.parametrize("n", [2, 3, 5, 10, 34, 200])
def test_detectable_effect_has_exactly_the_power(n):
    effect = stats.detectable_effect(n, HOLM_6)
    assert power_by_integration(effect, n, HOLM_6) == pytest.approx(0.80, abs=1e-7)
    # and a smaller effect falls short: it is the smallest
    assert power_by_integration(0.99 * effect, n, HOLM_6) < 0.80
    if n >= 5:  # statsmodels' power is NaN at n = 2, 3 here: scipy's nct.cdf far in the lower
        # tail (the reason paired_t_power uses nct.sf(c, df, -nc) for that term)
        assert TTestPower().power(effect, n, HOLM_6) == pytest.approx(0.80, abs=1e-9)
    # the detectable gap scales with the SD of the paired differences
    assert stats.detectable_gap(0.004, n, HOLM_6) == pytest.approx(0.004 * effect)


@pytest.mark.parametrize(("gap", "std"), [(0.003, 0.004), (0.003, 0.001), (0.005, 0.0035),
                                          (0.001, 0.004), (0.02, 0.001)])  # fmt: skip
def test_seeds_needed_is_the_smallest_n_with_the_power(gap, std):
    n = stats.seeds_needed(gap, std, HOLM_6)
    assert n >= 2 and float(n).is_integer()
    reference = TTestPower()
    assert reference.power(gap / std, int(n), HOLM_6) >= 0.80
    if n > 2:
        assert reference.power(gap / std, int(n) - 1, HOLM_6) < 0.80
    # the continuous solution rounds up to it (statsmodels' root finder is reliable here)
    if n > 10:
        exact = reference.solve_power(effect_size=gap / std, alpha=HOLM_6, power=0.80)
        assert n == math.ceil(exact)


def test_seeds_needed_edges():
    assert stats.seeds_needed(0.001, 0.01, HOLM_6, max_seeds=50) == math.inf
    assert math.isnan(stats.seeds_needed(0.003, math.nan))
    assert stats.seeds_needed(0.003, 0.0) == 2
    assert math.isnan(stats.detectable_gap(math.nan, 3))


def test_tost_by_hand_with_two_degrees_of_freedom():
    # d = (0.3, 0.1, 0.2): mean 0.2, sd 0.1, se 0.1 / sqrt(3); margin 0.5.
    a = np.array([10.3, 10.1, 10.2])
    b = np.array([10.0, 10.0, 10.0])
    se = 0.1 / math.sqrt(3)

    def cdf2(t):  # Student t with 2 degrees of freedom, closed form
        return 0.5 + t / (2 * math.sqrt(t * t + 2))

    result = stats.tost(a, b, 0.5)
    assert result["n"] == 3
    assert result["p_lower"] == pytest.approx(1 - cdf2((0.2 + 0.5) / se), rel=1e-6)
    assert result["p_upper"] == pytest.approx(cdf2((0.2 - 0.5) / se), rel=1e-6)
    # t_upper = -0.3 / se = -3 sqrt(3), so p = 1/2 - 3 sqrt(3) / (2 sqrt(29)) = 0.017549
    assert result["p"] == pytest.approx(0.5 - 3 * math.sqrt(3) / (2 * math.sqrt(29)), rel=1e-9)
    # Equivalence at 5% iff the 90% interval [0.031, 0.369] is inside the margin.
    half = scipy_stats.t.ppf(0.95, 2) * se
    assert 0.2 + half == pytest.approx(0.36858, abs=1e-5)
    assert stats.tost(a, b, 0.37)["p"] < 0.05 < stats.tost(a, b, 0.36)["p"]
    # statsmodels' own TOST for paired samples agrees
    reference = ttost_paired(a, b, -0.5, 0.5)
    assert result["p"] == pytest.approx(reference[0], rel=1e-9)


def test_tost_edges():
    same = np.array([0.9, 0.91, 0.92])
    assert stats.tost(same + 0.001, same, 0.005)["p"] == 0.0  # a constant shift inside
    assert stats.tost(same + 0.01, same, 0.005)["p"] == 1.0  # ... and outside the margin
    assert math.isnan(stats.tost([0.9], [0.8], 0.005)["p"])
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.9, 0.01, 8), rng.normal(0.9, 0.01, 8)
    assert stats.tost(a, b, 0.004)["p"] == pytest.approx(ttost_paired(a, b, -0.004, 0.004)[0])


def _arms(values: dict[str, list[float]]):
    import pandas as pd

    rows = [
        (None, arm, arm, 1e-3, seed, False, value)
        for arm, series in values.items()
        for seed, value in enumerate(series)
    ]
    columns = ["depth", "arm", "activation", "lr", "seed", "diverged", "final_test_acc"]
    return pd.DataFrame(rows, columns=columns)


def one_sided_flip_p(shifted):
    """P(mean(s x) >= mean(x)) over all sign vectors s, by enumeration (ties count)."""
    import itertools

    observed = shifted.mean()
    flips = [
        (np.array(s) * shifted).mean() for s in itertools.product((1, -1), repeat=len(shifted))
    ]
    return sum(f >= observed - 1e-12 for f in flips) / len(flips)


def test_pairwise_columns_follow_the_functions():
    rng = np.random.default_rng(7)
    seed = rng.normal(0, 0.003, 8)
    arms = _arms({
        "relu": 0.88 + seed + rng.normal(0, 0.002, 8),
        "tanh": 0.879 + seed + rng.normal(0, 0.002, 8),
        "sigmoid": 0.87 + seed + rng.normal(0, 0.002, 8),
    })  # fmt: skip
    pairs = stats.pairwise(arms, margin=0.005)
    assert list(pairs["level"]) == pytest.approx([0.05 / 3] * 3)
    values = arms.pivot(index="seed", columns="arm", values="final_test_acc")
    for row in pairs.itertuples():
        d = (values[row.a] - values[row.b]).to_numpy()
        assert row.mean_diff >= 0 and row.std == pytest.approx(d.std(ddof=1))
        assert row.detectable_gap == pytest.approx(row.std * stats.detectable_effect(8, 0.05 / 3))
        assert row.seeds_needed == stats.seed_plan(0.005, row.std, 8, 0.05 / 3)
        # TOST by enumeration: H0 mean <= -0.005 and H0 mean >= +0.005, one-sided flips
        p_lower = one_sided_flip_p(d + 0.005)
        p_upper = one_sided_flip_p(-(d - 0.005))
        assert row.tost_p == pytest.approx(max(p_lower, p_upper))
    assert list(pairs["tost_p_holm"]) == pytest.approx(list(stats.holm(pairs["tost_p"])))
    assert list(pairs["equivalent"]) == list(pairs["tost_p_holm"] < 0.05)
    no_margin = stats.pairwise(arms)
    assert no_margin["tost_p"].isna().all() and not no_margin["equivalent"].any()
    assert no_margin["seeds_needed"].isna().all() and no_margin["detectable_gap"].notna().all()
    # 6 seeds: no sign-flip p can be below 2/2^6 = 0.031 > 0.05/3: nothing is detectable
    six = stats.pairwise(arms[arms["seed"] < 6], margin=0.005)
    assert np.isinf(six["detectable_gap"]).all() and not six["significant"].any()
