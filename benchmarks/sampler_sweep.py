"""Benchmark: learnability vs uniform vs compute-matched uniform on the embedded default.

Runs the README's headline sweep with the real CLI (or reads an existing sweep directory) and prints,
side by side from the same sweep: steps-to-target, tokens-to-target and seconds-to-target of each
group with their ratio to the uniform baseline, and time per step relative to uniform.

    python benchmarks/sampler_sweep.py                      # runs the sweep (about an hour on 2 cores)
    python benchmarks/sampler_sweep.py --seeds 0 --steps 50 # a quick look
    python benchmarks/sampler_sweep.py --sweep-dir outputs/multirun/<date>/<time>   # re-read a sweep
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lrn.compare import compare_dirs
from lrn.report import fmt_amount

BASELINE = "sampler.name=uniform,trainer.batch_size=32"


def run_sweep(seeds: str, steps: int, out: Path) -> None:
    """One Hydra multirun: uniform, learnability and uniform with 4x the batch (same rollouts per step)."""
    common = ["-m", f"seed={seeds}", f"trainer.steps={steps}", "logger.wandb.mode=disabled",
              "logger.progress=false"]
    for extra in (["sampler=uniform,learnability"], ["sampler=uniform", "trainer.batch_size=128"]):
        sub = out / ("batch128" if "trainer.batch_size=128" in extra else "batch32")
        subprocess.run([sys.executable, "-m", "lrn.cli", "train", *common, *extra, f"hydra.sweep.dir={sub}"],
                       check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--sweep-dir", type=Path, help="read this sweep instead of running one")
    args = parser.parse_args()
    out = args.sweep_dir or Path("outputs/benchmarks") / time.strftime("%Y-%m-%d_%H-%M-%S")
    if args.sweep_dir is None:
        start = time.perf_counter()
        run_sweep(args.seeds, args.steps, out)
        print(f"sweep took {time.perf_counter() - start:.0f} s")
    result = compare_dirs([out], by="sampler.name,trainer.batch_size", baseline=BASELINE)
    base = next(g for g in result.groups if g.baseline)
    print(f"target {result.metric} >= {result.target:.3f} ({result.target_source})")
    table = Table("group", "reached", "steps", "x", "tokens", "x", "seconds", "x", "s/step", "s/step vs uniform")
    for g in result.groups:
        cells = []
        for kind in ("steps", "tokens", "seconds"):
            ratio = g.speedup[kind]
            cells += [fmt_amount(kind, g.to_target[kind].median), f"{ratio:.2f}" if ratio else "-"]
        table.add_row(g.label, f"{g.reached}/{len(g.runs)}", *cells, f"{g.seconds_per_step:.2f}",
                      f"{g.seconds_per_step / base.seconds_per_step:.2f}")
    Console(width=200).print(table)

if __name__ == "__main__":
    main()
