"""How sure a comparison of paired seeds is: power, detectable gap, seeds to plan.

The power figures are those of the paired t-test (Cohen, "Statistical Power Analysis for
the Behavioral Sciences", 1988, ch. 2), which the sign-flip test the verdict uses
approaches as seeds grow; where the sign-flip test cannot reach a level at all with n seeds
(2 / 2^n >= level) the callers say so instead. Plans use an upper confidence limit of the
SD (Browne 1995), never the observed SD alone.
"""

from __future__ import annotations

import functools
import math

from scipy import optimize
from scipy import stats as scipy_stats

from actlab.report.signflip import seeds_to_reach

ALPHA = 0.05
# The power at which the detectable gap and the seeds needed are stated (the usual 80%).
POWER = 0.80
# Below this many seeds, intervals and tests rest on at most 3 degrees of freedom: the
# report and the CLI say so next to them and show the per-seed values; no plan asks for
# fewer.
SMALL_N = 5
# The search for the seeds needed stops here ("more than 10000 seeds").
MAX_SEEDS = 10_000


def paired_t_power(effect: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test of `n` pairs at level `alpha` when the true mean
    difference is `effect` standard deviations of the differences (effect = delta / sigma).

    T = mean(d) / (s / sqrt(n)) follows the noncentral t with n - 1 degrees of freedom and
    noncentrality nc = effect * sqrt(n); with c = t_{1-alpha/2, n-1} (Cohen 1988, ch. 2):

        power = P(T > c) + P(T < -c) = nct.sf(c, n - 1, nc) + nct.sf(c, n - 1, -nc)

    (the second term by symmetry: scipy's nct.cdf returns NaN far in the lower tail).
    NaN for n < 2 (no test)."""
    if n < 2:
        return math.nan
    df = n - 1
    nc = abs(effect) * math.sqrt(n)
    critical = float(scipy_stats.t.ppf(1 - alpha / 2, df))
    return float(scipy_stats.nct.sf(critical, df, nc) + scipy_stats.nct.sf(critical, df, -nc))


@functools.lru_cache(maxsize=4096)
def detectable_effect(n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true effect (delta / sigma) that the paired t-test of `n` pairs at level
    `alpha` detects with probability `power`: the root in effect of
    paired_t_power(effect, n, alpha) = power (the power rises with the effect). inf for n < 2."""
    if n < 2:
        return math.inf
    if not alpha < power < 1:
        raise ValueError(f"power must be in (alpha, 1), got {power}")
    high = 1.0
    while paired_t_power(high, n, alpha) < power:
        high *= 2
    return float(
        optimize.brentq(
            lambda effect: paired_t_power(effect, n, alpha) - power, 0.0, high, xtol=1e-12
        )
    )


def detectable_gap(std: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true gap the paired t-test of `n` seeds detects with probability `power`
    at level `alpha`, if the SD of the paired differences is `std`: std * detectable_effect.
    NaN when `std` is unknown (n < 2)."""
    if n < 2 or _missing(std):
        return math.nan
    return float(std) * detectable_effect(int(n), alpha, power)


def seeds_needed(
    gap: float,
    std: float,
    alpha: float = ALPHA,
    power: float = POWER,
    max_seeds: int = MAX_SEEDS,
) -> float:
    """The number of seeds whose paired t-test at level `alpha` detects a true gap `gap`
    with probability `power`, if the SD of the paired differences is `std`:

        min { n >= 2 : paired_t_power(gap / std, n, alpha) >= power }
          = min { n >= 2 : detectable_effect(n, alpha, power) <= gap / std }

    (the power rises with n at a fixed effect, so a doubling search then bisection over n
    finds it). inf when more than `max_seeds` would be needed; NaN when `std` is unknown."""
    if _missing(std) or _missing(gap):
        return math.nan
    if std == 0:
        return 2.0 if gap != 0 else math.inf
    effect = abs(gap) / std

    def enough(n: int) -> bool:
        return detectable_effect(n, alpha, power) <= effect

    return _smallest_n(enough, 2, max_seeds)  # no test with one seed


# --- seed plans: from an upper confidence limit of the SD ---------------------------------

# The SD of the paired differences that a plan assumes: its one-sided 80% upper limit, so
# that an SD that came out small by chance (likely with few seeds) does not promise power.
PLAN_CONFIDENCE = 0.80


def sd_upper_limit(std: float, n: int, confidence: float = PLAN_CONFIDENCE) -> float:
    """One-sided upper confidence limit of a normal SD from the sample SD of n values
    (Browne, "On the use of a pilot sample for sample size determination", Stat. Med. 14,
    1995):  s * sqrt((n - 1) / chi2_{1 - confidence, n - 1}).  At 80% the factor is 3.95,
    2.12 and 1.56 at 2, 3 and 5 seeds. NaN for n < 2."""
    if n < 2 or _missing(std):
        return math.nan
    df = n - 1
    return float(std) * math.sqrt(df / float(scipy_stats.chi2.ppf(1 - confidence, df)))


def tost_power(effect: float, n: int, alpha: float = ALPHA) -> float:
    """A lower bound on the power of TOST at level `alpha` for n pairs when the true gap is
    0 and the margin is `effect` SDs of the differences: each one-sided test rejects with
    probability nct.sf(t_{1-alpha, n-1}, n - 1, effect sqrt(n)), and both do with at least
    twice that minus 1 (Bonferroni). 0 when that is negative; NaN for n < 2."""
    if n < 2:
        return math.nan
    df = n - 1
    critical = float(scipy_stats.t.ppf(1 - alpha, df))
    one = float(scipy_stats.nct.sf(critical, df, abs(effect) * math.sqrt(n)))
    return max(0.0, 2 * one - 1)


def _smallest_n(enough, start: int, max_seeds: int) -> float:
    """min {n >= start : enough(n)} for an `enough` that stays true once true (doubling, then
    bisection); inf beyond `max_seeds`."""
    if enough(start):
        return float(start)
    low, high = start, start
    while not enough(high):
        if high >= max_seeds:
            return math.inf
        low, high = high, min(2 * high, max_seeds)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return float(high)


def seed_plan(gap: float, std: float, n: int, level: float, power: float = POWER) -> float:
    """The seeds to plan to detect `gap` at `level` with `power`, from an n-seed study whose
    paired differences had SD `std`: `seeds_needed` at the SD's 80% upper limit
    (`sd_upper_limit`), and never fewer than SMALL_N nor than the sign-flip test needs to
    reach p < level at all (`seeds_to_reach`). The t-test's power stands in for the
    sign-flip test's (the two agree as seeds grow; benchmarks/stats_power.py measures the
    plan's real power). NaN when unknown."""
    upper = sd_upper_limit(std, n)
    needed = seeds_needed(gap, upper, level, power)
    if _missing(needed):
        return math.nan
    return max(needed, float(SMALL_N), float(seeds_to_reach(level)))


def seeds_for_equivalence(
    margin: float,
    std: float,
    level: float = ALPHA,
    power: float = POWER,
    max_seeds: int = MAX_SEEDS,
) -> float:
    """The seeds whose TOST at `level` shows equivalence within +-`margin` with `power` when
    the true gap is 0 and the SD of the paired differences is `std` (`tost_power`), never
    fewer than SMALL_N nor than the one-sided sign-flip test needs to reach p < level.
    inf beyond `max_seeds`; NaN when unknown."""
    if _missing(std) or _missing(margin):
        return math.nan
    start = max(SMALL_N, seeds_to_reach(level, two_sided=False))
    if std == 0:
        return float(start)
    effect = abs(margin) / std
    return _smallest_n(lambda n: tost_power(effect, n, level) >= power, start, max_seeds)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
