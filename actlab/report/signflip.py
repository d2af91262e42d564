"""The sign-flip permutation test of paired differences, and the intervals that invert it.

Why not the paired t-test: accuracy is a count over a fixed test set, so paired differences
are multiples of 1 / N_test and are often all equal at a few seeds; the t statistic is then
infinite and p = 0 ("significant" from 3 seeds that each differ by 2 images). The sign-flip
test needs only that each difference is as likely to have been the other sign under H0, is
exact at every n for quantised and heavy-tailed differences, and cannot give p < 2 / 2^n:
it states what n seeds can support and no more.

References: Fisher, "The Design of Experiments" (1935), ch. 21 (the sign-flip test);
Hodges & Lehmann, "Estimates of location based on rank tests", Ann. Math. Stat. 34 (1963)
(intervals by inverting a test); Phipson & Smyth, "Permutation p-values should never be
zero", Stat. Appl. Genet. Mol. Biol. 9 (2010) (drawn permutations, identity included);
Schuirmann (1987) for TOST.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

# Up to this many seeds every one of the 2^n sign vectors is enumerated (65,536 at 16);
# beyond, FLIP_DRAWS vectors are drawn with a fixed seed (the identity among them), so that
# the same numbers give the same p.
EXACT_FLIPS = 16
FLIP_DRAWS = 2**16
FLIP_SEED = 0
# Differences within this much of each other count as tied (accuracies are fractions; their
# differences are multiples of 1 / N_test, far above float rounding). A tie counts as "at
# least as extreme", the conservative side.
TIE = 1e-9


@functools.lru_cache(maxsize=16)  # 1 MB at 16 seeds, 6.5 MB at 100
def sign_vectors(n: int) -> np.ndarray:
    """The sign vectors of a sign-flip test of `n` paired differences, shape (B, n), row 0
    the identity: all 2^n for n <= EXACT_FLIPS, else FLIP_DRAWS - 1 random ones (seed
    FLIP_SEED) after the identity."""
    if n <= EXACT_FLIPS:
        codes = np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n)[None, :]
        return np.where(codes & 1, -1, 1).astype(np.int8)
    rng = np.random.default_rng(FLIP_SEED)
    drawn = rng.choice(np.array([-1, 1], dtype=np.int8), size=(FLIP_DRAWS - 1, n))
    return np.vstack([np.ones((1, n), dtype=np.int8), drawn])


@functools.lru_cache(maxsize=16)
def _mean_signs(n: int) -> np.ndarray:
    return sign_vectors(n).mean(axis=1)


def _flip_thresholds(diff: np.ndarray) -> tuple[np.ndarray, int, int]:
    """`_thresholds` of `diff`, remembered: a pair's p, interval and TOST share them."""
    return _thresholds(np.ascontiguousarray(diff, dtype=float).tobytes())


@functools.lru_cache(maxsize=256)
def _thresholds(key: bytes) -> tuple[np.ndarray, int, int]:
    """For the shift delta, the flipped mean T_s(delta) = mean(s (d - delta)) is at least the
    observed T(delta) = mean(d) - delta iff delta >= c_s and at most it iff delta <= c_s, with

        c_s = (mean(d) - mean(s d)) / (1 - mean(s))        (every s but the identity)

    so both one-sided p-values are counts of thresholds: p_ge(delta) = (k + #{c_s <= delta}) / B
    and p_le(delta) = (k + #{c_s >= delta}) / B, k the vectors equal to the identity.
    Returns (sorted c_s, k, B)."""
    diff = np.frombuffer(key, dtype=float)
    signs = sign_vectors(len(diff))
    mean_sign = _mean_signs(len(diff))
    flipped = signs @ diff / len(diff)
    moving = mean_sign < 1
    c = (diff.mean() - flipped[moving]) / (1 - mean_sign[moving])
    c[np.abs(c) < TIE] = 0.0  # a tie with delta = 0 is exactly a tie
    c = np.sort(c)
    c.setflags(write=False)  # shared by the callers of the cache
    return c, int((~moving).sum()), len(signs)


def _one_sided(c: np.ndarray, always: int, total: int, delta: float) -> tuple[float, float]:
    """(p_ge, p_le) at `delta`: evidence for mean > delta and for mean < delta."""
    p_ge = (always + np.searchsorted(c, delta + TIE, side="right")) / total
    p_le = (always + len(c) - np.searchsorted(c, delta - TIE, side="left")) / total
    return float(p_ge), float(p_le)


