"""The verdict: the report's opening, in plain words with numbers.

One paragraph for the setup and its scope, one per depth (the best arm against each other,
each pair in one word the tests support: significantly better, better but within the
smallest gap that matters, practically equivalent, or not resolved, with the gap the seeds
could detect), then the caveats (few seeds, a small test set, diverged members). The
numbers come from actlab.report.render.analyse and actlab.report.stats; nothing is
recomputed here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd

from actlab.report import stats
from actlab.report.tables import per_seed_text
from actlab.report.text import (
    _confidence,
    _depth,
    _missing,
    _pp_short,
    _rows_at,
    _seeds_text,
    _signed,
    ci_pct,
    lr_text,
    p_is,
    pct,
    signed_pp,
)
from actlab.study.store import RunData

if TYPE_CHECKING:
    from actlab.report.render import Analysis


def verdict(analysis: Analysis) -> list[str]:
    """The report's opening, in plain words with numbers: a list of paragraphs (the setup
    and its scope, one per depth, then the caveats). Every claim stands beside the interval
    that matches it (see stats.pairwise) and says no more than the seeds support."""
    if not len(analysis.summary):
        return ["No epoch was completed, so there is nothing to compare yet."]
    paragraphs = _unfinished_verdict(analysis)
    n = analysis.n_seeds
    config = analysis.run.config
    sentences = [
        f"{compared_text(analysis)} on {config.dataset}, {n} seed{'s' if n != 1 else ''} "
        f"each, {_plural(config.epochs, 'epoch')}; the accuracy compared is the final-epoch "
        "test accuracy."
    ]
    if analysis.selected is not None:
        sentences.append(
            "Each activation's learning rate was chosen on the validation split "
            f"(mean validation accuracy over {selection_window(analysis)}): "
            f"{chosen_lr_text(analysis.selected)}."
        )
    sentences.append(scope_text(analysis))
    paragraphs.append(" ".join(sentences))
    for depth in analysis.depths:
        paragraphs.append(" ".join(_depth_verdict(analysis, depth)))
    paragraphs.append(_test_set_caution(analysis))
    if 2 <= n < stats.SMALL_N:
        floor = stats.smallest_p(n)
        paragraphs.append(
            f"Caution: only {n} seeds. Every interval over seeds rests on {n - 1} degree"
            f"{'s' if n != 2 else ''} of freedom, so its width depends on the chance spread of "
            f"{n} values (the per-seed values are shown beside the means), and a sign-flip test "
            f"of {n} seeds cannot give p below 2/2^{n} = {floor:.3g}"
            + (", so no difference can be called significant." if floor >= stats.ALPHA else ".")
            + " Stacked seeds are cheap: run with --seeds 10 or more, or add seeds later and "
            "merge the runs with `actlab report RUN_A RUN_B`."
        )
    if n < 2:
        paragraphs.append(
            "With a single seed no confidence interval or significance test can be given, so "
            "these differences may be seed noise; run with --seeds 10 (the default), or add seeds "
            "later and merge the runs with `actlab report RUN_A RUN_B`."
        )
    diverged = analysis.results[analysis.results["diverged"]]
    if len(diverged):
        paragraphs.append(
            f"{_plural(len(diverged), 'member')} diverged: "
            + ", ".join(_member_text(row) for row in diverged.itertuples())
            + ". A diverged member is counted as a failure of its arm: it scores 0% accuracy "
            "in the ranking and in the paired tests (left out, an activation that diverges "
            "would be compared on its lucky seeds only); the summary's accuracy columns are "
            "over the members that finished."
        )
    return [p for p in paragraphs if p]


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def chosen_lr_text(selected: pd.DataFrame) -> str:
    """Each activation's selected lr, per depth when there are several depths: "relu 0.001,
    tanh 0.003" or "depth 2: relu 0.003, tanh 0.003; depth 8: relu 0.001, tanh 0.001"."""
    depths = list(dict.fromkeys(map(_depth, selected["depth"])))
    parts = []
    for depth in depths:
        rows = _rows_at(selected, depth)
        chosen = ", ".join(f"{row.activation} {lr_text(row.lr)}" for row in rows.itertuples())
        parts.append(chosen if len(depths) == 1 else f"depth {depth}: {chosen}")
    return "; ".join(parts)


def images_in_test_set(run: RunData) -> int | None:
    """The number of test images, from dataset.json; None when it is not recorded."""
    size = (run.dataset or {}).get("test_size")
    return int(size) if isinstance(size, (int, float)) and size > 0 else None


