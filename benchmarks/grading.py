"""Grading speed: the math grader (math-verify) in the main process vs lrn's persistent worker pool.

    python benchmarks/grading.py --repeat 4 --workers 2

Grades the 500 MATH-500 reference solutions ``--repeat`` times (as a learnability step grades many
answers per question) against their gold answers, in order, both ways, and checks the rewards agree.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lrn.grading import GradePool

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500" / "test.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.data.read_text().splitlines()] * args.repeat
    answers, golds = [r["solution"] for r in rows], [r["answer"] for r in rows]
    results = {}
    for name, workers in (("main process", 0), (f"pool of {args.workers}", args.workers)):
        pool = GradePool("math", workers)
        pool.grade(answers[:8], golds[:8])  # start the pool (a training run pays this once)
        t = time.perf_counter()
        rewards = pool.grade(answers, golds)
        results[name] = (time.perf_counter() - t, rewards)
        pool.close()
    (serial_s, serial), (pool_s, pooled) = results.values()
    assert serial == pooled, "the pool must grade exactly as the main process"
    print(f"{len(rows)} answers (MATH-500 reference solutions x {args.repeat}), accuracy {sum(serial) / len(rows):.3f}")
    print("| grader | seconds | answers/s |\n|---|---:|---:|")
    for name, (seconds, _) in results.items():
        print(f"| {name} | {seconds:.2f} | {len(rows) / seconds:.0f} |")
    print(f"speed-up: {serial_s / pool_s:.2f}x")


if __name__ == "__main__":
    main()
