"""Benchmark: every sampler vs uniform (same batch) vs compute-matched uniform (4x the batch).

Runs a sampler sweep with the real CLI (or reads an existing sweep directory) and prints,
side by side from the same sweep: steps-to-target, tokens-to-target and seconds-to-target of each
group with their ratio to the uniform baseline, and time per step relative to uniform.

Runs are sequential (one process, all cores) and interleaved seed by seed, so that a slower or busier
stretch of the machine hits every sampler alike. Held-out accuracy is evaluated every 5 steps (so a 4x
speed-up is resolvable), on the test split by default; ``--split validation`` evaluates on the
arithmetic task's validation split instead, where design work belongs. The published comparison
(docs/results.md) follows its own protocol: 60 steps, 10 paired seeds, two runs at a time.

    python benchmarks/sampler_sweep.py                       # every sampler, 3 seeds, test split
    python benchmarks/sampler_sweep.py --seeds 0 --steps 30 --samplers uniform,frontier --split validation
    python benchmarks/sampler_sweep.py --sweep-dir outputs/benchmarks/<date>   # re-read a sweep
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lrn.compare import compare_dirs
from lrn.report import fmt_amount

BASELINE = "sampler.name=uniform,trainer.batch_size=32"


SAMPLERS = "uniform,learnability,frontier,learnability_adaptive,learnability_history,dynamic_filter"


def run_sweep(seeds: str, steps: int, samplers: str, split: str, out: Path) -> None:
    """Two Hydra multiruns: the samplers at batch 32 (seed-major order) and uniform at batch 128."""
    common = [f"trainer.steps={steps}", "trainer.eval_every=5", f"dataset.eval_split={split}",
              "logger.wandb.mode=disabled", "logger.progress=false"]
    sweeps = {"batch32": [f"seed={seeds}", f"sampler={samplers}"],
              "batch128": [f"seed={seeds}", "sampler=uniform", "trainer.batch_size=128"]}
    for name, extra in sweeps.items():
        subprocess.run([sys.executable, "-m", "lrn.cli", "train", "-m", *extra, *common,
                        f"hydra.sweep.dir={out / name}"], check=True)


def per_step(group, what: str) -> float:
    """Mean over a group's runs and steps of rollouts generated, or questions trained on, per step."""
    values = []
    for run in group.runs:
        steps = [r for r in run.rows if r["step"] > 0]
        if what == "rollouts":
            values.append(steps[-1]["counts/rollouts_total"] / steps[-1]["step"])
        else:  # logged by every sampler; runs from before it was: trainer.batch_size, what they all trained on
            values.append(sum(r.get("sampler/trained_questions", run.config["trainer.batch_size"]) for r in steps)
                          / len(steps))
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--samplers", default=SAMPLERS, help="comma-separated sampler options at batch 32")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="the held-out split evaluated (dataset.eval_split)")
    parser.add_argument("--sweep-dir", type=Path, help="read this sweep instead of running one")
    args = parser.parse_args()
    out = args.sweep_dir or Path("outputs/benchmarks") / time.strftime("%Y-%m-%d_%H-%M-%S")
    if args.sweep_dir is None:
        start = time.perf_counter()
        run_sweep(args.seeds, args.steps, args.samplers, args.split, out)
        print(f"sweep took {time.perf_counter() - start:.0f} s")
    result = compare_dirs([out], by="sampler.name,trainer.batch_size", baseline=BASELINE)
    base = next(g for g in result.groups if g.baseline)
    print(f"targets of {result.metric}: {result.target_source}")
    uniforms = [g for g in result.groups if "sampler.name=uniform" in g.label]
    for i, target in enumerate(result.targets):
        best = {kind: min(g.targets[i].to_target[kind] for g in uniforms) for kind in ("tokens", "seconds")}
        table = Table("group", "reached", "steps", "x", "tokens", "x", "x best uniform", "seconds", "x",
                      "x best uniform", "s/step", "s/step vs uniform", "rollouts/step", "trained q/step", "final",
                      title=f"target {target:.4g}")
        for g in result.groups:
            r, cells = g.targets[i], []
            for kind in ("steps", "tokens", "seconds"):
                mean, ratio = r.to_target[kind], r.speedup[kind]  # on the seed-mean curve, interpolated
                cells += [fmt_amount(kind, mean), f"{ratio.value:.2f}" if ratio else "-"]
                if kind in best:  # speed-up against the better of uniform and compute-matched uniform
                    cells.append(f"{best[kind] / mean:.2f}" if math.isfinite(mean) and mean > 0 else "-")
            table.add_row(g.label, f"{r.reached}/{len(g.runs)}", *cells, f"{g.seconds_per_step:.2f}",
                          f"{g.seconds_per_step / base.seconds_per_step:.2f}", f"{per_step(g, 'rollouts'):.0f}",
                          f"{per_step(g, 'trained'):.1f}", f"{g.final.median:.3f}")
        Console(width=220).print(table)

if __name__ == "__main__":
    main()
