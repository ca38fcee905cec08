"""`lrn compare` on hand-made run directories, with expectations computed by hand."""

import csv
import doctest
import json
import math
import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from typer.testing import CliRunner

import lrn.curves
import lrn.report
from lrn.cli import app
from lrn.compare import (
    CompareError,
    Run,
    check_same_evaluation,
    choose_metric,
    compare_dirs,
    find_baseline,
    group_runs,
    run_curve,
    summarise,
    varying_keys,
)
from lrn.curves import Curve, bootstrap, default_target, mean_curve, to_target
from lrn.report import render_markdown

ACC = "eval/arithmetic/accuracy"
STEPS = [0, 10, 20, 30, 40, 50]
# 2 groups x 3 seeds, evaluated at STEPS. Baseline (uniform) seed mean: 0.10, 0.2333, 0.40, 0.5333,
# 0.5833, 0.5833 -> target 1.75 / 3 = 0.5833, first reached at step 40.
UNIFORM = [[0.10, 0.20, 0.40, 0.50, 0.60, 0.55],   # own crossing: 30 + 10 * (0.5833 - 0.5) / 0.1 = 38.33
           [0.10, 0.30, 0.50, 0.70, 0.65, 0.70],   # 20 + 10 * 0.0833 / 0.2 = 24.17
           [0.10, 0.20, 0.30, 0.40, 0.50, 0.50]]   # never
# Seed mean 0.10, 0.40, 0.5833 (the same three values as uniform's at step 40), 0.6733, 0.75, 0.79.
LEARN = [[0.10, 0.40, 0.60, 0.70, 0.75, 0.80],     # 10 + 10 * 0.1833 / 0.2 = 19.17
         [0.10, 0.50, 0.65, 0.70, 0.80, 0.85],     # 10 + 10 * 0.0833 / 0.15 = 15.56
         [0.10, 0.30, 0.50, 0.62, 0.70, 0.72]]     # 20 + 10 * 0.0833 / 0.12 = 26.94
TARGET = 1.75 / 3


def make_rows(evals: dict[int, float], last: int | None = None, tokens_per_step: float = 100,
              seconds_per_step: float = 2.0, metric: str = ACC) -> list[dict]:
    """Rows for steps 0..last: tokens = tokens_per_step*step, elapsed = seconds_per_step*step + 0.5."""
    last = max(evals) if last is None else last
    rows = []
    for step in range(last + 1):
        row = {"step": step, "counts/rollouts_total": 10 * step,
               "counts/tokens_generated_total": tokens_per_step * step,
               "time/elapsed_s": seconds_per_step * step + 0.5}
        if step in evals:
            row |= {metric: evals[step], f"{metric}/L1": 1.0}
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


def make_sweep(root: Path) -> Path:
    """The 2 x 3 example as a Hydra multirun dir: uniform 100 tok/step 2 s/step, learnability 400 and 3."""
    for i, (sampler, curves, tokens, seconds) in enumerate(
            [("uniform", UNIFORM, 100, 2.0), ("learnability", LEARN, 400, 3.0)]):
        for seed, curve in enumerate(curves):
            evals = dict(zip(STEPS, curve, strict=True))
            rows = make_rows(evals, tokens_per_step=tokens, seconds_per_step=seconds)
            make_run(root / f"{3 * i + seed}_{sampler}_s{seed}", rows, sampler=sampler, seed=seed)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def mem_run(name: str, evals: dict[int, float], **config) -> Run:
    """An in-memory run (flattened config) for the pure functions."""
    from lrn.compare import flatten

    return Run(Path(name), flatten(make_config(**config)), make_rows(evals))


def test_doctests():
    assert doctest.testmod(lrn.curves).failed == 0 and doctest.testmod(lrn.report).failed == 0


# --- steps to target ------------------------------------------------------------------------------------

UNEQUAL = {0: 0.1, 5: 0.3, 10: 0.5, 30: 0.6, 100: 0.9}  # evals at 0, 5, 10, 30, 100; rows at every step


def hit(step: float, tokens_per_step: float = 100, seconds_per_step: float = 2.0) -> dict:
    """What make_rows logs at a (fractional) step: tokens and seconds are linear in the step."""
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


def test_default_target_is_best_of_baseline_seed_mean():
    curves = [run_curve(make_rows(dict(zip(STEPS, c, strict=True))), ACC) for c in UNIFORM]
    assert default_target(curves) == pytest.approx(TARGET)  # not the 0.60 median of the seeds' bests
    # two seeds whose bests (0.5, 0.7) straddle their median 0.6: the mean curve's best is 0.55
    two = [run_curve(make_rows(e), ACC) for e in ({0: 0.1, 10: 0.3, 20: 0.5}, {0: 0.1, 10: 0.7, 20: 0.6})]
    assert default_target(two) == pytest.approx(0.55)


