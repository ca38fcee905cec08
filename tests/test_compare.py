"""`lrn compare` on hand-made run directories, with expectations computed by hand."""

import csv
import doctest
import json
import math
import random
import statistics
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from typer.testing import CliRunner

import lrn.curves
import lrn.intervals
import lrn.report
from lrn.cli import app
from lrn.compare import compare_dirs, summarise
from lrn.curves import Curve, mean_curve, mean_over_tokens, target_grid, to_target, value_at
from lrn.intervals import Draws, Estimate, difference, interval, t_quantile
from lrn.report import render_markdown
from lrn.runs import (
    CompareError,
    Run,
    check_same_evaluation,
    choose_metric,
    find_baseline,
    group_runs,
    load_run,
    run_curve,
    varying_keys,
)

ACC = "eval/arithmetic/accuracy"
STEPS = [0, 10, 20, 30, 40, 50]
# 2 groups x 3 seeds, evaluated at STEPS. Baseline (uniform) seed mean: 0.10, 0.2333, 0.40, 0.5333,
# 0.5833, 0.5833 -> its best, 1.75 / 3 = 0.5833, first reached at step 40.
UNIFORM = [[0.10, 0.20, 0.40, 0.50, 0.60, 0.55],   # own crossing: 30 + 10 * (0.5833 - 0.5) / 0.1 = 38.33
           [0.10, 0.30, 0.50, 0.70, 0.65, 0.70],   # 20 + 10 * 0.0833 / 0.2 = 24.17
           [0.10, 0.20, 0.30, 0.40, 0.50, 0.50]]   # never
# Seed mean 0.10, 0.40, 0.5833 (the same three values as uniform's at step 40), 0.6733, 0.75, 0.79.
LEARN = [[0.10, 0.40, 0.60, 0.70, 0.75, 0.80],     # 10 + 10 * 0.1833 / 0.2 = 19.17
         [0.10, 0.50, 0.65, 0.70, 0.80, 0.85],     # 10 + 10 * 0.0833 / 0.15 = 15.56
         [0.10, 0.30, 0.50, 0.62, 0.70, 0.72]]     # 20 + 10 * 0.0833 / 0.12 = 26.94
TARGET = 1.75 / 3
EVAL_S = 0.25  # what make_rows logs as perf/eval_s for each evaluation


def make_rows(evals: dict[int, float], last: int | None = None, tokens_per_step: float = 100,
              seconds_per_step: float = 2.0, metric: str = ACC, clock: str = "train_s") -> list[dict]:
    """Rows for steps 0..last: tokens = tokens_per_step*step, training seconds = seconds_per_step*step + 0.5,
    each evaluation EVAL_S more on the wall clock (``time/elapsed_s``). ``clock``: which clocks the rows
    carry, as runs of today (``train_s``), from before time/train_s (``elapsed-eval``) or without perf/eval_s."""
    last = max(evals) if last is None else last
    rows, evaluated = [], 0.0
    for step in range(last + 1):
        train = seconds_per_step * step + 0.5
        row = {"step": step, "counts/rollouts_total": 10 * step,
               "counts/tokens_generated_total": tokens_per_step * step}
        if step in evals:
            row |= {metric: evals[step], f"{metric}/L1": 1.0}
            evaluated += EVAL_S
            if clock != "elapsed":
                row["perf/eval_s"] = EVAL_S
        row["time/elapsed_s"] = train + evaluated
        if clock == "train_s":
            row["time/train_s"] = train
        rows.append(row)
    return rows


def make_config(sampler: str = "uniform", seed: int = 0, batch_size: int = 32, **extra) -> dict:
    """A trimmed resolved config like the trainer's (learnability runs have sampler.pool_factor)."""
    config = {"seed": seed, "run_name": f"{sampler}-arithmetic-s{seed}",
              "model": {"name": "tiny", "warm_start": {"seed": 0, "level_mix": [0.5, 0.5]}},
              "dataset": {"name": "arithmetic"}, "sampler": {"name": sampler},
              "ppo": {"lr": 1e-4},
              "trainer": {"steps": 50, "batch_size": batch_size, "rollouts_per_question": 8},
              "eval": {"limit": None}, "logger": {"wandb": {"mode": "disabled" if seed % 2 else "offline"}}}
    if sampler == "learnability":
        config["sampler"]["pool_factor"] = 4
    for key, value in extra.items():
        OmegaConf.update(cfg := OmegaConf.create(config), key, value)
        config = OmegaConf.to_container(cfg)
    return config


def make_run(path: Path, rows: list[dict], **config) -> Path:
    """Write a run directory with metrics.jsonl and resolved_config.yaml."""
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    OmegaConf.save(OmegaConf.create(make_config(**config)), path / "resolved_config.yaml")
    return path


def make_sweep(root: Path, clock: str = "train_s") -> Path:
    """The 2 x 3 example as a Hydra multirun dir: uniform 100 tok/step 2 s/step, learnability 400 and 3."""
    for i, (sampler, curves, tokens, seconds) in enumerate(
            [("uniform", UNIFORM, 100, 2.0), ("learnability", LEARN, 400, 3.0)]):
        for seed, curve in enumerate(curves):
            evals = dict(zip(STEPS, curve, strict=True))
            rows = make_rows(evals, tokens_per_step=tokens, seconds_per_step=seconds, clock=clock)
            make_run(root / f"{3 * i + seed}_{sampler}_s{seed}", rows, sampler=sampler, seed=seed)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def mem_run(name: str, evals: dict[int, float], **config) -> Run:
    """An in-memory run (flattened config) for the pure functions."""
    from lrn.runs import flatten

    return Run(Path(name), flatten(make_config(**config)), make_rows(evals))


def curve_of(values: list[float], steps: list[int] = STEPS, tokens_per_step: float = 100,
             seconds_per_step: float = 2.0) -> Curve:
    return run_curve(make_rows(dict(zip(steps, values, strict=True)), tokens_per_step=tokens_per_step,
                               seconds_per_step=seconds_per_step), ACC)


def test_doctests():
    for module in (lrn.curves, lrn.intervals, lrn.report):
        assert doctest.testmod(module).failed == 0, module


