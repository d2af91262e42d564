"""Does the verdict keep its promises? A simulation with known gaps and noise.

Synthetic per-seed final accuracies for the classic study's shape (4 activations, every
pair compared, Holm over the 6 pairs): member (arm, seed) scores

    acc = 0.88 + gap_arm + u_seed + e_arm,seed,   u_seed ~ N(0, 0.30 pp), e ~ N(0, 0.25 pp)

so members of a seed share u_seed (what pairing removes) and the SD of a paired
difference is sigma_d = 0.25 * sqrt(2) = 0.354 pp, about what a 10-seed Fashion-MNIST run
shows. Each replicate goes through `actlab.report.stats.pairwise`, the function whose
`significant` / `equivalent` columns the report's verdict words come from. For n = 3, 5, 10
seeds it measures:

- null: all four arms equal. The share of replicates where some pair is called
  significantly different, and where the verdict claims "<best> is significantly better
  than ..." (its claims are a subset): must stay <= 5%.
- power: one arm ahead of three equal ones by d*, the gap `stats.detectable_gap` states for
  80% power at the Holm level 0.05/6 with the true sigma_d. The share where that pair is
  resolved: must reach 80% (Holm's later steps only add to it). Also the median of the
  detectable gap the report would state from the observed SD, against d*.
- margin: one arm ahead by exactly --min-gap (0.5 pp). The share where that pair is called
  "practically equivalent" (TOST, Holm): must stay <= 5%.
- equal: all equal; the share where a given pair is called practically equivalent (the
  equivalence test's power: low with few seeds, by design).
- plan: one arm ahead by --min-gap; from this n-seed study, `stats.seeds_needed` for that
  gap; a fresh study with that many seeds (capped at 200): the share that resolves it.
  With the observed SD in place of the true one the plan is noisy at small n.

    python benchmarks/stats_power.py            # 1000 replicates per n: 288 s on a
                                                # shared 2-core VM at load 6
    python benchmarks/stats_power.py --reps 300 --seeds 3
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd

from actlab.report import stats

ARMS = ("relu", "sigmoid", "tanh", "leaky_relu")
BASE = 0.88
SEED_SD = 0.0030  # shared by the members of a seed
MEMBER_SD = 0.0025  # per member: sigma_d = MEMBER_SD * sqrt(2)
MIN_GAP = 0.005  # the default --min-gap, 0.5 pp
PLAN_CAP = 200


def study(rng: np.random.Generator, n: int, gaps: dict[str, float]) -> pd.DataFrame:
    """One synthetic study: the arms frame `stats.pairwise` reads."""
    seed_effect = rng.normal(0.0, SEED_SD, n)
    rows = []
    for arm in ARMS:
        accuracy = BASE + gaps.get(arm, 0.0) + seed_effect + rng.normal(0.0, MEMBER_SD, n)
        rows += [(None, arm, arm, 1e-3, seed, False, acc) for seed, acc in enumerate(accuracy)]
    columns = ["depth", "arm", "activation", "lr", "seed", "diverged", "final_test_acc"]
    return pd.DataFrame(rows, columns=columns)


def pair_row(pairs: pd.DataFrame, x: str, y: str) -> pd.Series:
    match = pairs[((pairs["a"] == x) & (pairs["b"] == y)) | ((pairs["a"] == y) & (pairs["b"] == x))]
    return match.iloc[0]


def simulate(n: int, reps: int, rng: np.random.Generator) -> dict:
    sigma_d = MEMBER_SD * math.sqrt(2)
    level = stats.ALPHA / 6
    d_star = stats.detectable_gap(sigma_d, n, level)
    null_any = null_claim = power_hits = margin_equiv = equal_equiv = plan_hits = 0
    stated, planned = [], []
    for _ in range(reps):
        null = study(rng, n, {})
        pairs = stats.pairwise(null, margin=MIN_GAP)
        null_any += bool(pairs["significant"].any())
        best = null.groupby("arm")["final_test_acc"].mean().idxmax()  # the verdict's subject
        null_claim += bool((pairs["significant"] & (pairs["a"] == best)).any())
        equal_equiv += bool(pair_row(pairs, "relu", "tanh")["equivalent"])

        pairs = stats.pairwise(study(rng, n, {"relu": d_star}), margin=MIN_GAP)
        row = pair_row(pairs, "relu", "tanh")
        power_hits += bool(row["significant"] and row["a"] == "relu")
        stated.append(row["detectable_gap"])

        pairs = stats.pairwise(study(rng, n, {"relu": MIN_GAP}), margin=MIN_GAP)
        row = pair_row(pairs, "relu", "tanh")
        margin_equiv += bool(row["equivalent"])
        need = row["seeds_needed"]
        need = PLAN_CAP if not math.isfinite(need) else int(min(need, PLAN_CAP))
        planned.append(need)
        again = stats.pairwise(study(rng, need, {"relu": MIN_GAP}), margin=MIN_GAP)
        row = pair_row(again, "relu", "tanh")
        plan_hits += bool(row["significant"] and row["a"] == "relu")
    return {
        "n": n,
        "false positive (null)": null_any / reps,
        "false claim in verdict (null)": null_claim / reps,
        "d* (pp)": 100 * d_star,
        "power at d*": power_hits / reps,
        "analytic power": stats.paired_t_power(d_star / sigma_d, n, level),
        "median stated gap (pp)": 100 * float(np.median(stated)),
        "false equivalence at margin": margin_equiv / reps,
        "equivalence when equal": equal_equiv / reps,
        "seeds for 0.5 pp (true)": stats.seeds_needed(MIN_GAP, sigma_d, level),
        "planned seeds (median)": float(np.median(planned)),
        "power of the plan": plan_hits / reps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=1000, help="replicates per n")
    parser.add_argument("--seeds", default="3,5,10", help="numbers of seeds to simulate")
    parser.add_argument("--rng", type=int, default=0, help="random seed of the simulation")
    args = parser.parse_args()
    rng = np.random.default_rng(args.rng)
    start = time.perf_counter()
    rows = [simulate(int(n), args.reps, rng) for n in args.seeds.split(",")]
    table = pd.DataFrame(rows)
    print(
        f"{args.reps} replicates per n; sigma_d = {100 * MEMBER_SD * math.sqrt(2):.3f} pp, "
        f"--min-gap {100 * MIN_GAP:g} pp, 4 arms, Holm over 6 pairs, alpha 0.05, power 0.80"
    )
    # Monte Carlo standard error of a share p over the replicates: sqrt(p (1 - p) / reps).
    print(f"Monte Carlo SE: {100 * math.sqrt(0.05 * 0.95 / args.reps):.1f} points at 5%, "
          f"{100 * math.sqrt(0.8 * 0.2 / args.reps):.1f} at 80%")  # fmt: skip
    print()
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---:|" * len(table.columns))
    for row in table.itertuples(index=False):
        cells = []
        for name, value in zip(table.columns, row, strict=True):
            if name == "n" or "seeds" in name:
                cells.append("> 10000" if math.isinf(value) else f"{value:.0f}")
            elif "(pp)" in name:
                cells.append(f"{value:.2f}")
            else:
                cells.append(f"{100 * value:.1f}%")
        print("| " + " | ".join(cells) + " |")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
