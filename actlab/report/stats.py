"""Statistics over seeds: which differences between activations are real.

Pure functions on the metrics table of a run directory (see docs/run-directory.md). The
unit of replication is the seed; the members of one seed share the initial weights and the
batch order, so comparisons between activations are *paired* by seed.

Vocabulary:
- a *member* is one trained network, identified by (depth, activation, lr, seed);
- an *arm* is what is compared: an activation (at its selected lr when lrs were swept),
  at one depth. Each arm has one member per seed.

How pairs are judged (`pairwise`; docs/statistics.md says what each claim means):
- the test is the exact sign-flip permutation test of the paired differences
  (actlab.report.signflip), valid for accuracies quantised by a small test set; Holm over
  all pairs; each claim beside the interval that matches it;
- a diverged member counts as a failure (0% accuracy) of its arm, and each pair is read in
  the direction of its own mean;
- how sure (actlab.report.power): the *detectable gap*, the *seeds to plan* for the
  smallest gap that matters (`--min-gap`) from an upper confidence limit of the SD, and
  *equivalence* by TOST against +-min-gap, so that "no difference found" is never read as
  "equal" unless the data support it.

`paired_test` and `tost` are the paired t-test and t-TOST, kept as references (the
benchmark compares the old rule with the new one); the verdict does not use them.

References: Student's t interval and paired t-test (any statistics textbook; `scipy.stats`);
Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Stat. 6 (1979);
Piepho, "An algorithm for a letter-based representation of all-pairwise comparisons",
J. Comput. Graph. Stat. 13 (2004); power of the t-test through the noncentral t:
Cohen, "Statistical Power Analysis for the Behavioral Sciences" (1988), ch. 2; TOST:
Schuirmann, "A comparison of the two one-sided tests procedure and the power approach for
assessing the equivalence of average bioavailability", J. Pharmacokinet. Biopharm. 15 (1987).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

# The statistics' one entry: what its callers use from the modules below is re-exported.
from actlab.report.power import (  # noqa: F401
    ALPHA,
    MAX_SEEDS,
    PLAN_CONFIDENCE,
    POWER,
    SMALL_N,
    detectable_effect,
    detectable_gap,
    paired_t_power,
    sd_upper_limit,
    seed_plan,
    seeds_for_equivalence,
    seeds_needed,
    tost_power,
)
from actlab.report.signflip import (  # noqa: F401
    seeds_to_reach,
    sign_flip_test,
    sign_flip_tost,
    smallest_p,
)

CONFIDENCE = 0.95
# The lr selection score averages the validation accuracy over the last few epochs, so
# that one noisy final epoch does not decide the choice.
SELECTION_LAST_EPOCHS = 3

MEMBER_KEY = ["depth", "activation", "lr", "seed"]
ARM_KEY = ["depth", "activation", "lr"]
# Per-member metrics summarised over seeds, with the words the report uses for them.
SUMMARY_METRICS = {
    "final_test_acc": "final test accuracy",
    "best_test_acc": "best-epoch test accuracy",
    "final_test_loss": "final test loss",
}


@dataclass(frozen=True)
class Interval:
    """Mean, sample standard deviation (ddof=1) and a t confidence interval of a sample.

    CI = mean +- t_{1-(1-c)/2, n-1} * std / sqrt(n). With n = 1 there is no spread and no
    interval: std, ci_low and ci_high are NaN (never a made-up interval)."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student-t confidence interval of `values` (NaNs dropped)."""
    sample = np.asarray(values, dtype=float)
    sample = sample[~np.isnan(sample)]
    n = len(sample)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(sample.mean())
    if n == 1:
        return Interval(1, mean, math.nan, math.nan, math.nan)
    std = float(sample.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """Paired t-test of two arms measured on the same seeds, d_i = a_i - b_i (a reference:
    the verdict uses `sign_flip_test`, which stays valid when every d_i is equal).

    Returns n, mean_diff, std, ci_low, ci_high (t interval of d) and p (two-sided paired
    t-test, t = mean(d) / (std(d) / sqrt(n)), n - 1 degrees of freedom). With n < 2, p and
    the interval are NaN. When every d_i is exactly 0 the samples are equal and p = 1 (the
    t statistic is 0/0 there)."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    diff = diff[~np.isnan(diff)]
    interval = t_interval(diff, confidence)
    p = math.nan
    if interval.n >= 2:
        if np.all(diff == 0):
            p = 1.0
        elif interval.std == 0:
            p = 0.0  # a constant non-zero shift: t is infinite
        else:
            t = interval.mean / (interval.std / math.sqrt(interval.n))
            p = float(2 * scipy_stats.t.sf(abs(t), interval.n - 1))
    return {
        "n": interval.n,
        "mean_diff": interval.mean,
        "std": interval.std,
        "ci_low": interval.ci_low,
        "ci_high": interval.ci_high,
        "p": p,
    }


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaNs stay NaN and do not count as tests).

    With the m p-values sorted, p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    running = 0.0
    for rank, index in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def tost(a: Sequence[float], b: Sequence[float], margin: float) -> dict:
    """Equivalence of two arms paired by seed: t-TOST (Schuirmann 1987) on d_i = a_i - b_i (a
    reference: the verdict uses `sign_flip_tost`).

    H0: |mu_d| >= margin against H1: |mu_d| < margin, as two one-sided t-tests with n - 1
    degrees of freedom and se = std(d) / sqrt(n):

        p_lower = P(T >= (mean(d) + margin) / se)   (H0: mu_d <= -margin)
        p_upper = P(T <= (mean(d) - margin) / se)   (H0: mu_d >= +margin)
        p = max(p_lower, p_upper)

    Equivalence at level alpha iff p < alpha, that is iff the (1 - 2 alpha) t interval of
    mean(d) lies inside (-margin, +margin). Returns n, p_lower, p_upper, p; NaN for n < 2.
    With every d_i equal (std 0) p is 0 inside the margin and 1 outside."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    diff = diff[~np.isnan(diff)]
    n = len(diff)
    if n < 2:
        return {"n": n, "p_lower": math.nan, "p_upper": math.nan, "p": math.nan}
    mean = float(diff.mean())
    std = float(diff.std(ddof=1))
    if std == 0:
        inside = abs(mean) < margin
        p_lower = 0.0 if mean > -margin else 1.0
        p_upper = 0.0 if mean < margin else 1.0
        return {"n": n, "p_lower": p_lower, "p_upper": p_upper, "p": 0.0 if inside else 1.0}
    se = std / math.sqrt(n)
    p_lower = float(scipy_stats.t.sf((mean + margin) / se, n - 1))
    p_upper = float(scipy_stats.t.cdf((mean - margin) / se, n - 1))
    return {"n": n, "p_lower": p_lower, "p_upper": p_upper, "p": max(p_lower, p_upper)}


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# --- per member ---------------------------------------------------------------------------


def member_results(metrics: pd.DataFrame, last_epochs: int = SELECTION_LAST_EPOCHS) -> pd.DataFrame:
    """One row per member: its final and best-epoch numbers, and whether it diverged.

    Columns: depth, activation, lr, seed, epochs, final_test_acc, best_test_acc, best_epoch,
    final_test_loss (and final_test_metric when metrics.csv has the model's own metric),
    final_train_loss, final_val_acc, val_score (mean val_acc over the last
    `last_epochs` epochs), total_time_s, diverged, diverged_epoch. `best_test_acc` is chosen
    on the test split, so it is optimistic; it is shown because tutorials quote it."""
    rows = []
    for key, group in metrics.groupby(MEMBER_KEY, dropna=False, sort=False):
        group = group.sort_values("epoch")
        failed = group[group["status"] == "diverged"]
        good = group[group["status"] != "diverged"]
        row = dict(zip(MEMBER_KEY, key, strict=True))
        row["depth"] = None if pd.isna(row["depth"]) else int(row["depth"])
        row["epochs"] = int(good["epoch"].max()) if len(good) else 0
        row["diverged"] = len(failed) > 0
        row["diverged_epoch"] = int(failed["epoch"].min()) if len(failed) else None
        last = good.iloc[-1] if len(good) else None
        best = good.loc[good["test_acc"].idxmax()] if good["test_acc"].notna().any() else None
        row["final_test_acc"] = math.nan if last is None else float(last["test_acc"])
        row["final_test_loss"] = math.nan if last is None else float(last["test_loss"])
        if "test_metric" in group:  # a study compared on the model's own metric function
            row["final_test_metric"] = math.nan if last is None else float(last["test_metric"])
        row["final_train_loss"] = math.nan if last is None else float(last["train_loss"])
        row["final_val_acc"] = math.nan if last is None else float(last["val_acc"])
        row["best_test_acc"] = math.nan if best is None else float(best["test_acc"])
        row["best_epoch"] = None if best is None else int(best["epoch"])
        tail = good["val_acc"].tail(last_epochs)
        row["val_score"] = float(tail.mean()) if tail.notna().any() else math.nan
        row["total_time_s"] = float(group.drop_duplicates("epoch")["epoch_time_s"].sum())
        rows.append(row)
    columns = [*MEMBER_KEY, "epochs", "final_test_acc", "best_test_acc", "best_epoch",
               "final_test_loss", "final_train_loss", "final_val_acc", "val_score",
               "total_time_s", "diverged", "diverged_epoch"]  # fmt: skip
    if "test_metric" in metrics:
        columns.insert(columns.index("final_test_loss") + 1, "final_test_metric")
    return pd.DataFrame(rows, columns=columns)


# --- learning-rate selection --------------------------------------------------------------


def select_lr(results: pd.DataFrame) -> pd.DataFrame:
    """Each (depth, activation)'s best lr, chosen on the VALIDATION split only.

    Score of an lr = mean over seeds of `val_score` (the member's val accuracy averaged over
    its last SELECTION_LAST_EPOCHS epochs); a diverged member scores 0, so an lr that is
    unstable on some seeds is penalised. Ties go to the smaller lr. Only the columns
    depth, activation, lr, seed, val_score and diverged are read: test numbers cannot
    leak into the choice. Returns depth, activation, lr, score, n_seeds, n_diverged."""
    visible = results[[*MEMBER_KEY, "val_score", "diverged"]].copy()
    visible["score"] = np.where(visible["diverged"], 0.0, visible["val_score"])
    rows = []
    for (depth, activation), group in visible.groupby(
        ["depth", "activation"], dropna=False, sort=False
    ):
        per_lr = group.groupby("lr").agg(
            score=("score", "mean"), n_seeds=("seed", "size"), n_diverged=("diverged", "sum")
        )
        per_lr = per_lr.reset_index().sort_values(["score", "lr"], ascending=[False, True])
        chosen = per_lr.iloc[0]
        rows.append({"depth": depth, "activation": activation, "lr": float(chosen["lr"]),
                     "score": float(chosen["score"]), "n_seeds": int(chosen["n_seeds"]),
                     "n_diverged": int(chosen["n_diverged"])})  # fmt: skip
    return pd.DataFrame(
        rows, columns=["depth", "activation", "lr", "score", "n_seeds", "n_diverged"]
    )


def lr_sensitivity(results: pd.DataFrame) -> pd.DataFrame:
    """Validation score per (depth, activation, lr) over seeds (non-diverged members):
    depth, activation, lr, n, mean, ci_low, ci_high, n_diverged."""
    rows = []
    for (depth, activation, lr), group in results.groupby(ARM_KEY, dropna=False, sort=True):
        interval = t_interval(group.loc[~group["diverged"], "val_score"])
        rows.append({"depth": depth, "activation": activation, "lr": lr, "n": interval.n,
                     "mean": interval.mean, "ci_low": interval.ci_low,
                     "ci_high": interval.ci_high, "n_diverged": int(group["diverged"].sum())})  # fmt: skip
    return pd.DataFrame(
        rows, columns=["depth", *ARM_KEY[1:], "n", "mean", "ci_low", "ci_high", "n_diverged"]
    )


# --- arms and their comparison ------------------------------------------------------------


def arm_results(results: pd.DataFrame, selected: pd.DataFrame | None = None) -> pd.DataFrame:
    """The members that are compared, with an `arm` label column.

    With `selected` (from `select_lr`), each activation keeps only its selected lr and the
    arm is the activation. Otherwise every (activation, lr) is an arm, labelled
    "relu" with one lr or "relu @ lr=0.001" with several."""
    frame = results.copy()
    if selected is not None:
        keep = selected[["depth", "activation", "lr"]].copy()
        keep["depth"] = keep["depth"].astype(object)
        frame["depth"] = frame["depth"].astype(object)
        frame = frame.merge(keep, on=["depth", "activation", "lr"], how="inner")
        frame["arm"] = frame["activation"]
    elif frame["lr"].nunique() > 1:
        frame["arm"] = [
            f"{a} @ lr={lr:g}" for a, lr in zip(frame["activation"], frame["lr"], strict=True)
        ]
    else:
        frame["arm"] = frame["activation"]
    return frame


def summary_table(
    arms: pd.DataFrame, metrics: Sequence[str] = tuple(SUMMARY_METRICS)
) -> pd.DataFrame:
    """Per (depth, arm), over the seeds of non-diverged members: n and, for each metric,
    <metric>_mean, _std, _ci_low, _ci_high (an accuracy's interval clipped to [0, 1]: the
    t interval of 2 or 3 seeds can reach past the scale); plus n_diverged and score_mean,
    the mean final test accuracy with each diverged member counted as 0 (`scored`), by
    which arms are ranked. Rows are in the arms' order."""
    rows = []
    for (depth, arm), group in arms.groupby(["depth", "arm"], dropna=False, sort=False):
        ok = group[~group["diverged"]]
        row = {"depth": depth, "arm": arm, "activation": group["activation"].iloc[0],
               "lr": group["lr"].iloc[0], "n": len(ok), "n_diverged": int(group["diverged"].sum())}  # fmt: skip
        for metric in metrics:
            interval = t_interval(ok[metric])
            low, high = interval.ci_low, interval.ci_high
            if metric.endswith("_acc") and interval.n >= 2:  # a fraction: inside [0, 1]
                low, high = max(0.0, low), min(1.0, high)
            row.update({f"{metric}_mean": interval.mean, f"{metric}_std": interval.std,
                        f"{metric}_ci_low": low, f"{metric}_ci_high": high})  # fmt: skip
        row["score_mean"] = scored(group, "final_test_acc")[0].iloc[:, 0].mean()
        rows.append(row)
    return pd.DataFrame(rows)


# A diverged member counts as a failure of its arm: in ranks and paired tests of an
# accuracy it scores 0 (the worst), as in `select_lr`. Left out instead, an activation that
# diverges on its unlucky seeds would be compared on its lucky ones only.
FAILURE_SCORE = 0.0


def scored(group: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(values, failed): seed x arm tables of `metric` with each diverged member scored
    FAILURE_SCORE when `metric` is an accuracy (left out, NaN, for other metrics), and of
    which members diverged."""
    frame = group.copy()
    if metric.endswith("_acc"):
        frame[metric] = np.where(frame["diverged"], FAILURE_SCORE, frame[metric])
    values = frame.pivot_table(index="seed", columns="arm", values=metric, aggfunc="first",
                               dropna=False)  # fmt: skip
    failed = frame.pivot_table(index="seed", columns="arm", values="diverged", aggfunc="any")
    return values, failed.reindex_like(values).fillna(False).astype(bool)


def pairwise(
    arms: pd.DataFrame,
    metric: str = "final_test_acc",
    margin: float | None = None,
    power: float = POWER,
) -> pd.DataFrame:
    """Paired differences between every two arms of a depth, over the seeds where both
    members exist, a diverged member scored as a failure (FAILURE_SCORE). Within a pair, `a`
    is the arm with the higher mean on those seeds, so mean_diff >= 0: a pair is never
    read backwards. Tests are sign-flip permutation tests (actlab.report.signflip).

    Columns: depth, a, b, n, n_failed_a, n_failed_b (diverged members among those seeds),
    mean_diff (a - b), std (of the paired differences), p, p_holm, significant (p_holm <
    ALPHA; Holm over all pairs of the table) and
    - ci_low, ci_high, ci_confidence: the interval that matches the word. A significant
      pair's is at the level of the Holm step that rejected it, 1 - ALPHA / (m - j), so it
      excludes 0; any other pair's at 1 - ALPHA / m (Bonferroni: simultaneous over all m),
      which then includes 0. Infinite when the seeds are too few for that level;
    - level: ALPHA / m, Holm's strictest step; detectable_gap: the gap a t-test of these
      seeds detects with `power` at `level` if the SD of the differences is the observed
      one, inf when no sign-flip p of n seeds can be below `level`;
    - seeds_needed: the seeds to plan to detect `margin` at `level` (`seed_plan`: from the
      SD's 80% upper limit, at least SMALL_N); seeds_for_equivalence: to show equivalence
      within +-`margin` at `level` when the true gap is 0, from the same SD limit;
    - tost_p, tost_p_holm, equivalent (tost_p_holm < ALPHA), tost_low, tost_high,
      tost_confidence: sign-flip TOST against +-`margin` and its matching 1 - 2 level
      interval (the Holm step's level for an equivalent pair, else ALPHA / m), inside
      +-margin exactly when the pair is equivalent. NaN / False without a margin."""
    rows, diffs = [], []
    for depth, group in arms.groupby("depth", dropna=False, sort=False):
        values, failed = scored(group, metric)
        order = values.mean().sort_values(ascending=False).index.tolist()
        for x, y in itertools.combinations(order, 2):
            both = (values[x].notna() & values[y].notna()).to_numpy()
            d = values[x].to_numpy(dtype=float)[both] - values[y].to_numpy(dtype=float)[both]
            if len(d) and d.mean() < 0:  # orient by the mean on these seeds
                x, y, d = y, x, -d
            test = sign_flip_test(d)
            rows.append({"depth": depth, "a": x, "b": y, "n": test["n"],
                         "n_failed_a": int(failed[x].to_numpy()[both].sum()),
                         "n_failed_b": int(failed[y].to_numpy()[both].sum()),
                         "mean_diff": test["mean_diff"], "std": test["std"], "p": test["p"],
                         "tost_p": math.nan if margin is None
                         else sign_flip_tost(d, margin)["p"]})  # fmt: skip
            diffs.append(d)
    columns = ["depth", "a", "b", "n", "n_failed_a", "n_failed_b", "mean_diff", "std", "p",
               "tost_p"]  # fmt: skip
    frame = pd.DataFrame(rows, columns=columns)
    frame["p_holm"] = holm(frame["p"].to_numpy()) if len(frame) else []
    frame["significant"] = frame["p_holm"] < ALPHA
    tested = int(frame["p"].notna().sum())
    level = ALPHA / tested if tested else math.nan
    frame["level"] = level
    _claim_intervals(frame, diffs, level, margin)
    frame["detectable_gap"] = [
        math.inf if tested and smallest_p(n) >= level
        else (detectable_gap(std, n, level, power) if tested else math.nan)
        for std, n in zip(frame["std"], frame["n"], strict=True)
    ]  # fmt: skip
    frame["seeds_needed"] = [
        seed_plan(margin, std, n, level, power) if tested and margin is not None else math.nan
        for std, n in zip(frame["std"], frame["n"], strict=True)
    ]
    frame["seeds_for_equivalence"] = [
        seeds_for_equivalence(margin, sd_upper_limit(std, n), level, power)
        if tested and margin is not None else math.nan
        for std, n in zip(frame["std"], frame["n"], strict=True)
    ]  # fmt: skip
    frame["tost_p_holm"] = holm(frame["tost_p"].to_numpy()) if len(frame) else []
    frame["equivalent"] = frame["tost_p_holm"] < ALPHA
    _equivalence_intervals(frame, diffs, level, margin)
    order = ["depth", "a", "b", "n", "mean_diff", "std", "ci_low", "ci_high", "p", "p_holm",
             "significant", "level", "detectable_gap", "seeds_needed", "tost_p", "tost_p_holm",
             "equivalent", "ci_confidence", "n_failed_a", "n_failed_b",
             "seeds_for_equivalence", "tost_low", "tost_high", "tost_confidence"]  # fmt: skip
    return frame[order]


def holm_step_levels(pvalues: Sequence[float], alpha: float = ALPHA) -> np.ndarray:
    """The level of each p-value's own Holm step: alpha / (m - j) for the j-th smallest
    (j = 0, 1, ...) of the m that are not NaN; NaN for NaN."""
    p = np.asarray(pvalues, dtype=float)
    levels = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    for rank, index in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        levels[index] = alpha / (len(valid) - rank)
    return levels


def _claim_intervals(frame: pd.DataFrame, diffs: list, level: float, margin) -> None:
    """ci_low, ci_high, ci_confidence of `pairwise` (see there)."""
    steps = holm_step_levels(frame["p"].to_numpy()) if len(frame) else []
    rows = []
    for d, step, significant in zip(diffs, steps, frame["significant"], strict=True):
        at = step if significant else level
        test = sign_flip_test(d, 1 - at) if not _missing(at) else {}
        rows.append((test.get("ci_low", math.nan), test.get("ci_high", math.nan), 1 - at))
    frame["ci_low"], frame["ci_high"], frame["ci_confidence"] = _columns(rows, 3)


def _equivalence_intervals(frame: pd.DataFrame, diffs: list, level: float, margin) -> None:
    """tost_low, tost_high, tost_confidence of `pairwise` (see there)."""
    steps = holm_step_levels(frame["tost_p"].to_numpy()) if len(frame) else []
    rows = []
    for d, step, equivalent in zip(diffs, steps, frame["equivalent"], strict=True):
        at = step if equivalent else level
        if margin is None or _missing(at):
            rows.append((math.nan, math.nan, math.nan))
            continue
        test = sign_flip_tost(d, margin, at)
        rows.append((test["low"], test["high"], 1 - 2 * at))
    frame["tost_low"], frame["tost_high"], frame["tost_confidence"] = _columns(rows, 3)


def _columns(rows: list[tuple], width: int) -> list[list]:
    return [[row[i] for row in rows] for i in range(width)]


def letter_groups(order: Sequence[str], pairs: pd.DataFrame) -> dict[str, str]:
    """Compact letter display: arms that share a letter were not shown to differ at 5%
    (Holm), which is not evidence that they are equal (see `tost`); arms with no letter in
    common differ significantly. `order` is best first; "a" is the
    best arm's group. Each letter is a maximal set of mutually indistinguishable arms
    (a maximal clique of the "not significant" graph, Bron-Kerbosch).

    Returns {} when some pair has no p-value (fewer than 2 seeds): no grouping is possible."""
    if len(pairs) and pairs["p_holm"].isna().any():
        return {}
    different = {
        frozenset((a, b))
        for a, b, s in pairs[["a", "b", "significant"]].itertuples(index=False)
        if s
    }
    neighbours = {
        x: {y for y in order if y != x and frozenset((x, y)) not in different} for x in order
    }
    cliques: list[set[str]] = []

    def expand(clique: set[str], candidates: set[str], excluded: set[str]) -> None:
        if not candidates and not excluded:
            cliques.append(clique)
            return
        for arm in list(candidates):
            expand(clique | {arm}, candidates & neighbours[arm], excluded & neighbours[arm])
            candidates = candidates - {arm}
            excluded = excluded | {arm}

    expand(set(), set(order), set())
    rank = {arm: i for i, arm in enumerate(order)}
    cliques.sort(key=lambda c: sorted(rank[a] for a in c))
    letters = {arm: "" for arm in order}
    for index, clique in enumerate(cliques):
        letter = chr(ord("a") + index) if index < 26 else f"[{index}]"
        for arm in sorted(clique, key=rank.get):
            letters[arm] += letter
    return letters


def ranking(arms: pd.DataFrame, metric: str = "final_test_acc") -> pd.DataFrame:
    """Arms of each depth ordered by mean `metric` (best first; lower is better for losses),
    a diverged member counted as a failure (see `scored`), with their significance groups: depth, arm, rank, mean, group, tied_with_best (not
    significantly different from the best arm; None without p-values)."""
    ascending = metric.endswith("loss")
    pairs = pairwise(arms, metric)
    rows = []
    for depth, group in arms.groupby("depth", dropna=False, sort=False):
        means = scored(group, metric)[0].mean().dropna().sort_values(ascending=ascending)
        order = means.index.tolist()
        own = pairs[pairs["depth"].isna()] if pd.isna(depth) else pairs[pairs["depth"] == depth]
        letters = letter_groups(order, own)
        for index, arm in enumerate(order):
            tied = None
            if letters:
                tied = index == 0 or bool(set(letters[arm]) & set(letters[order[0]]))
            rows.append({"depth": depth, "arm": arm, "rank": index + 1, "mean": means[arm],
                         "group": letters.get(arm), "tied_with_best": tied})  # fmt: skip
    return pd.DataFrame(rows, columns=["depth", "arm", "rank", "mean", "group", "tied_with_best"])


def curves(metrics: pd.DataFrame, column: str, arm_of: dict[tuple, str]) -> pd.DataFrame:
    """Mean and t interval over seeds of `column` per (depth, arm, epoch), for the charts.

    `arm_of` maps (depth, activation, lr) to the arm label; members not in it are skipped,
    as are diverged rows. Columns: depth, arm, epoch, n, mean, ci_low, ci_high, min, max
    (min and max over seeds: the charts' band when there are too few seeds for a t band)."""
    frame = metrics[metrics["status"] != "diverged"].copy()
    keys = zip(frame["depth"], frame["activation"], frame["lr"], strict=True)
    frame["arm"] = [arm_of.get((_depth(d), a, float(lr))) for d, a, lr in keys]
    frame = frame[frame["arm"].notna()]
    rows = []
    for (depth, arm, epoch), group in frame.groupby(
        ["depth", "arm", "epoch"], dropna=False, sort=False
    ):
        interval = t_interval(group[column])
        rows.append({"depth": _depth(depth), "arm": arm, "epoch": int(epoch), "n": interval.n,
                     "mean": interval.mean, "ci_low": interval.ci_low, "ci_high": interval.ci_high,
                     "min": float(group[column].min()), "max": float(group[column].max())})  # fmt: skip
    columns = ["depth", "arm", "epoch", "n", "mean", "ci_low", "ci_high", "min", "max"]
    return pd.DataFrame(rows, columns=columns)


def _depth(value: object) -> int | None:
    return None if value is None or pd.isna(value) else int(value)