# --- steps to target ------------------------------------------------------------------------------------

UNEQUAL = {0: 0.1, 5: 0.3, 10: 0.5, 30: 0.6, 100: 0.9}  # evals at 0, 5, 10, 30, 100; rows at every step


def hit(step: float, tokens_per_step: float = 100, seconds_per_step: float = 2.0) -> dict:
    """What make_rows logs at a (fractional) step: tokens and training seconds are linear in the step."""
    return {"steps": step, "tokens": tokens_per_step * step, "seconds": seconds_per_step * step + 0.5}


@pytest.mark.parametrize(("target", "expected"), [
    (0.5, hit(10)),          # equality counts: 0.5 >= 0.5 at step 10, so nothing to interpolate
    (0.55, hit(20)),         # halfway from 0.5 (step 10) to 0.6 (step 30)
    (0.7, hit(30 + 70 / 3)),  # a third of the way from 0.6 (step 30) to 0.9 (step 100)
    (0.0, hit(0)),           # the evaluation before training already reaches it
    (0.95, dict.fromkeys(("steps", "tokens", "seconds"), math.inf)),  # never
])
def test_to_target_interpolates_between_evaluations(target, expected):
    rows = make_rows(UNEQUAL)
    assert to_target(run_curve(rows, ACC), target) == pytest.approx(expected)
    random.Random(0).shuffle(rows)  # rows are taken in step order whatever the file order
    assert to_target(run_curve(rows, ACC), target) == pytest.approx(expected)


def test_to_target_by_hand_and_first_crossing():
    # 0.2 at step 10, 0.4 at step 20, target 0.3: the crossing is at step 15 (1500 tokens, 30.5 s)
    assert to_target(run_curve(make_rows({10: 0.2, 20: 0.4}), ACC), 0.3) == pytest.approx(hit(15))
    dip = run_curve(make_rows({0: 0.1, 10: 0.6, 20: 0.4, 30: 0.7}), ACC)
    assert to_target(dip, 0.5)["steps"] == pytest.approx(8)  # 0.1 -> 0.6 on 0..10, not the later 20..30
    assert to_target(dip, 0.65)["steps"] == pytest.approx(20 + 10 * 0.25 / 0.3)  # 0.4 -> 0.7 on 20..30
    assert to_target(run_curve(make_rows({0: 0.3}), ACC), 0.3 + 1e-12)["steps"] == 0  # float noise


def test_seed_mean_curve_uses_the_steps_every_seed_has():
    a = Curve((0, 10, 20), (0.1, 0.3, 0.5), (0, 100, 200), (1, 2, 3))
    b = Curve((0, 5, 10), (0.3, 0.4, 0.5), (0, 60, 120), (1, 3, 5))  # evaluated at 5, stopped at 10
    assert mean_curve([a, b]) == Curve((0, 10), (0.2, 0.4), (0, 110), (1, 3.5))
    assert mean_curve([a, a]) == a


# --- seconds without evaluation --------------------------------------------------------------------------

def test_seconds_come_from_time_train_s_or_elapsed_less_evaluation(tmp_path):
    new = compare_dirs([make_sweep(tmp_path / "new")], targets=[TARGET])
    assert new.seconds.startswith("time/train_s (wall seconds without evaluation and checkpoint writing)")
    assert new.groups[0].targets[0].to_target["seconds"] == pytest.approx(80.5)  # 2 s/step * 40 + 0.5
    # runs from before time/train_s: elapsed minus every perf/eval_s so far gives the same seconds here
    old = compare_dirs([make_sweep(tmp_path / "old", clock="elapsed-eval")], targets=[TARGET])
    assert old.seconds.startswith("time/elapsed_s minus the summed perf/eval_s")
    assert old.groups[0].targets[0].to_target == pytest.approx(new.groups[0].targets[0].to_target)
    assert old.groups[1].seconds_per_step == pytest.approx(new.groups[1].seconds_per_step) == 150.5 / 50
    # without perf/eval_s the wall clock is all there is: at step 40, five evaluations of 0.25 s are in it
    bare = compare_dirs([make_sweep(tmp_path / "bare", clock="elapsed")], targets=[TARGET])
    assert bare.seconds.startswith("time/elapsed_s (no perf/eval_s")
    assert bare.groups[0].targets[0].to_target["seconds"] == pytest.approx(80.5 + 5 * EVAL_S)
    assert not new.warnings[0].startswith("warning: the runs' seconds")
    mixed = compare_dirs([tmp_path / "new", tmp_path / "old"], targets=[TARGET], by="sampler.name")
    assert mixed.warnings[0].startswith("warning: the runs' seconds come from different clocks")


# --- the target grid ------------------------------------------------------------------------------------

GRID_STEPS = [0, 10, 20, 30, 40, 50, 60, 70]
# seed mean 0.20, 0.25, 0.29, 0.32, 0.34, 0.35, 0.36, 0.36: start 0.20; 8 evaluations, the last quarter
# is the last 2: plateau (0.36 + 0.36) / 2 = 0.36; 0.25, 0.5, 0.75, 0.9 of the way: 0.24, 0.28, 0.32, 0.344
GRID_BASE = [[0.20, 0.24, 0.28, 0.30, 0.33, 0.34, 0.36, 0.34],
             [0.20, 0.26, 0.30, 0.34, 0.35, 0.36, 0.36, 0.38]]