def scope_text(analysis: Analysis) -> str:
    """What the seeds can and cannot speak for: one split, one budget, seeds only."""
    size = images_in_test_set(analysis.run)
    split = "one fixed train/test split" + (f" ({size} test images)" if size else "")
    epochs = _plural(analysis.run.config.epochs, "epoch")
    return (
        f"Scope: {split} and a budget of {epochs}; the seeds vary the initial weights and the "
        "batch order only, so every interval and test below is about that variation, not "
        "about another test set, dataset or training budget."
    )


# A test set below this size gets a caution: one image is more than 0.05 pp.
SMALL_TEST_SET = 2000


def _test_set_caution(analysis: Analysis) -> str:
    """The test set's own resolution and binomial sampling error, which more seeds do not
    shrink: sqrt(p (1 - p) / N) for an accuracy p on N test images."""
    size = images_in_test_set(analysis.run)
    if size is None:
        return ""
    best = analysis.summary["final_test_acc_mean"].dropna()
    if not len(best):
        return ""
    accuracy = float(best.iloc[0])
    se = math.sqrt(accuracy * (1 - accuracy) / size)
    text = (
        f"The test set has {size} images, so one image is {100 / size:.2g} pp, and an "
        f"accuracy of {pct(accuracy, 1)}% measured on it has a binomial sampling SE of "
        f"{100 * se:.1f} pp (sqrt(p(1-p)/N)) from the choice of those images, which more "
        "seeds do not shrink."
    )
    if size < SMALL_TEST_SET:
        text = (
            f"Caution: a small test set. {text} A gap of a few images may not hold on "
            "another test set of the same size."
        )
    return text


def compared_text(analysis: Analysis) -> str:
    """What is compared, counted and named: "4 activations (relu, sigmoid, tanh and
    leaky_relu)", or "4 activation-lr pairs (relu and tanh, each at lr 0.001 and 0.01)"
    when every (activation, lr) is an arm of its own."""
    arms = analysis.arms.drop_duplicates("arm") if len(analysis.arms) else analysis.arms
    activations = list(dict.fromkeys(arms["activation"])) if len(arms) else []
    lrs = sorted(dict.fromkeys(arms["lr"])) if len(arms) else []
    names = _and(activations)
    if len(arms) > len(activations):  # several lrs per activation, each its own arm
        each = "each " if len(activations) > 1 else ""
        return (
            f"{len(arms)} activation-lr pairs ({names}, {each}at lr "
            f"{_and([lr_text(lr) for lr in lrs])})"
        )
    noun = "activation" if len(activations) == 1 else "activations"
    return f"{len(activations)} {noun} ({names})"


def selection_window(analysis: Analysis) -> str:
    """The epochs whose validation accuracy was averaged to choose an lr, as they really
    were: "the last 3 epochs (8-10)", "the 2 epochs (1-2)", "epoch 1 only"."""
    epochs = analysis.results["epochs"] if len(analysis.results) else pd.Series([0])
    last = int(epochs.max()) if len(epochs) else 0
    window = min(stats.SELECTION_LAST_EPOCHS, last)
    if window <= 1:
        return f"epoch {last} only"
    first = last - window + 1
    if window < stats.SELECTION_LAST_EPOCHS:
        return f"all {window} epochs ({first}-{last})"
    return f"the last {window} epochs ({first}-{last})"


def _and(items: list[str]) -> str:
    items = [str(i) for i in items]
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _unfinished_verdict(analysis: Analysis) -> list[str]:
    """The first paragraph of an unfinished study's verdict (none for a finished one)."""
    if not analysis.unfinished:
        return []
    epochs = sorted({c.epoch for c in analysis.completions if c.epoch})
    at = f"epoch {epochs[0]}" if len(epochs) == 1 else "the last epoch each depth reached"
    return [
        f"This study is {analysis.unfinished}. Every member is compared at {at}, the last "
        'epoch all of them completed, not at the final epoch: "final" below means that '
        "epoch. Finish the run (rerun the same `actlab compare`) for the final comparison."
    ]