def _bounds(c: np.ndarray, always: int, total: int, tail: float) -> tuple[float, float]:
    """The one-sided (1 - tail) lower and upper confidence bounds of the mean: the shifts
    delta that the one-sided tests at level `tail` do not reject, {delta: p(delta) > tail},
    an order statistic of the thresholds; infinite when no p can be that small."""
    k = math.floor(tail * total) - always + 1
    if k <= 0:
        return -math.inf, math.inf
    return float(c[k - 1]), float(c[-k])


def _differences(diff: Sequence[float] | np.ndarray) -> np.ndarray:
    diff = np.asarray(diff, dtype=float)
    return diff[~np.isnan(diff)]


def sign_flip_test(diff: Sequence[float] | np.ndarray, confidence: float = 0.95) -> dict:
    """Exact sign-flip permutation test of paired differences d_1..d_n (Fisher 1935, ch. 21;
    Good, "Permutation, Parametric and Bootstrap Tests of Hypotheses", 2005, ch. 3).

    Under H0 (the two arms are exchangeable within a seed) each d_i is as likely to be
    -d_i, so mean(d) is compared with mean(s d) over the sign vectors s:

        p = #{s : |mean(s d)| >= |mean(d)|} / 2^n   (= 2 min(p_ge, p_le), capped at 1)

    Exact at any n, for any symmetric distribution, quantised accuracies and heavy tails
    included; p >= 2 / 2^n, so 2 seeds never give p < 0.5 and 5 seeds never p < 0.0625.
    The interval is the set of shifts delta the test does not reject at 1 - confidence
    (Hodges & Lehmann 1963), which assumes the d_i are symmetric about their mean: infinite
    when 2 / 2^n > 1 - confidence. Returns n, mean_diff, std, p, ci_low, ci_high."""
    d = _differences(diff)
    n = len(d)
    if n < 2:
        mean = float(d.mean()) if n else math.nan
        return {"n": n, "mean_diff": mean, "std": math.nan, "p": math.nan,
                "ci_low": math.nan, "ci_high": math.nan}  # fmt: skip
    c, always, total = _flip_thresholds(d)
    p_ge, p_le = _one_sided(c, always, total, 0.0)
    low, high = _bounds(c, always, total, (1 - confidence) / 2)
    return {"n": n, "mean_diff": float(d.mean()), "std": float(d.std(ddof=1)),
            "p": min(1.0, 2 * min(p_ge, p_le)), "ci_low": low, "ci_high": high}  # fmt: skip


def sign_flip_tost(diff: Sequence[float] | np.ndarray, margin: float, tail: float = 0.05) -> dict:
    """Equivalence (TOST, Schuirmann 1987) with sign-flip tests in place of t-tests:

        p_lower = p_ge(-margin)   (H0: mean <= -margin, the d_i + margin flipped)
        p_upper = p_le(+margin)   (H0: mean >= +margin)
        p = max(p_lower, p_upper)

    Equivalent at level `tail` iff p < tail, that is iff the (1 - 2 tail) interval [low,
    high] (returned) lies inside (-margin, +margin). p >= 1 / 2^n: 4 seeds can never show
    equivalence at 5%. Assumes the d_i are symmetric about their mean."""
    d = _differences(diff)
    n = len(d)
    if n < 2:
        return {"n": n, "p_lower": math.nan, "p_upper": math.nan, "p": math.nan,
                "low": math.nan, "high": math.nan}  # fmt: skip
    c, always, total = _flip_thresholds(d)
    p_lower = _one_sided(c, always, total, -margin)[0]
    p_upper = _one_sided(c, always, total, margin)[1]
    low, high = _bounds(c, always, total, tail)
    return {"n": n, "p_lower": p_lower, "p_upper": p_upper, "p": max(p_lower, p_upper),
            "low": low, "high": high}  # fmt: skip


def smallest_p(n: int, two_sided: bool = True) -> float:
    """The smallest p a sign-flip test of `n` differences can give: 2 / 2^n (1 / 2^n one-sided)."""
    if n < 1:
        return 1.0
    total = len(sign_vectors(n)) if n <= EXACT_FLIPS else FLIP_DRAWS
    return (2.0 if two_sided else 1.0) / total


def seeds_to_reach(level: float, two_sided: bool = True) -> int:
    """The fewest seeds whose sign-flip test can give p < `level` at all."""
    n = 2
    while smallest_p(n, two_sided) >= level and n < 64:
        n += 1
    return n
