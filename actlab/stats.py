"""Statistics over seeds: which differences between activations are real.

Pure functions on the metrics table of a run directory (see docs/run-directory.md). The
unit of replication is the seed; the members of one seed share the initial weights and the
batch order, so comparisons between activations are *paired* by seed.

Vocabulary:
- a *member* is one trained network, identified by (depth, activation, lr, seed);
- an *arm* is what is compared: an activation (at its selected lr when lrs were swept),
  at one depth. Each arm has one member per seed.

References: Student's t interval and paired t-test (any statistics textbook; `scipy.stats`);
Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Stat. 6 (1979);
Piepho, "An algorithm for a letter-based representation of all-pairwise comparisons",
J. Comput. Graph. Stat. 13 (2004).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

ALPHA = 0.05
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
    """Paired comparison of two arms measured on the same seeds: d_i = a_i - b_i.

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


# --- per member ---------------------------------------------------------------------------


def member_results(metrics: pd.DataFrame, last_epochs: int = SELECTION_LAST_EPOCHS) -> pd.DataFrame:
    """One row per member: its final and best-epoch numbers, and whether it diverged.

    Columns: depth, activation, lr, seed, epochs, final_test_acc, best_test_acc, best_epoch,
    final_test_loss, final_train_loss, final_val_acc, val_score (mean val_acc over the last
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
    <metric>_mean, _std, _ci_low, _ci_high; plus n_diverged. Rows are in the arms' order."""
    rows = []
    for (depth, arm), group in arms.groupby(["depth", "arm"], dropna=False, sort=False):
        ok = group[~group["diverged"]]
        row = {"depth": depth, "arm": arm, "activation": group["activation"].iloc[0],
               "lr": group["lr"].iloc[0], "n": len(ok), "n_diverged": int(group["diverged"].sum())}  # fmt: skip
        for metric in metrics:
            interval = t_interval(ok[metric])
            row.update({f"{metric}_mean": interval.mean, f"{metric}_std": interval.std,
                        f"{metric}_ci_low": interval.ci_low, f"{metric}_ci_high": interval.ci_high})  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def pairwise(arms: pd.DataFrame, metric: str = "final_test_acc") -> pd.DataFrame:
    """Paired differences between every two arms of a depth, over the seeds where both
    members finished: a, b, depth, n, mean_diff (a - b), std, ci_low, ci_high, p, p_holm,
    significant (p_holm < ALPHA). Holm's correction runs over all pairs of the table.
    Within a pair, `a` is the arm with the higher mean, so mean_diff >= 0."""
    rows = []
    for depth, group in arms.groupby("depth", dropna=False, sort=False):
        ok = group[~group["diverged"]]
        table = ok.pivot_table(index="seed", columns="arm", values=metric, aggfunc="first")
        order = table.mean().sort_values(ascending=False).index.tolist()
        for a, b in itertools.combinations(order, 2):
            both = table[[a, b]].dropna()
            rows.append({"depth": depth, "a": a, "b": b, **paired_test(both[a], both[b])})
    columns = ["depth", "a", "b", "n", "mean_diff", "std", "ci_low", "ci_high", "p"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["p_holm"] = holm(frame["p"].to_numpy()) if len(frame) else []
    frame["significant"] = frame["p_holm"] < ALPHA
    return frame


def letter_groups(order: Sequence[str], pairs: pd.DataFrame) -> dict[str, str]:
    """Compact letter display: arms that share a letter cannot be told apart at 5% (Holm);
    arms with no letter in common differ significantly. `order` is best first; "a" is the
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
    """Arms of each depth ordered by mean `metric` (best first; lower is better for losses)
    with their significance groups: depth, arm, rank, mean, group, tied_with_best (not
    significantly different from the best arm; None without p-values)."""
    ascending = metric.endswith("loss")
    pairs = pairwise(arms, metric)
    rows = []
    for depth, group in arms.groupby("depth", dropna=False, sort=False):
        means = (
            group[~group["diverged"]].groupby("arm")[metric].mean().sort_values(ascending=ascending)
        )
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