def _depth_verdict(analysis: Analysis, depth: int | None) -> list[str]:
    """The highest-ranked arm of a depth against each other arm, each pair in one of four
    words: significantly better; better but by less than --min-gap (both tests pass);
    practically equivalent (TOST); or not resolved, with what the seeds could detect and
    the seeds to plan. Each beside the interval that matches it. "The best is X" only when X
    is significantly better than every other arm; else "Highest mean: X"."""
    rows = _rows_at(analysis.summary, depth).dropna(subset=["final_test_acc_mean"])
    if not len(rows):
        return []
    best = rows.iloc[0]
    pairs = _rows_at(analysis.pairs, depth)
    gap_pp = analysis.run.config.min_gap
    words: dict[str, list] = {"better": [], "small": [], "equivalent": [], "unresolved": [],
                              "behind": []}  # fmt: skip
    for arm in rows["arm"].iloc[1:]:
        pair = _pair_of(pairs, best.arm, arm)
        if pair is None or _missing(pair["p_holm"]):
            continue
        ahead = pair["a"] == best.arm or pair["mean_diff"] == 0
        if pair["significant"] and not ahead:
            words["behind"].append(_claim_text(arm, pair, best.arm))
        elif pair["significant"] and pair["equivalent"]:
            tost = _tost_text(pair, gap_pp, with_gap=False)
            words["small"].append(f"{_claim_text(arm, pair, best.arm)}; {tost}")
        elif pair["significant"]:
            words["better"].append(_claim_text(arm, pair, best.arm))
        elif pair["equivalent"]:
            words["equivalent"].append(f"{arm} ({_tost_text(pair, gap_pp)})")
        else:
            words["unresolved"].append((arm, pair))
    resolved = len(rows) > 1 and len(words["better"]) + len(words["small"]) == len(rows) - 1
    sentences = [_best_text(analysis, depth, best, resolved)]
    if words["better"]:
        sentences.append(
            f"It is significantly better than {_join([t + ')' for t in words['better']])}."
        )
    if words["small"]:
        sentences.append(
            f"It is significantly better than {_join([t + ')' for t in words['small']])}, but by "
            f"less than {gap_pp:g} pp: practically equivalent."
        )
    if words["equivalent"]:
        sentences.append(
            f"It is practically equivalent (within ±{gap_pp:g} pp) to {_join(words['equivalent'])}."
        )
    if words["behind"]:
        sentences.append(
            "On the seeds both have, it is significantly behind "
            f"{_join([t + ')' for t in words['behind']])}."
        )
    if words["unresolved"]:
        texts = [_claim_text(a, p, best.arm) + ")" for a, p in words["unresolved"]]
        sentences.append(
            f"It is not resolved against {_join(texts)}: the seeds show neither a difference "
            f"nor equivalence within ±{gap_pp:g} pp, so this is an open question, not a tie."
        )
        sentences.append(_power_sentence(words["unresolved"], gap_pp))
    if len(rows) == 1:
        sentences.append("It is the only activation compared.")
    return sentences


def _pair_of(pairs: pd.DataFrame, x: str, y: str) -> pd.Series | None:
    match = pairs[((pairs["a"] == x) & (pairs["b"] == y)) | ((pairs["a"] == y) & (pairs["b"] == x))]
    return match.iloc[0] if len(match) else None


def _best_text(analysis: Analysis, depth: int | None, best: pd.Series, resolved: bool) -> str:
    """'The best is X with 88.1% (95% CI over seeds [...])' when X is resolved against all
    the others, else 'Highest mean: X with ...'; a diverged seed's 0% is said."""
    prefix = "" if depth is None else f"At depth {depth}, "
    if _missing(best.final_test_acc_ci_low):
        where = "(one seed, no interval)."
    else:
        interval = ci_pct(best.final_test_acc_ci_low, best.final_test_acc_ci_high)
        where = f"(95% CI over seeds {interval}"
        if best.n < stats.SMALL_N:
            where += f" from {best.n} seeds: {per_seed_text(analysis, depth, best.arm)}"
        where += ")."
    mean = f"{pct(best.final_test_acc_mean)}% {where}"
    if best.n_diverged:
        mean = (
            f"{pct(best.score_mean)}% counting its {_plural(int(best.n_diverged), 'diverged seed')}"
            f" as 0%, {pct(best.final_test_acc_mean)}% over the {best.n} that finished {where}"
        )
    text = f"{prefix}{'the best is' if resolved else 'highest mean:'} {best.arm} with {mean}"
    return text[0].upper() + text[1:]


def _failures_text(pair: pd.Series) -> str:
    """'; counting tanh's 1 diverged seed as 0%' when a member of the pair diverged."""
    parts = [
        f"{name}'s {_plural(int(count), 'diverged seed')}"
        for name, count in ((pair["a"], pair["n_failed_a"]), (pair["b"], pair["n_failed_b"]))
        if count
    ]
    return f"; counting {' and '.join(parts)} as 0%" if parts else ""


