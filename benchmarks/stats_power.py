"""Does the verdict keep its promises? A simulation with known gaps and three kinds of noise.

Synthetic per-seed final accuracies for the classic study's shape (4 activations, every
pair compared, Holm over the 6 pairs): member (arm, seed) scores

    acc = 0.88 + gap_arm + u_seed + e_arm,seed,   u_seed ~ N(0, 0.30 pp)

so members of a seed share u_seed (what pairing removes), with e one of
- normal: e ~ N(0, 0.25 pp), so the SD of a paired difference is 0.354 pp, about what a
  10-seed Fashion-MNIST run shows;
- heavy: e ~ 0.25 pp * t_3 / sqrt(3) (the same SD, tails like an occasional bad seed);
- quantised: a digits-sized test set of 359 images (one image = 0.28 pp): the accuracy is
  a whole number of images, round(359 acc) / 359, with base 0.97 and e ~ N(0, 0.25 pp),
  so paired differences are small integers and often all equal (the case in which the
  t-test gave p = 0).

Each replicate goes through `actlab.report.stats.pairwise`, the function whose
`significant` / `equivalent` columns the verdict's words come from (an exact sign-flip test
with Holm's correction). For each noise and n seeds it measures:

- false claim (null): all four arms equal; the share of replicates where some pair is
  called significantly different (every "significantly better" of the verdict is one):
  must stay <= 5%. Beside it, for comparison, the same share under the old rule (paired
  t-tests with Holm), which made false claims from zero-variance differences.
- false equivalence at the margin: one arm ahead by exactly --min-gap (0.5 pp); the share
  where that pair is called "practically equivalent" (sign-flip TOST, Holm): must stay <= 5%.
- power at d*: one arm ahead by d*, the gap `stats.detectable_gap` states for 80% power at
  the Holm level 0.05/6 with the true SD (a t-test figure): the share where the pair is
  resolved. With few seeds the sign-flip test cannot reach the level at all (2/2^n >=
  0.05/6 below 8 seeds) and the power is 0: the report says so instead of quoting a gap.
- plan: one arm ahead by --min-gap; from this n-seed study, the seeds the report plans
  (`stats.seed_plan`: the SD's 80% upper limit, at least 5), capped at PLAN_CAP; a fresh
  study with that many seeds: the share that resolves the gap (80% is the aim).

    python benchmarks/stats_power.py                        # 300 replicates per cell
    python benchmarks/stats_power.py --reps 200 --plan-reps 50 --seeds 2,3,4,5,10
    python benchmarks/stats_power.py --reps 100 --seeds 2,3 --noise quantised
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np
import pandas as pd

from actlab.report import stats

ARMS = ("relu", "sigmoid", "tanh", "leaky_relu")
SEED_SD = 0.0030  # shared by the members of a seed
MEMBER_SD = 0.0025  # per member
MIN_GAP = 0.005  # the default --min-gap, 0.5 pp
DIGITS_TEST = 359  # sklearn digits' test split
PLAN_CAP = 40  # the largest planned study simulated (a larger plan is run at 40 seeds)
BASE = {"normal": 0.88, "heavy": 0.88, "quantised": 0.97}


def member_noise(noise: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if noise == "heavy":
        return MEMBER_SD * rng.standard_t(3, n) / math.sqrt(3)
    return rng.normal(0.0, MEMBER_SD, n)


def sigma_d(noise: str) -> float:
    """The true SD of a paired difference (rounding adds a uniform error of one image)."""
    if noise == "quantised":
        return math.sqrt(2 * (MEMBER_SD**2 + 1 / (12 * DIGITS_TEST**2)))
    return MEMBER_SD * math.sqrt(2)


def study(rng: np.random.Generator, n: int, gaps: dict[str, float], noise: str) -> pd.DataFrame:
    """One synthetic study: the arms frame `stats.pairwise` reads."""
    seed_effect = rng.normal(0.0, SEED_SD, n)
    rows = []
    for arm in ARMS:
        accuracy = BASE[noise] + gaps.get(arm, 0.0) + seed_effect + member_noise(noise, rng, n)
        if noise == "quantised":
            accuracy = np.round(np.clip(accuracy, 0, 1) * DIGITS_TEST) / DIGITS_TEST
        rows += [(None, arm, arm, 1e-3, seed, False, acc) for seed, acc in enumerate(accuracy)]
    columns = ["depth", "arm", "activation", "lr", "seed", "diverged", "final_test_acc"]
    return pd.DataFrame(rows, columns=columns)


def old_rule_claims(frame: pd.DataFrame) -> bool:
    """Whether paired t-tests with Holm (the rule before the sign-flip test) call some pair
    of this study significantly different."""
    table = frame.pivot(index="seed", columns="arm", values="final_test_acc")
    p = [stats.paired_test(table[x], table[y])["p"] for x, y in itertools.combinations(ARMS, 2)]
    return bool((stats.holm(p) < stats.ALPHA).any())


def pair_row(pairs: pd.DataFrame, x: str, y: str) -> pd.Series:
    match = pairs[((pairs["a"] == x) & (pairs["b"] == y)) | ((pairs["a"] == y) & (pairs["b"] == x))]
    return match.iloc[0]


def simulate(noise: str, n: int, reps: int, plan_reps: int, rng: np.random.Generator) -> dict:
    level = stats.ALPHA / 6
    d_star = stats.detectable_gap(sigma_d(noise), n, level)
    counts = dict.fromkeys(("null", "old", "margin", "power", "plan"), 0)
    planned = []
    for _ in range(reps):
        null = study(rng, n, {}, noise)
        counts["null"] += bool(stats.pairwise(null, margin=MIN_GAP)["significant"].any())
        counts["old"] += old_rule_claims(null)

        pairs = stats.pairwise(study(rng, n, {"relu": d_star}, noise), margin=MIN_GAP)
        row = pair_row(pairs, "relu", "tanh")
        counts["power"] += bool(row["significant"] and row["a"] == "relu")

        pairs = stats.pairwise(study(rng, n, {"relu": MIN_GAP}, noise), margin=MIN_GAP)
        row = pair_row(pairs, "relu", "tanh")
        counts["margin"] += bool(row["equivalent"])
        need = row["seeds_needed"]
        need = PLAN_CAP if not math.isfinite(need) else int(min(need, PLAN_CAP))
        planned.append(need)
        if len(planned) <= plan_reps:  # a planned study is large: fewer replicates
            again = stats.pairwise(study(rng, need, {"relu": MIN_GAP}, noise), margin=MIN_GAP)
            row = pair_row(again, "relu", "tanh")
            counts["plan"] += bool(row["significant"] and row["a"] == "relu")
    return {
        "noise": noise,
        "n": n,
        "false claim (null)": counts["null"] / reps,
        "old rule: t-test (null)": counts["old"] / reps,
        "false equivalence at margin": counts["margin"] / reps,
        "d* (pp)": 100 * d_star,
        "power at d*": counts["power"] / reps,
        "planned seeds (median)": float(np.median(planned)),
        "power of the plan": counts["plan"] / min(reps, plan_reps),
    }


def print_table(table: pd.DataFrame) -> None:
    print("| " + " | ".join(table.columns) + " |")
    print("|---|" + "---:|" * (len(table.columns) - 1))
    for row in table.itertuples(index=False):
        cells = []
        for name, value in zip(table.columns, row, strict=True):
            if name == "noise":
                cells.append(value)
            elif name == "n" or "seeds" in name:
                cells.append("> 10000" if math.isinf(value) else f"{value:.0f}")
            elif "(pp)" in name:
                cells.append(f"{value:.2f}")
            else:
                cells.append(f"{100 * value:.1f}%")
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=300, help="replicates per cell")
    parser.add_argument("--seeds", default="2,3,5,10", help="numbers of seeds to simulate")
    parser.add_argument("--noise", default="normal,heavy,quantised", help="noise models")
    parser.add_argument("--plan-reps", type=int, default=100, help="replicates of a plan")
    parser.add_argument("--rng", type=int, default=0, help="random seed of the simulation")
    args = parser.parse_args()
    rng = np.random.default_rng(args.rng)
    start = time.perf_counter()
    rows = [
        simulate(noise, int(n), args.reps, args.plan_reps, rng)
        for noise in args.noise.split(",")
        for n in args.seeds.split(",")
    ]
    print(
        f"{args.reps} replicates per cell; member SD {100 * MEMBER_SD:.2f} pp, seed SD "
        f"{100 * SEED_SD:.2f} pp, --min-gap {100 * MIN_GAP:g} pp, 4 arms, Holm over 6 pairs, "
        f"alpha 0.05, power 0.80; plans capped at {PLAN_CAP} seeds, "
        f"{min(args.reps, args.plan_reps)} replicates of a plan"
    )
    # Monte Carlo standard error of a share p over the replicates: sqrt(p (1 - p) / reps).
    print(f"Monte Carlo SE: {100 * math.sqrt(0.05 * 0.95 / args.reps):.1f} points at 5%, "
          f"{100 * math.sqrt(0.8 * 0.2 / args.reps):.1f} at 80%")  # fmt: skip
    print()
    print_table(pd.DataFrame(rows))
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