def test_two_groups_three_seeds_speedups(tmp_path):
    c = compare_dirs([make_sweep(tmp_path / "sweep")])
    assert c.metric == ACC and c.target == pytest.approx(TARGET) and c.keys == ["sampler.name"]
    assert c.baseline == "sampler.name=uniform"
    base, learn = c.groups  # baseline first
    assert (base.label, learn.label) == ("sampler.name=uniform", "sampler.name=learnability")
    # the seed means: uniform first reaches the target at step 40, learnability at step 20
    assert base.to_target == pytest.approx(hit(40))
    assert learn.to_target == pytest.approx(hit(20, 400, 3.0))
    assert base.reached == 2 and learn.reached == 3
    assert base.per_seed["steps"] == pytest.approx([38 + 1 / 3, 24 + 1 / 6, math.inf])
    assert learn.per_seed["steps"] == pytest.approx([19 + 1 / 6, 15 + 5 / 9, 26 + 17 / 18])
    assert learn.per_seed["tokens"] == pytest.approx([400 * s for s in learn.per_seed["steps"]])
    assert learn.speedup["steps"] == pytest.approx(2.0)  # 40 / 20
    assert learn.speedup["tokens"] == pytest.approx(0.5)  # 4000 / 8000: screening costs 4x tokens per step
    assert learn.speedup["seconds"] == pytest.approx(80.5 / 60.5)  # 1.3306
    assert base.speedup == pytest.approx({"steps": 1.0, "tokens": 1.0, "seconds": 1.0})
    assert base.interval == {"steps": None, "tokens": None, "seconds": None}  # 1 by definition
    for kind, (lo, hi) in learn.interval.items():
        assert lo <= learn.speedup[kind] <= hi, kind
    assert learn.interval == compare_dirs([tmp_path / "sweep"]).groups[1].interval  # fixed RNG seed
    assert (learn.final.median, learn.final.lo, learn.final.hi) == (0.80, 0.72, 0.85)
    assert (base.final.median, base.best.median, base.best.hi) == (0.55, 0.60, 0.70)
    assert base.seconds_per_step == pytest.approx(100.5 / 50)  # elapsed at step 50 / 50
    assert learn.seconds_per_step == pytest.approx(150.5 / 50)


def test_target_not_reached_by_the_baseline(tmp_path):
    c = compare_dirs([make_sweep(tmp_path / "sweep")], target=0.68)
    base, learn = c.groups
    # uniform's seed mean peaks at 0.5833: never; its seed 1 gets there at 20 + 10 * 0.18 / 0.2 = 29
    assert base.reached == 1 and math.isinf(base.to_target["steps"])
    assert base.per_seed["steps"] == pytest.approx([math.inf, 29, math.inf])
    # learnability's seed mean: 0.6733 at 30, 0.75 at 40 -> 30 + 10 * 0.0067 / 0.0767 = 30.87; no speed-up
    assert learn.to_target["steps"] == pytest.approx(30 + 10 * (0.68 - 2.02 / 3) / (0.75 - 2.02 / 3))
    assert learn.speedup["steps"] is None and learn.interval["steps"] is None
    md = render_markdown(c)
    assert "| sampler.name=uniform (baseline) | 3 | 1/3 | not reached | ∞, 29, ∞ | ∞ | ∞ | — | — | — |" in md
    assert "| sampler.name=learnability | 3 | 3/3 | 30.9 | 28, 26, 37.5 | 12.3k | 93.1s | — |" in md


def even_sweep(root: Path) -> Path:
    """2 seeds per group whose bests straddle each other (the old median-of-bests target was unreachable)."""
    curves = {"uniform": [[0.1, 0.3, 0.5, 0.5], [0.1, 0.7, 0.6, 0.6]],       # mean 0.1, 0.5, 0.55, 0.55
              "learnability": [[0.1, 0.4, 0.7, 0.8], [0.1, 0.6, 0.7, 0.8]]}  # mean 0.1, 0.5, 0.7, 0.8
    for i, (sampler, pair) in enumerate(curves.items()):
        for seed, curve in enumerate(pair):
            rows = make_rows(dict(zip(STEPS[:4], curve, strict=True)), tokens_per_step=100 * 4 ** i,
                             seconds_per_step=2.0 + i)
            make_run(root / f"{2 * i + seed}_{sampler}_s{seed}", rows, sampler=sampler, seed=seed)
    return root


def test_even_seeds_baseline_reaches_its_own_target(tmp_path):
    c = compare_dirs([even_sweep(tmp_path / "sweep")])
    base, learn = c.groups
    assert c.target == pytest.approx(0.55)
    assert base.to_target == pytest.approx(hit(20)) and base.speedup == pytest.approx(dict.fromkeys(hit(0), 1.0))
    assert base.per_seed["steps"] == pytest.approx([math.inf, 7.5])  # seed 1: 0.1 -> 0.7 over 0..10
    # learnability's mean: 0.5 at 10, 0.7 at 20 -> 12.5 steps, 5000 tokens, 38 s; seeds at 15 and 9
    assert learn.to_target == pytest.approx(hit(12.5, 400, 3.0))
    assert learn.per_seed["steps"] == pytest.approx([15, 9])
    assert learn.speedup == pytest.approx({"steps": 1.6, "tokens": 0.4, "seconds": 40.5 / 38})
    # Resamples by hand: the baseline {u0,u0}, {u1,u1}, {u0,u1} (p = 1/4, 1/4, 1/2) set the target to 0.5,
    # 0.7, 0.55, reached at 20, 10, 20; learnability's resamples then take 13.3 / 8 / 10, 20 / 20 / 20 or
    # 15 / 9 / 12.5 steps: ratios 1.5, 2.5, 2 (p 1/16, 1/16, 1/8), 0.5 (p 1/4), 1.33, 2.22, 1.6 (p 1/8,
    # 1/8, 1/4). The 2.5% and 97.5% points are 0.5 and 2.5.
    assert learn.interval["steps"] == pytest.approx((0.5, 2.5))
    # one seed each: every resample is the same pair, 20 / (10 + 10 * 0.1 / 0.3) = 1.5
    one = bootstrap([run_curve(base.runs[0].rows, ACC)], [run_curve(learn.runs[0].rows, ACC)], None)
    assert one["steps"] == pytest.approx((1.5, 1.5))


