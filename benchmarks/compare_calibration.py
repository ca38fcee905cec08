"""Calibration of `lrn compare`'s speed-up intervals on synthetic seed curves with a known speed-up.

Each trial draws a baseline and a group of n seeds each. A seed's curve saturates from a shared start
a0 (one warm start for every run) to its own plateau at its own rate:

    a(t) = a0 + (plateau_i - a0) * (1 - exp(-t / tau_i)),  tau_i = tau * exp(SD_TAU * z_i) / k (k = 1: baseline)

evaluated every EVAL_EVERY steps up to STEPS with independent evaluation noise. The group's seed i
shares part of baseline seed i's luck (correlation RHO in z and in the plateau), as two samplers run
from the same seed do. Because the group's rates are the baseline's divided by k, the mean curve over
all possible seeds of the group is the baseline's with time compressed k-fold: the true steps-to-target
speed-up is k at every target. Every trial then runs what `lrn compare` runs (lrn/curves.py,
lrn/intervals.py): the default target grid from the baseline's noisy seed-mean curve, the crossing of
each seed-mean curve, the paired bootstrap and each interval method. It prints, per seed count, true
speed-up, grid fraction and method: how often the 95% interval covered k, the median estimate over k,
the median interval width (hi / lo), and how often the speed-up was undefined (a seed-mean curve never
reached the target: counted as not covered). The last block shows the old default for contrast: one
target at the best point of the baseline's seed-mean curve, recomputed per resample, unpaired percentile
bootstrap. A final line per seed count checks the t interval of an accuracy difference at a budget.

    python benchmarks/compare_calibration.py                  # 400 trials per cell (a few minutes, 1 core)
    python benchmarks/compare_calibration.py --trials 100 --seeds 3,5
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from lrn.curves import Curve, Stack, crossings, mean_curve, target_grid, value_at
from lrn.intervals import LEVEL, METHODS, difference, interval, ratio, speedup_draws

STEPS, EVAL_EVERY = 100, 5
A0, PLATEAU, TAU = 0.28, 0.365, 25.0  # like uniform at batch 32 on the arithmetic task's test split
SD_TAU, SD_PLATEAU, SD_EVAL, RHO = 0.3, 0.01, 0.008, 0.5
FRACTIONS = (0.25, 0.5, 0.75, 0.9, 1.0)  # the default grid and two levels nearer the plateau, to show why not
RESAMPLES = 2000


def seed_curves(rng: np.random.Generator, n: int, k: float, shared: tuple[np.ndarray, np.ndarray],
                rho: float = RHO) -> list[Curve]:
    """n seed curves of a group k times faster than the baseline (k = 1), correlated ``rho`` with ``shared``."""
    steps = np.arange(0, STEPS + 1, EVAL_EVERY, dtype=float)
    z = rho * shared[0] + math.sqrt(1 - rho ** 2) * rng.standard_normal(n)
    w = rho * shared[1] + math.sqrt(1 - rho ** 2) * rng.standard_normal(n)
    out = []
    for zi, wi in zip(z, w, strict=True):
        tau = TAU * math.exp(SD_TAU * zi) / k
        value = A0 + (PLATEAU + SD_PLATEAU * wi - A0) * (1 - np.exp(-steps / tau))
        value[1:] += SD_EVAL * rng.standard_normal(len(steps) - 1)  # step 0: the same warm start, evaluated once
        out.append(Curve(tuple(steps), tuple(value), tuple(100.0 * steps), tuple(steps)))
    return out


def true_difference(k: float, budget: float, draws: int = 400_000) -> float:
    """E[group accuracy - baseline accuracy] at ``budget`` steps, over seeds (Monte Carlo, fixed RNG)."""
    z = np.random.default_rng(12345).standard_normal(draws)
    def mean_at(speed: float) -> float:
        return float(np.mean(A0 + (PLATEAU - A0) * (1 - np.exp(-budget * speed / (TAU * np.exp(SD_TAU * z))))))
    return mean_at(k) - mean_at(1.0)


def old_default(base: Stack, mine: Stack, rng: np.random.Generator) -> tuple[float, tuple[float, float]] | None:
    """The former default: target = best of the baseline's seed-mean curve, recomputed in every resample;
    seeds resampled independently per group; 95% percentile interval of the steps speed-up."""
    full = np.arange(len(base))[None]
    point = float(ratio(base.mean_crossings(full, base.value.mean(0).max())["steps"],
                        mine.mean_crossings(np.arange(len(mine))[None], base.value.mean(0).max())["steps"])[0])
    if not (math.isfinite(point) and point > 0):
        return None
    ib = rng.integers(0, len(base), (RESAMPLES, len(base)))
    im = rng.integers(0, len(mine), (RESAMPLES, len(mine)))
    goal = base.value[ib].mean(1).max(1)
    draws = ratio(crossings(base.value[ib].mean(1), base.step, goal),
                  crossings(mine.value[im].mean(1), mine.step, goal))
    s = np.sort(draws[~np.isnan(draws)])
    cut = int((1 - LEVEL) / 2 * len(s))
    return point, (float(s[cut]), float(s[len(s) - 1 - cut]))


def calibrate(n: int, k: float, trials: int, seed: int, rho: float = RHO) -> dict:
    """Run ``trials`` synthetic comparisons of n seeds at true speed-up k; collect hits, estimates, widths."""
    rng = np.random.default_rng(seed)
    cells: dict[tuple, dict[str, list]] = {}
    def cell(key: tuple) -> dict[str, list]:
        return cells.setdefault(key, {"hit": [], "est": [], "width": [], "undefined": []})
    truth_diff = true_difference(k, STEPS / 2)
    diff_hits = []
    for trial in range(trials):
        shared = (rng.standard_normal(n), rng.standard_normal(n))
        base_curves, mine_curves = seed_curves(rng, n, 1.0, shared, rho), seed_curves(rng, n, k, shared, rho)
        base, mine = Stack.of(base_curves), Stack.of(mine_curves)
        grid = target_grid(mean_curve(base_curves), FRACTIONS)
        for pairing in ("paired", "unpaired"):
            rows = speedup_draws(base, mine, grid.targets, pairing == "paired", RESAMPLES, seed=trial)
            for fraction, row in zip(grid.fractions, rows, strict=True):
                draws = row["steps"]
                methods = METHODS if pairing == "paired" else ("t",)
                for method in methods:
                    c = cell((pairing, method, fraction))
                    if draws is None:
                        c["undefined"].append(1)
                        c["hit"].append(0)
                        continue
                    lo, hi = interval(draws, method)
                    c["undefined"].append(0)
                    c["hit"].append(int(lo <= k <= hi))
                    c["est"].append(math.exp(draws.point) / k)
                    c["width"].append(hi / lo if lo > 0 else math.inf)
        old = old_default(base, mine, rng)
        c = cell(("unpaired", "old default", "best"))
        c["undefined"].append(int(old is None))
        c["hit"].append(int(old is not None and old[1][0] <= k <= old[1][1]))
        if old is not None:
            c["est"].append(old[0] / k)
            c["width"].append(old[1][1] / old[1][0] if old[1][0] > 0 else math.inf)
        at = [[value_at(c_, "steps", STEPS / 2) for c_ in curves] for curves in (mine_curves, base_curves)]
        d = difference(at[0], at[1], paired=True)
        diff_hits.append(int(d.lo <= truth_diff <= d.hi))
    return {"cells": cells, "diff": statistics.fmean(diff_hits), "truth_diff": truth_diff}


def cell_text(c: dict[str, list], what: str) -> str:
    """Coverage, median estimate / true or median width (hi / lo) of one cell."""
    if what == "coverage":
        return f"{statistics.fmean(c['hit']):.1%}"
    values = c["est"] if what == "estimate" else c["width"]
    return f"{statistics.median(values):.2f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--seeds", default="3,5,10", help="seed counts per group")
    parser.add_argument("--speedups", default="2,5.6", help="true speed-ups k")
    parser.add_argument("--rho", type=float, default=RHO, help="correlation of a seed's luck across the groups")
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"synthetic curves: a0 {A0}, plateau {PLATEAU} (sd {SD_PLATEAU}), tau {TAU} steps (log-sd {SD_TAU}), "
          f"eval noise sd {SD_EVAL}, seed correlation {args.rho}, {STEPS} steps, evaluated every {EVAL_EVERY}; "
          f"{args.trials} trials per row, {RESAMPLES} resamples; nominal coverage {LEVEL:.0%}\n")
    print("coverage of the steps speed-up's interval (paired unless said), median estimate / true and median "
          "width (hi / lo) of the t interval, share of trials where the speed-up was undefined")
    methods = [("paired", m) for m in METHODS] + [("unpaired", "t")]
    print("| seeds | true | fraction | " + " | ".join(f"{m}{' unpaired' if p == 'unpaired' else ''}"
                                                       for p, m in methods)
          + " | estimate / true | width t | width t unpaired | undefined |")
    print("|---:|---:|---:|" + "---:|" * (len(methods) + 4))
    old, diffs = [], []
    for n in map(int, args.seeds.split(",")):
        for k in map(float, args.speedups.split(",")):
            result = calibrate(n, k, args.trials, seed=1000 * n + int(10 * k), rho=args.rho)
            cells = result["cells"]
            diffs.append((n, k, result["diff"], result["truth_diff"]))
            old.append((n, k, cells[("unpaired", "old default", "best")]))
            for fraction in FRACTIONS:
                t = cells[("paired", "t", fraction)]
                print(f"| {n} | {k:g} | {fraction} | "
                      + " | ".join(cell_text(cells[(p, m, fraction)], "coverage") for p, m in methods)
                      + f" | {cell_text(t, 'estimate')} | {cell_text(t, 'width')} | "
                      f"{cell_text(cells[('unpaired', 't', fraction)], 'width')} | "
                      f"{statistics.fmean(t['undefined']):.1%} |")
    print("\nthe former default (one target: the best point of the baseline's seed-mean curve, recomputed in every "
          "resample; unpaired percentile bootstrap):")
    print("| seeds | true | coverage | estimate / true | undefined |\n|---:|---:|---:|---:|---:|")
    for n, k, c in old:
        print(f"| {n} | {k:g} | {cell_text(c, 'coverage')} | {cell_text(c, 'estimate')} | "
              f"{statistics.fmean(c['undefined']):.1%} |")
    print("\naccuracy difference at a budget of 50 steps (paired t interval of per-seed differences):")
    for n, k, coverage, truth in diffs:
        print(f"  seeds {n}, true speed-up {k:g}: true difference {truth:+.4f}, coverage {coverage:.1%}")
    print(f"took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
