"""The per-step figures of docs/results.md that `lrn compare` does not print, from the same committed files.

    python docs/results/per_step.py            # from the repository root

Per group of docs/results/test/ (seeds s0..s9): seconds per step without evaluation (``time/train_s`` at
the last step / steps; median over seeds, and the geometric mean over seeds of the group's seconds over
uniform's for the same seed, with a 95% t interval on the log ratio), answers generated and questions
trained a step, and the mixed (non-zero-advantage) trained groups a step; for ``predictive`` also its
probe's own figures (means over steps, then seeds).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from lrn.intervals import t_quantile

ROOT = Path(__file__).resolve().parent / "test"
BASELINE = "uniform"
PREDICTIVE = ("sampler/mixed_frac", "sampler/mixed_frac_uniform", "sampler/pred_mixed_frac", "sampler/brier",
              "sampler/brier_probe", "sampler/calibration/ece")


def runs(group: str) -> list[list[dict]]:
    """Every seed's metrics rows, in seed order."""
    seeds = sorted((ROOT / group).glob("s*"), key=lambda p: int(p.name[1:]))
    return [[json.loads(line) for line in (s / "metrics.jsonl").read_text().splitlines()] for s in seeds]


def seconds_per_step(rows: list[dict]) -> float:
    return rows[-1]["time/train_s"] / rows[-1]["step"]


def per_step_mean(rows: list[dict], value) -> float:
    """Mean over the training steps (step 0 is the start) of ``value(row)``."""
    return statistics.fmean(value(r) for r in rows if r["step"] > 0)


def paired_ratio(mine: list[float], base: list[float]) -> str:
    logs = [math.log(m / b) for m, b in zip(mine, base, strict=True)]
    mean, se = statistics.fmean(logs), statistics.stdev(logs) / math.sqrt(len(logs))
    t = t_quantile(0.975, len(logs) - 1)
    return f"{math.exp(mean):.2f}x [{math.exp(mean - t * se):.2f}-{math.exp(mean + t * se):.2f}]"


def main() -> None:
    base = [seconds_per_step(rows) for rows in runs(BASELINE)]
    print("| group | seeds | s/step (median) | s/step vs uniform (paired) | answers/step | trained q/step "
          "| mixed trained groups/step (share) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for group in sorted(p.name for p in ROOT.iterdir() if (p / "s0").is_dir()):
        seeds = runs(group)
        secs = [seconds_per_step(rows) for rows in seeds]
        answers = statistics.fmean(rows[-1]["counts/rollouts_total"] / rows[-1]["step"] for rows in seeds)
        trained = statistics.fmean(per_step_mean(rows, lambda r: r["sampler/trained_questions"]) for rows in seeds)
        mixed = statistics.fmean(per_step_mean(rows, lambda r: (1 - r["train/zero_signal_frac"])
                                               * r["sampler/trained_questions"]) for rows in seeds)
        share = statistics.fmean(per_step_mean(rows, lambda r: 1 - r["train/zero_signal_frac"]) for rows in seeds)
        print(f"| {group} | {len(seeds)} | {statistics.median(secs):.2f} | {paired_ratio(secs, base)} | {answers:.0f} "
              f"| {trained:.1f} | {mixed:.1f} ({share:.3f}) |")
    print()
    seeds = runs("predictive")
    for key in PREDICTIVE:
        value = statistics.fmean(statistics.fmean(r[key] for r in rows if key in r) for rows in seeds)
        print(f"predictive {key}: {value:.3f}")


if __name__ == "__main__":
    main()