def test_cli_two_seeds_shows_interpolation_and_intervals(tmp_path):
    result = invoke(even_sweep(tmp_path / "sweep"))
    assert result.exit_code == 0, result.output
    md = (tmp_path / "sweep" / "compare" / "compare.md").read_text()
    assert "| sampler.name=uniform (baseline) | 2 | 1/2 | 20 | ∞, 7.5 | 2k | 40.5s | 1.00× | 1.00× | 1.00× |" in md
    assert "| sampler.name=learnability | 2 | 2/2 | 12.5 | 15, 9 | 5k | 38.0s | 1.60× [0.50–2.50] |" in md
    assert "steps to target (interp.)" in md and "95% percentile bootstrap interval" in md
    assert "1.60× [0.50–2.50]" in result.stdout and "interp." in result.stdout
    header = next(csv.reader((tmp_path / "sweep" / "compare" / "compare.csv").open()))
    assert {"steps_to_target_interp", "steps_to_target_interp_per_seed", "speedup_steps_ci95_lo"} <= set(header)


def test_summaries_of_groups_with_different_evaluation_steps():
    groups = {"a": [mem_run("a0", {0: 0.1, 10: 0.8}), mem_run("a1", {0: 0.1, 10: 0.5, 20: 0.8})],
              "b": [mem_run("b0", {0: 0.1, 5: 0.2, 10: 0.8}), mem_run("b1", {0: 0.1, 10: 0.4})]}
    a, b = summarise(groups, "a", ACC, 0.6)
    # a's mean on its common steps 0, 10: 0.1, 0.65 -> 0.6 at 10 * 0.5 / 0.55; b's: 0.1, 0.6 -> 10
    assert a.to_target["steps"] == pytest.approx(100 / 11) and b.to_target["steps"] == pytest.approx(10)
    assert a.per_seed["steps"] == pytest.approx([100 / 14, 10 + 10 / 3]) and b.reached == 1
    assert b.speedup["steps"] == pytest.approx(10 / 11)


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


# --- CLI ------------------------------------------------------------------------------------------------

def invoke(*args: str):
    return CliRunner().invoke(app, ["compare", *map(str, args)])


def test_cli_prints_table_and_writes_files(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    extra = make_run(tmp_path / "extra", make_rows(dict(zip(STEPS, [0.1, 0.2, 0.5, 0.6, 0.7, 0.9], strict=True)),
                                                   tokens_per_step=400, seconds_per_step=3.0),
                     sampler="learnability", seed=3)  # a run dir next to a sweep dir
    result = invoke(sweep, extra)
    assert result.exit_code == 0, result.output
    out = sweep / "compare"
    # learnability's 4-seed mean: 0.5625 at 20, 0.655 at 30 -> 20 + 10 * 0.0208 / 0.0925 = 22.25 steps
    steps = 20 + 10 * (TARGET - 0.5625) / (0.655 - 0.5625)
    for text in ("sampler.name=uniform (baseline)", "sampler.name=learnability", "2/3", "4/4", "target 0.5833",
                 "22.3", "1.80×", str(out / "compare.png")):
        assert text in result.stdout, text
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["group"] for r in rows] == ["sampler.name=uniform", "sampler.name=learnability"]
    assert float(rows[1]["steps_to_target_interp"]) == pytest.approx(steps)
    assert rows[0]["steps_to_target_interp_per_seed"].endswith(";inf")
    assert float(rows[1]["speedup_steps"]) == pytest.approx(40 / steps)
    assert float(rows[1]["speedup_steps_ci95_lo"]) <= 40 / steps <= float(rows[1]["speedup_steps_ci95_hi"])
    assert rows[0]["speedup_steps_ci95_lo"] == ""  # the baseline against itself: 1 by definition
    assert "| sampler.name=learnability | 4 | 4/4 | 22.3 | 19.2, 15.6, 26.9, 28.3 |" in (out / "compare.md").read_text()
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    result = invoke(sweep, "--target", "0.68", "--out", tmp_path / "o", "--by", "sampler.name")
    assert result.exit_code == 0 and "not reached" in result.stdout
    assert (tmp_path / "o" / "compare.csv").exists()


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