def grid_sweep(root: Path) -> Path:
    for seed, values in enumerate(GRID_BASE):
        make_run(root / f"u{seed}", make_rows(dict(zip(GRID_STEPS, values, strict=True))), seed=seed)
    # a faster group: the same curves at half the steps (evaluated every 5)
    for seed, values in enumerate(GRID_BASE):
        make_run(root / f"l{seed}", make_rows(dict(zip([s // 2 for s in GRID_STEPS], values, strict=True))),
                 sampler="learnability", seed=seed)
    return root


def test_grid_from_the_baselines_start_and_plateau(tmp_path):
    grid = target_grid(mean_curve([curve_of(v, GRID_STEPS) for v in GRID_BASE]))
    assert (grid.start, grid.plateau, grid.plateau_points, grid.points) == pytest.approx((0.2, 0.36, 2, 8))
    assert grid.fractions == (0.25, 0.5, 0.75, 0.9)
    assert grid.targets == pytest.approx((0.24, 0.28, 0.32, 0.344))
    c = compare_dirs([grid_sweep(tmp_path / "sweep")])
    assert c.targets == pytest.approx([0.24, 0.28, 0.32, 0.344])
    assert c.target_source.startswith("0.25, 0.5, 0.75, 0.9 of the way from the baseline's start 0.2 "
                                      "(its seed mean at step 0) to its plateau 0.36 (the mean of its seed-mean "
                                      "curve's last 2 of 8 evaluations)")
    base, fast = c.groups
    # baseline crossings: 0.24 on 0.20 -> 0.25 over 0..10: 8; 0.28 on 0.25 -> 0.29 over 10..20: 17.5;
    # 0.32 at step 30 exactly; 0.344 on 0.34 -> 0.35 over 40..50: 44
    assert [r.to_target["steps"] for r in base.targets] == pytest.approx([8, 17.5, 30, 44])
    assert [r.early for r in base.targets] == [True, False, False, False]  # 8 lies between steps 0 and 10
    assert [r.fraction for r in base.targets] == [0.25, 0.5, 0.75, 0.9]
    # the same curves at half the steps: exactly 2x at every target, paired by seed
    assert [r.to_target["steps"] for r in fast.targets] == pytest.approx([4, 8.75, 15, 22])
    assert fast.pairing == "paired"
    for r in fast.targets:
        assert (r.speedup["steps"].value, r.speedup["steps"].lo, r.speedup["steps"].hi) == pytest.approx((2, 2, 2))
        assert r.speedup["tokens"].value == pytest.approx(2)  # 100 tokens per step in both


def test_no_grid_when_the_baseline_does_not_rise(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path / f"u{seed}", make_rows({0: 0.3, 10: 0.3, 20: 0.25}), seed=seed)
    with pytest.raises(CompareError, match=r"plateau \(0.25, mean of its last 1 evaluation\(s\)\) is not above "
                                           r"its start \(0.3\): .* set targets with --targets"):
        compare_dirs([tmp_path])
    assert compare_dirs([tmp_path], targets=[0.3]).groups[0].targets[0].to_target["steps"] == 0


# --- two groups at one target ---------------------------------------------------------------------------

def test_two_groups_three_seeds_speedups(tmp_path):
    c = compare_dirs([make_sweep(tmp_path / "sweep")], targets=[TARGET])
    assert c.metric == ACC and c.targets == pytest.approx([TARGET]) and c.keys == ["sampler.name"]
    assert c.baseline == "sampler.name=uniform" and c.grid is None and c.target_source == "given with --targets"
    base, learn = c.groups  # baseline first
    assert (base.label, learn.label) == ("sampler.name=uniform", "sampler.name=learnability")
    b, m = base.targets[0], learn.targets[0]
    # the seed means: uniform first reaches the target at step 40, learnability at step 20
    assert b.to_target == pytest.approx(hit(40))
    assert m.to_target == pytest.approx(hit(20, 400, 3.0))
    assert b.reached == 2 and m.reached == 3 and not b.early and not m.early
    assert b.per_seed["steps"] == pytest.approx([38 + 1 / 3, 24 + 1 / 6, math.inf])
    assert m.per_seed["steps"] == pytest.approx([19 + 1 / 6, 15 + 5 / 9, 26 + 17 / 18])
    assert m.per_seed["tokens"] == pytest.approx([400 * s for s in m.per_seed["steps"]])
    assert m.speedup["steps"].value == pytest.approx(2.0)  # 40 / 20
    assert m.speedup["tokens"].value == pytest.approx(0.5)  # 4000 / 8000: screening costs 4x tokens per step
    assert m.speedup["seconds"].value == pytest.approx(80.5 / 60.5)  # 1.3306
    assert b.speedup == {k: Estimate(1.0) for k in ("steps", "tokens", "seconds")}  # 1 by definition
    assert (base.pairing, learn.pairing) == ("", "paired")  # both ran seeds 0, 1, 2
    for kind, e in m.speedup.items():
        assert e.lo <= e.value <= e.hi, kind
    assert m.speedup == compare_dirs([tmp_path / "sweep"], targets=[TARGET]).groups[1].targets[0].speedup
    assert (learn.final.median, learn.final.lo, learn.final.hi) == (0.80, 0.72, 0.85)
    assert (base.final.median, base.best.median, base.best.hi) == (0.55, 0.60, 0.70)
    assert base.seconds_per_step == pytest.approx(100.5 / 50)  # training seconds at step 50 / 50
    assert learn.seconds_per_step == pytest.approx(150.5 / 50)


def test_target_not_reached_by_the_baseline(tmp_path):
    c = compare_dirs([make_sweep(tmp_path / "sweep")], target=0.68)  # --target: one target
    (b,), (m,) = (g.targets for g in c.groups)
    # uniform's seed mean peaks at 0.5833: never; its seed 1 gets there at 20 + 10 * 0.18 / 0.2 = 29
    assert b.reached == 1 and math.isinf(b.to_target["steps"])
    assert b.per_seed["steps"] == pytest.approx([math.inf, 29, math.inf])
    # learnability's seed mean: 0.6733 at 30, 0.75 at 40 -> 30 + 10 * 0.0067 / 0.0767 = 30.87; no speed-up
    assert m.to_target["steps"] == pytest.approx(30 + 10 * (0.68 - 2.02 / 3) / (0.75 - 2.02 / 3))
    assert m.speedup["steps"] is None and b.speedup["steps"] is None
    md = render_markdown(c)
    assert "| sampler.name=uniform (baseline) | 0.68 | 1/3 | not reached | ∞, 29, ∞ | ∞ | ∞ | — | — | — |" in md
    assert "| sampler.name=learnability | 0.68 | 3/3 | 30.9 | 28, 26, 37.5 | 12.3k | 93.1s | — | — | — |" in md


def test_summaries_of_groups_with_different_evaluation_steps():
    groups = {"a": [mem_run("a0", {0: 0.1, 10: 0.8}), mem_run("a1", {0: 0.1, 10: 0.5, 20: 0.8}, seed=1)],
              "b": [mem_run("b0", {0: 0.1, 5: 0.2, 10: 0.8}), mem_run("b1", {0: 0.1, 10: 0.4}, seed=1)]}
    a, b = summarise(groups, "a", ACC, [0.6]).groups
    # a's mean on its common steps 0, 10: 0.1, 0.65 -> 0.6 at 10 * 0.5 / 0.55; b's: 0.1, 0.6 -> 10
    assert a.targets[0].to_target["steps"] == pytest.approx(100 / 11)
    assert b.targets[0].to_target["steps"] == pytest.approx(10)
    assert a.targets[0].per_seed["steps"] == pytest.approx([100 / 14, 10 + 10 / 3]) and b.targets[0].reached == 1
    assert b.targets[0].speedup["steps"].value == pytest.approx(10 / 11)


# --- budgets and the area under metric vs tokens ----------------------------------------------------------

def test_value_at_a_budget_by_hand():
    c = curve_of(LEARN[0], tokens_per_step=400, seconds_per_step=3.0)  # 0.10, 0.40, 0.60 at steps 0, 10, 20
    assert value_at(c, "steps", 12.5) == pytest.approx(0.45)  # a quarter of the way from 0.40 to 0.60
    assert value_at(c, "tokens", 1250) == pytest.approx(0.19375)  # step 3.125: 0.10 + 0.3125 * 0.30
    assert value_at(c, "seconds", 30.5) == pytest.approx(0.40)  # 3 s/step + 0.5: step 10 exactly
    assert math.isnan(value_at(c, "steps", 50.5)) and math.isnan(value_at(c, "seconds", 0.4))  # not extrapolated


def test_metric_at_default_budgets(tmp_path):
    c = compare_dirs([make_sweep(tmp_path / "sweep")], targets=[TARGET])
    # 25%, 50%, 100% of the baseline's shortest seed: 50 steps, 5000 tokens, 100.5 training seconds
    assert c.budgets == {"steps": [(12.5, 0.25), (25, 0.5), (50, 1.0)],
                         "tokens": [(1250, 0.25), (2500, 0.5), (5000, 1.0)],
                         "seconds": [(25.125, 0.25), (50.25, 0.5), (100.5, 1.0)]}
    base, learn = c.groups
    at = {(r.kind, r.budget): r for r in learn.budgets}
    mine = at["tokens", 1250]  # learnability's step 3.125: 0.10 + 0.3125 * (0.40, 0.50, 0.30 - 0.10)
    assert mine.per_seed == pytest.approx([0.19375, 0.225, 0.1625])
    assert mine.accuracy.value == pytest.approx(0.19375)
    theirs = next(r for r in base.budgets if (r.kind, r.budget) == ("tokens", 1250))
    assert theirs.per_seed == pytest.approx([0.25, 0.35, 0.225])  # uniform's step 12.5
    diffs = [0.19375 - 0.25, 0.225 - 0.35, 0.1625 - 0.225]  # paired: seed by seed
    half = t_quantile(0.975, 2) * statistics.stdev(diffs) / math.sqrt(3)
    assert (mine.delta.value, mine.delta.lo, mine.delta.hi) == pytest.approx(
        (statistics.fmean(diffs), statistics.fmean(diffs) - half, statistics.fmean(diffs) + half))
    assert theirs.delta is None  # the baseline against itself
    # seconds: 100.5 s is learnability's step 33.33: 0.70 + (1/3) * 0.05, 0.70 + (1/3) * 0.10, 0.62 + (1/3) * 0.08
    assert at["seconds", 100.5].per_seed == pytest.approx([0.70 + 0.05 / 3, 0.70 + 0.1 / 3, 0.62 + 0.08 / 3])
    assert at["steps", 50].per_seed == pytest.approx([0.80, 0.85, 0.72])  # its final values


def test_budget_beyond_a_run_is_not_extrapolated(tmp_path):
    c = compare_dirs([make_sweep(tmp_path / "sweep")], targets=[TARGET], budgets={"tokens": [10000]})
    assert c.budgets["tokens"] == [(10000, None)] and c.budgets["steps"][0] == (12.5, 0.25)  # the others: default
    base, learn = c.groups
    (mine,) = [r for r in learn.budgets if r.kind == "tokens"]
    (theirs,) = [r for r in base.budgets if r.kind == "tokens"]
    assert all(math.isnan(v) for v in theirs.per_seed) and theirs.accuracy is None  # uniform ends at 5000
    assert mine.per_seed == pytest.approx([0.65, 0.675, 0.56])  # learnability's step 25
    assert mine.delta is None  # nothing to subtract
    md = render_markdown(c)
    assert "| 10k tokens | sampler.name=uniform (baseline) | 0/3 | — | — |" in md
    assert "| 10k tokens | sampler.name=learnability | 3/3 | 0.628 [" in md


def test_mean_metric_over_the_common_token_range(tmp_path):
    # uniform's seed 0 over its 5000 tokens (steps 0..50, evaluations evenly spaced): trapezoids
    # (0.10/2 + 0.20 + 0.40 + 0.50 + 0.60 + 0.55/2) / 5 = 0.405
    assert mean_over_tokens(curve_of(UNIFORM[0]), 0, 5000) == pytest.approx(0.405)
    # learnability's seed 0 over the same 5000 tokens = its steps 0..12.5: 0.10 -> 0.40 over 4000 tokens,
    # 0.40 -> 0.45 over the last 1000: (1000 + 425) / 5000
    assert mean_over_tokens(curve_of(LEARN[0], tokens_per_step=400), 0, 5000) == pytest.approx(0.285)
    assert math.isnan(mean_over_tokens(curve_of(UNIFORM[0]), 0, 5001))  # beyond the run
    c = compare_dirs([make_sweep(tmp_path / "sweep")], targets=[TARGET])
    assert c.area_range == (0, 5000)  # every run starts at 0 tokens; uniform's end at 5000 first
    base, learn = c.groups
    assert base.area_per_seed[0] == pytest.approx(0.405) and learn.area_per_seed[0] == pytest.approx(0.285)
    assert base.area.value == pytest.approx(statistics.fmean(base.area_per_seed))
    expected = difference(learn.area_per_seed, base.area_per_seed, paired=True)
    assert learn.area_delta == expected and expected.value < 0  # 4x the tokens per step: less per token
    assert base.area_delta is None


def test_mixed_evaluation_settings_are_refused():
    ev = {0: 0.1, 10: 0.5}
    check_same_evaluation([mem_run("a", ev), mem_run("b", ev, **{"dataset.train_size": 10})])  # training side
    check_same_evaluation([mem_run("a", ev), mem_run("b", ev, **{"dataset.question_template": None})])  # older
    for key, value in [("eval.limit", 100), ("eval.samples", 4), ("trainer.eval_every", 5),
                       ("dataset.test_seed", 7), ("dataset.test_path", "held.jsonl"),
                       ("dataset.eval_split", "validation")]:
        with pytest.raises(CompareError, match=f"evaluated differently: {key} = "):
            check_same_evaluation([mem_run("a", ev), mem_run("b", ev, **{key: value})])
    runs = [mem_run("a", ev, **{"trainer.eval_every": 10}),
            mem_run("b", ev, **{"eval.limit": 100, "trainer.eval_every": 5})]
    with pytest.raises(CompareError) as e:
        check_same_evaluation(runs)
    assert str(e.value).startswith("runs were evaluated differently: trainer.eval_every = 10 (1 run(s), "
                                   "e.g. a) vs 5 (1 run(s), e.g. b); eval.limit = null (1 run(s), e.g. a) vs "
                                   "100 (1 run(s), e.g. b); ")


def test_runs_from_before_a_key_existed_compare_with_runs_at_its_old_behaviour(tmp_path):
    # Runs written before issue 20 have no dataset.long_prompts. A finished run under `refuse` had no
    # prompt over the limit, so the older run (same dataset) used the same prompts: one group, no refusal.
    evals = {0: 0.1, 10: 0.5}
    old = make_run(tmp_path / "old", make_rows(evals))
    new = make_run(tmp_path / "new", make_rows(evals), seed=1, **{"dataset.long_prompts": "refuse"})
    runs = [load_run(old), load_run(new)]
    check_same_evaluation(runs)
    assert list(group_runs(runs)) == ["all"]
    assert runs[0].config["dataset.long_prompts"] == "refuse"
    # likewise runs from before trainer.strategy (one strategy then: ddp's) group with ddp runs, not fsdp
    ddp = make_run(tmp_path / "ddp", make_rows(evals), seed=3, **{"trainer.strategy": "ddp"})
    fsdp = make_run(tmp_path / "fsdp", make_rows(evals), seed=4, **{"trainer.strategy": "fsdp"})
    assert [len(g) for g in group_runs([*runs, load_run(ddp), load_run(fsdp)]).values()] == [3, 1]
    # `drop` may have dropped held-out questions the older code kept: still refused
    dropped = make_run(tmp_path / "drop", make_rows(evals), seed=2, **{"dataset.long_prompts": "drop"})
    with pytest.raises(CompareError, match="evaluated differently: dataset.long_prompts = refuse "):
        check_same_evaluation([*runs, load_run(dropped)])


# --- grouping and baseline ------------------------------------------------------------------------------

def control_runs() -> list[Run]:
    """Uniform and learnability at batch 32 (seeds 0, 1) and a uniform batch-128 control (seed 0)."""
    ev = {0: 0.1, 10: 0.5}
    return [mem_run("u0", ev, seed=0), mem_run("u1", ev, seed=1),
            mem_run("l0", ev, sampler="learnability", seed=0),
            mem_run("l1", ev, sampler="learnability", seed=1),
            mem_run("u128", ev, batch_size=128, seed=0)]


def test_default_grouping_picks_varying_keys_and_ignores_seed():
    runs = control_runs()
    # seed, run_name and logger.wandb.mode vary but are ignored; sampler.pool_factor is implied by the name
    assert varying_keys(runs) == ["sampler.name", "trainer.batch_size"]
    groups = group_runs(runs)
    assert {k: [r.path.name for r in v] for k, v in groups.items()} == {
        "sampler.name=learnability,trainer.batch_size=32": ["l0", "l1"],
        "sampler.name=uniform,trainer.batch_size=32": ["u0", "u1"],
        "sampler.name=uniform,trainer.batch_size=128": ["u128"]}
    assert list(group_runs(runs[:2])) == ["all"]
    # where a run cached its warm start is not part of the experiment
    moved = mem_run("u2", {0: 0.1, 10: 0.5}, seed=2, **{"model.warm_start.cache_dir": "/elsewhere"})
    assert varying_keys([*runs, moved]) == ["sampler.name", "trainer.batch_size"]
    assert list(group_runs(runs, ["sampler"])) == ["sampler.name=learnability", "sampler.name=uniform"]
    pool = [mem_run("l2", {0: 0.1}, sampler="learnability", **{"sampler.pool_factor": 2}), *runs[:3]]
    assert list(group_runs(pool)) == ["sampler.name=learnability,sampler.pool_factor=2",
                                      "sampler.name=learnability,sampler.pool_factor=4",
                                      "sampler.name=uniform"]


def test_baseline_spec():
    groups = group_runs(control_runs())
    with pytest.raises(CompareError, match="matches 2 groups.*more specific"):
        find_baseline(groups, "sampler=uniform")
    assert find_baseline(groups, "sampler=uniform,trainer.batch_size=128") == \
        "sampler.name=uniform,trainer.batch_size=128"
    assert find_baseline(groups, "sampler.name=learnability,ppo.lr=1e-4") == \
        "sampler.name=learnability,trainer.batch_size=32"  # 1e-4 == 0.0001 compared as numbers
    assert find_baseline(groups, "trainer.batch_size=128") == "sampler.name=uniform,trainer.batch_size=128"
    with pytest.raises(CompareError, match="no group matches.*groups: sampler.name=learnability"):
        find_baseline(groups, "sampler=lilo")
    with pytest.raises(CompareError, match="expected key=value"):
        find_baseline(groups, "uniform")


def test_choose_metric():
    runs = control_runs()
    assert choose_metric(runs) == ACC
    other = Run(Path("gsm"), runs[0].config, make_rows({0: 0.2}, metric="eval/gsm8k/accuracy"))
    with pytest.raises(CompareError, match="several: eval/arithmetic/accuracy, eval/gsm8k/accuracy"):
        choose_metric([*runs, other])
    with pytest.raises(CompareError, match="missing from 1 of 6 runs: gsm"):
        choose_metric([*runs, other], ACC)




# --- intervals and pairing --------------------------------------------------------------------------------

def even_sweep(root: Path, learn_seeds: tuple[int, int] = (0, 1)) -> Path:
    """2 seeds per group whose bests straddle each other."""
    curves = {"uniform": [[0.1, 0.3, 0.5, 0.5], [0.1, 0.7, 0.6, 0.6]],       # mean 0.1, 0.5, 0.55, 0.55
              "learnability": [[0.1, 0.4, 0.7, 0.8], [0.1, 0.6, 0.7, 0.8]]}  # mean 0.1, 0.5, 0.7, 0.8
    for i, (sampler, pair) in enumerate(curves.items()):
        for j, curve in enumerate(pair):
            seed = learn_seeds[j] if sampler == "learnability" else j
            rows = make_rows(dict(zip(STEPS[:4], curve, strict=True)), tokens_per_step=100 * 4 ** i,
                             seconds_per_step=2.0 + i)
            make_run(root / f"{2 * i + j}_{sampler}_s{seed}", rows, sampler=sampler, seed=seed)
    return root


def test_paired_and_unpaired_bootstrap_by_hand(tmp_path):
    c = compare_dirs([even_sweep(tmp_path / "sweep")], targets=[0.55], method="percentile")
    (b,), (m,) = (g.targets for g in c.groups)
    assert b.to_target == pytest.approx(hit(20)) and b.per_seed["steps"] == pytest.approx([math.inf, 7.5])
    # learnability's mean: 0.5 at 10, 0.7 at 20 -> 12.5 steps, 5000 tokens, 38 s; seeds at 15 and 9
    assert m.to_target == pytest.approx(hit(12.5, 400, 3.0)) and m.per_seed["steps"] == pytest.approx([15, 9])
    assert m.speedup["steps"].value == pytest.approx(1.6)
    md = render_markdown(c)
    assert "| sampler.name=uniform (baseline) | 0.55 | 1/2 | 20 | ∞, 7.5 | 2k | 40.5s | 1.00× | 1.00× | 1.00× |" in md
    # tokens: 2000 / 5000 = 0.4 (resamples inf, 750 / 3600 = 0.21, 0.4); seconds: 40.5 / 38 (inf, 15.5 / 27.5)
    assert ("| sampler.name=learnability | 0.55 | 2/2 | 12.5 | 15, 9 | 5k | 38.0s | 1.60× [0.83–∞] | 0.40× [0.21–∞] | "
            "1.07× [0.56–∞] |") in md
    assert "percentile bootstrap interval, seeds resampled 2000 times" in md
    # Paired resamples (seed indices drawn once for both groups): {0,0} (p 1/4): uniform's seed 0 never
    # reaches 0.55 -> inf; {1,1} (p 1/4): 7.5 / 9 = 0.833; {0,1} (p 1/2): 20 / 12.5 = 1.6. The 2.5% and
    # 97.5% points: 0.833 and inf.
    assert c.groups[1].pairing == "paired"
    assert (m.speedup["steps"].lo, m.speedup["steps"].hi) == pytest.approx((7.5 / 9, math.inf))
    # Unpaired, uniform's resamples take inf (p 1/4), 7.5 (1/4) or 20 (1/2) steps and learnability's,
    # independently, 15 (1/4), 9 (1/4) or 12.5 (1/2): the smallest ratio 7.5 / 15 = 0.5 has p 1/16 > 2.5%.
    unpaired = compare_dirs([tmp_path / "sweep"], targets=[0.55], method="percentile", unpaired=True)
    assert unpaired.groups[1].pairing == "unpaired"
    e = unpaired.groups[1].targets[0].speedup["steps"]
    assert (e.value, e.lo, e.hi) == pytest.approx((1.6, 0.5, math.inf))
    # other seeds: unpaired without being asked, the same resamples
    other = compare_dirs([even_sweep(tmp_path / "other", learn_seeds=(5, 6))], targets=[0.55], method="percentile")
    assert other.groups[1].pairing == "unpaired" and other.groups[1].targets[0].speedup["steps"] == e


# Three seeds with a strong seed effect (seed 0 learns fast, seed 2 slowly), evaluated every 10 steps.
SEEDY = [[0.10, 0.30, 0.50, 0.60, 0.65, 0.70, 0.72, 0.74, 0.75, 0.76, 0.76],
         [0.10, 0.15, 0.25, 0.35, 0.45, 0.52, 0.58, 0.63, 0.67, 0.70, 0.72],
         [0.10, 0.12, 0.15, 0.20, 0.25, 0.30, 0.36, 0.42, 0.48, 0.53, 0.57]]


def test_pairing_cancels_a_seed_effect_both_groups_share(tmp_path):
    """The other group's seed i is baseline seed i at twice the speed (its curve at half the steps): the
    seed's luck is the same in both, so every paired resample gives exactly 2; resampled independently,
    a resample can pair slow baseline seeds with fast ones, and the interval spans the seeds' spread."""
    for seed, values in enumerate(SEEDY):
        make_run(tmp_path / f"u{seed}", make_rows(dict(zip(range(0, 101, 10), values, strict=True))), seed=seed)
        make_run(tmp_path / f"l{seed}", make_rows(dict(zip(range(0, 51, 5), values, strict=True))),
                 sampler="learnability", seed=seed)
    # the baseline's mean: 0.3833 at 30, 0.45 at 40 -> 0.4 at 32.5; the other group's at 16.25
    for method in ("t", "percentile"):
        paired = compare_dirs([tmp_path], targets=[0.4], method=method).groups[1]
        e = paired.targets[0].speedup["steps"]
        assert paired.pairing == "paired" and (e.value, e.lo, e.hi) == pytest.approx((2, 2, 2)), method
        assert paired.targets[0].to_target["steps"] == pytest.approx(16.25)
        unpaired = compare_dirs([tmp_path], targets=[0.4], method=method, unpaired=True).groups[1]
        u = unpaired.targets[0].speedup["steps"]
        assert u.value == pytest.approx(2) and u.lo < 1.5 and u.hi > 3, (method, u)


def test_t_interval_on_the_log_ratio_by_hand():
    # resampled log-ratios spread like a normal sample with sd 0.1 around log 2
    n = 10_000
    boot = math.log(2) + 0.1 * np.array([lrn.intervals.NORMAL.inv_cdf((i + 0.5) / n) for i in range(n)])
    d = Draws(math.log(2), boot, [], [5], None)  # paired, 5 seeds
    # t with 4 degrees of freedom (2.776) times the bootstrap sd scaled by sqrt(5 / 4)
    half = 2.776 * 0.1 * math.sqrt(5 / 4)
    assert interval(d, "t") == pytest.approx((2 * math.exp(-half), 2 * math.exp(half)), rel=2e-3)
    assert interval(d, "percentile") == pytest.approx((2 * math.exp(-0.196), 2 * math.exp(0.196)), rel=2e-3)
    # unpaired: each group's share of the variance, Welch's degrees of freedom (here 2 x 4 = 8: 2.306)
    parts = [boot / math.sqrt(2), boot / math.sqrt(2)]
    u = Draws(math.log(2), boot, [], [5, 5], [p - p.mean() for p in parts])
    half = 2.306 * 0.1 * math.sqrt(5 / 4)
    assert interval(u, "t") == pytest.approx((2 * math.exp(-half), 2 * math.exp(half)), rel=2e-3)


# --- a second reference group --------------------------------------------------------------------------

def test_every_ratio_and_difference_also_against_a_reference(tmp_path):
    c = compare_dirs([make_sweep(tmp_path / "sweep")], targets=[TARGET], reference="sampler=learnability")
    assert c.reference == "sampler.name=learnability"
    base, learn = c.groups
    assert learn.reference and not base.reference
    # uniform against learnability: 20 / 40 steps, paired (same seeds), with an interval around it
    e = base.targets[0].vs_reference["steps"]
    assert e.value == pytest.approx(0.5) and e.lo < 0.5 < e.hi and base.pairing_reference == "paired"
    assert learn.targets[0].vs_reference["steps"] == Estimate(1.0)
    # uniform - learnability at 1250 tokens: 0.275 - 0.19375, seed by seed
    r = next(x for x in base.budgets if (x.kind, x.budget) == ("tokens", 1250))
    assert r.delta_reference.value == pytest.approx(0.275 - 0.19375) and r.delta_reference.lo is not None
    assert base.area_delta_reference.value == pytest.approx(-learn.area_delta.value)
    md = render_markdown(c)
    assert "speed-up steps × reference" in md and "Δ vs reference" in md
    assert "| sampler.name=learnability (reference) | 0.5833 | 3/3 | 20 |" in md


# --- CLI ------------------------------------------------------------------------------------------------

def invoke(*args: str):
    return CliRunner().invoke(app, ["compare", *map(str, args)])


def test_cli_warns_under_five_seeds(tmp_path):
    result = invoke(make_sweep(tmp_path / "sweep"))
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines == [f"lrn: warning: group sampler.name={s} has 3 seed(s), fewer than 5: its intervals are wide "
                     "and rest on few degrees of freedom (docs/compare.md: coverage)"
                     for s in ("uniform", "learnability")]
    assert "**warning: group sampler.name=uniform has 3 seed(s)" in (tmp_path / "sweep/compare/compare.md").read_text()
    five = tmp_path / "five"
    extra = [[0.10, 0.25, 0.45, 0.55, 0.60, 0.60], [0.10, 0.20, 0.35, 0.50, 0.55, 0.60]]
    for seed, values in enumerate(UNIFORM + extra):
        make_run(five / f"u{seed}", make_rows(dict(zip(STEPS, values, strict=True))), seed=seed)
        make_run(five / f"l{seed}", make_rows(dict(zip(STEPS, values, strict=True))), sampler="learnability",
                 seed=seed)
    result = invoke(five)
    assert result.exit_code == 0 and result.stderr == "", result.output


def test_cli_grid_table_and_csv_rows(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    result = invoke(sweep)
    assert result.exit_code == 0, result.output
    # uniform's seed mean 0.10 ... 0.5833, 0.5833: plateau 0.5833 (last 2 of 6), start 0.10
    targets = [0.1 + f * (1.75 / 3 - 0.1) for f in (0.25, 0.5, 0.75, 0.9)]
    rows = list(csv.DictReader((sweep / "compare" / "compare.csv").open()))
    assert [r["group"] for r in rows] == ["sampler.name=uniform", "sampler.name=learnability"] * 4
    assert [float(r["target"]) for r in rows] == pytest.approx([t for t in targets for _ in range(2)])
    assert [float(r["target_fraction"]) for r in rows] == [f for f in (0.25, 0.5, 0.75, 0.9) for _ in range(2)]
    # uniform: 0.1 -> 0.2333 over 0..10 reaches 0.2208 at 9.0625; 0.3417 at 10 + 10 * 0.1083 / 0.1667 = 16.5;
    # learnability: 0.1 -> 0.4 over 0..10: 4.03 and 8.06
    steps = [float(r["steps_to_target_interp"]) for r in rows]
    assert steps[:4] == pytest.approx([9.0625, 3.625 / 0.9, 16.5, 7.25 / 0.9])
    assert [r["early_crossing"] for r in rows[:4]] == ["True", "True", "False", "True"]
    # uniform's seeds at 0.3417: 10 + 10 * 0.1417 / 0.2, 10 + 10 * 0.0417 / 0.2, 20 + 10 * 0.0417 / 0.1
    per_seed = [float(v) for v in rows[2]["steps_to_target_interp_per_seed"].split(";")]
    assert per_seed == pytest.approx([17 + 1 / 12, 12 + 1 / 12, 24 + 1 / 6])
    assert float(rows[3]["speedup_steps"]) == pytest.approx(16.5 / (7.25 / 0.9))
    assert float(rows[3]["speedup_steps_lo"]) <= float(rows[3]["speedup_steps"]) <= float(rows[3]["speedup_steps_hi"])
    assert rows[0]["speedup_steps_lo"] == "" and rows[0]["pairing"] == "" and rows[1]["pairing"] == "paired"
    assert {r["interval_method"] for r in rows} == {"t"} and {r["seeds"] for r in rows} == {"0;1;2"}
    budgets = list(csv.DictReader((sweep / "compare" / "compare_budgets.csv").open()))
    assert [(r["kind"], float(r["budget"]), r["group"][13:]) for r in budgets[:4]] == [
        ("steps", 12.5, "uniform"), ("steps", 12.5, "learnability"), ("steps", 25, "uniform"),
        ("steps", 25, "learnability")]
    assert len(budgets) == 18 and float(budgets[7]["value"]) == pytest.approx(0.19375)  # tokens 1250
    md = (sweep / "compare" / "compare.md").read_text()
    assert "| sampler.name=learnability | 0.2208 (0.25) | 3/3 | 4* |" in md
    assert "t interval on the log speed-up, its standard error from the bootstrap" in md
    png = (sweep / "compare" / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "targets 0.2208, 0.3417, 0.4625, 0.535" in result.stdout and "4*" in result.stdout


def test_cli_options(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    extra = make_run(tmp_path / "extra", make_rows(dict(zip(STEPS, [0.1, 0.2, 0.5, 0.6, 0.7, 0.9], strict=True)),
                                                   tokens_per_step=400, seconds_per_step=3.0),
                     sampler="learnability", seed=3)  # a run dir next to a sweep dir: learnability seeds 0-3
    result = invoke(sweep, extra, "--targets", "0.3,0.5", "--reference", "sampler=learnability", "--budget-steps",
                    "10,20", "--out", tmp_path / "o", "--interval", "percentile")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "o" / "compare.csv").open()))
    assert [float(r["target"]) for r in rows] == [0.3, 0.3, 0.5, 0.5] and rows[0]["target_fraction"] == ""
    assert rows[0]["pairing_reference"] == "unpaired"  # seeds 0-2 against 0-3
    assert "speedup_steps_vs_reference_lo" in rows[0] and {r["interval_method"] for r in rows} == {"percentile"}
    budgets = list(csv.DictReader((tmp_path / "o" / "compare_budgets.csv").open()))
    assert [float(r["budget"]) for r in budgets if r["kind"] == "steps"] == [10, 10, 20, 20]
    result = invoke(sweep, "--target", "0.68", "--out", tmp_path / "p", "--by", "sampler.name")
    assert result.exit_code == 0 and "not reached" in result.stdout
    assert (tmp_path / "p" / "compare.csv").exists()


def broken_cases(tmp_path: Path) -> dict[str, tuple[list, str]]:
    """Each error case: (arguments, text the one-line message must contain)."""
    sweep = make_sweep(tmp_path / "sweep")
    (tmp_path / "empty").mkdir()
    no_eval = make_run(tmp_path / "no_eval", [{"step": 0, "counts/tokens_generated_total": 0}])
    gsm = make_run(tmp_path / "gsm", make_rows({0: 0.2}, metric="eval/gsm8k/accuracy"))
    bad = make_run(tmp_path / "bad", make_rows({0: 0.1, 2: 0.2}))
    text = (bad / "metrics.jsonl").read_text()
    (bad / "metrics.jsonl").write_text(text.replace('{"step": 2', '{"step": 2,,'))  # line 3 = step 2
    control = make_run(tmp_path / "u128", make_rows({0: 0.1}), batch_size=128)
    limited = make_run(tmp_path / "limited", make_rows({0: 0.1, 10: 0.5}), **{"eval.limit": 100})
    flat = tmp_path / "flat"
    for seed in (0, 1):
        make_run(flat / f"s{seed}", make_rows({0: 0.3, 10: 0.3}), seed=seed)
    return {
        "missing dir": ([tmp_path / "nope"], "nope: no such directory"),
        "no runs": ([tmp_path / "empty"], "no metrics.jsonl found under"),
        "no eval rows": ([sweep, no_eval], f"{no_eval} has no evaluation rows"),
        "several metrics": ([sweep, gsm], "choose one with --metric"),
        "metric missing": ([sweep, gsm, "--metric", ACC], f"missing from 1 of 7 runs: {gsm}"),
        "unknown metric": ([sweep, "--metric", "eval/x/accuracy"], "in none of the runs"),
        "bad --by key": ([sweep, "--by", "trainer.bach_size"], "did you mean trainer.batch_size"),
        "no baseline": ([sweep, "--baseline", "sampler=lilo"], "no group matches --baseline sampler=lilo"),
        "ambiguous baseline": ([sweep, control], "matches 2 groups"),
        "malformed line": ([sweep, bad], f"{bad / 'metrics.jsonl'}:3: malformed JSON"),
        "bad --targets": ([sweep, "--targets", "0.3,x"], "--targets '0.3,x': not a comma list of numbers"),
        "both target options": ([sweep, "--target", "0.3", "--targets", "0.4"], "--target and --targets both given"),
        "no reference": ([sweep, "--reference", "sampler=lilo"], "no group matches --reference sampler=lilo"),
        "flat baseline": ([flat], "is not above its start (0.3): no target grid"),
        "bad interval": ([sweep, "--interval", "wald"], "--interval 'wald' is unknown: allowed percentile, bca, t"),
        "mixed evaluation": ([sweep, limited], f"eval.limit = null (6 run(s), e.g. {sweep}/0_uniform_s0) "
                                              f"vs 100 (1 run(s), e.g. {limited})"),
    }


def test_cli_errors_exit_2_with_one_line(tmp_path):
    for name, (args, text) in broken_cases(tmp_path).items():
        result = invoke(*args)
        assert result.exit_code == 2, (name, result.output)
        assert result.stderr.startswith("lrn: error: "), (name, result.stderr)
        assert result.stderr.count("\n") == 1, (name, result.stderr)
        assert text in result.stderr, (name, result.stderr)
        assert not (tmp_path / "sweep" / "compare").exists(), name