def _claim_text(arm: str, pair: pd.Series, best: str) -> str:
    """'tanh (gap +0.56 pp, Holm-level 99.2% CI [+0.31, +0.80], Holm p = 0.0039' (the
    caller closes the parenthesis). The gap is best - arm; the interval is the one that
    matches the word (see stats.pairwise)."""
    sign = 1 if pair["a"] == best else -1
    low, high = sorted((sign * pair["ci_low"], sign * pair["ci_high"]))
    level = f"Holm-level {_confidence(pair['ci_confidence'])} CI"
    if math.isinf(low) or math.isinf(high):
        interval = f"{int(pair['n'])} seeds are too few for a {level.replace(' CI', ' interval')}"
    else:
        interval = f"{level} [{_signed(low)}, {_signed(high)}]"
    return (
        f"{arm} (gap {signed_pp(sign * pair['mean_diff'])}, {interval}, Holm p "
        f"{p_is(pair['p_holm'])}{_failures_text(pair)}"
    )


def _tost_text(pair: pd.Series, gap_pp: float, with_gap: bool = True) -> str:
    """'gap +0.02 pp, Holm-level 96.7% CI [-0.10, +0.14] inside ±0.5 pp, TOST Holm p = 0.0020'
    (without the gap, and without the failures already said, after a difference claim)."""
    interval = f"[{_signed(pair['tost_low'])}, {_signed(pair['tost_high'])}]"
    gap = f"gap {signed_pp(pair['mean_diff'])}, " if with_gap else ""
    return (
        f"{gap}Holm-level {_confidence(pair['tost_confidence'])} CI {interval} inside "
        f"±{gap_pp:g} pp, TOST Holm p {p_is(pair['tost_p_holm'])}"
        + (_failures_text(pair) if with_gap else "")
    )


def _power_sentence(unresolved: list[tuple[str, pd.Series]], gap_pp: float) -> str:
    """What the seeds could detect and what to plan, per unresolved pair: "With 3 seeds,
    gaps below about 1.1 pp would be missed more often than 20% of the time ...; to detect 0.5 pp
    plan about 14 seeds, and about 9 to show equivalence within ±0.5 pp"."""
    names = len(unresolved) > 1
    seeds = {int(pair["n"]) for _, pair in unresolved}
    one_count = len(seeds) == 1

    def named(text: str, arm: str, n: int | None = None) -> str:
        label = [arm] if names else []
        label += [f"{n} seeds"] if n is not None and not one_count else []
        return f"{text} ({', '.join(label)})" if label else text

    level = unresolved[0][1]["level"]
    holm = f"the Holm level {stats.ALPHA:g}/{round(stats.ALPHA / level)} = {level:.3g}"
    missed, blind, plans, equivalence = [], [], [], []
    for arm, pair in unresolved:
        n = int(pair["n"])
        detectable = pair["detectable_gap"]
        if math.isinf(detectable):
            blind.append(n)
        elif detectable >= 1:
            missed.append(named("any gap the 0-100% scale allows", arm, n))
        else:
            missed.append(named(f"{_pp_short(detectable)} pp", arm, n))
        plans.append(named(_seeds_text(pair["seeds_needed"]), arm))
        equivalence.append(named(_seeds_text(pair["seeds_for_equivalence"]), arm))
    count = f"{seeds.pop()} seeds" if one_count else "the seeds at hand"
    parts = []
    if missed:
        parts.append(
            f"With {count}, gaps below about {_join_and(missed)} would be missed more often than "
            f"20% of the time (t-test power at {holm}, if the SD of the paired differences "
            "stays at the one observed)"
        )
    for n in sorted(set(blind)):
        parts.append(
            f"with {n} seeds no gap can be found at {holm}: a sign-flip test of {n} seeds "
            f"cannot give p below 2/2^{n} = {stats.smallest_p(n):.3g}"
        )
    parts.append(
        f"to detect {gap_pp:g} pp plan {_join_and(plans)}, and {_join_and(equivalence)} to show "
        f"equivalence within ±{gap_pp:g} pp (80% power at that level, from the 80% upper "
        "confidence limit of the observed SD, Browne 1995)"
    )
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def _join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else "; ".join(items[:-1]) + "; and " + items[-1]


def _member_text(row: object) -> str:
    text = f"{row.activation} (lr {lr_text(row.lr)}, seed {row.seed}"
    if _depth(row.depth) is not None:
        text += f", depth {_depth(row.depth)}"
    return text + f", epoch {row.diverged_epoch:.0f})"
