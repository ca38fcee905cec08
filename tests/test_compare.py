"""`lrn compare` on hand-made run directories, with expectations computed by hand."""

import csv
import json
import math
import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from typer.testing import CliRunner

from lrn.cli import app
from lrn.compare import (
    CompareError,
    Hit,
    Run,
    choose_metric,
    compare_dirs,
    default_target,
    find_baseline,
    group_runs,
    steps_to_target,
    summarise,
    varying_keys,
)
from lrn.report import render_markdown

ACC = "eval/arithmetic/accuracy"
STEPS = [0, 10, 20, 30, 40, 50]
# 2 groups x 3 seeds, evaluated at STEPS. Baseline (uniform) bests: 0.60, 0.70, 0.50 -> target 0.60.
UNIFORM = [[0.10, 0.20, 0.40, 0.50, 0.60, 0.55],   # reaches 0.60 at step 40 (equality)
           [0.10, 0.30, 0.50, 0.70, 0.65, 0.70],   # at step 30
           [0.10, 0.20, 0.30, 0.40, 0.50, 0.50]]   # never
LEARN = [[0.10, 0.40, 0.60, 0.70, 0.75, 0.80],     # at step 20
         [0.10, 0.50, 0.65, 0.70, 0.80, 0.85],     # at step 20 (tie)
         [0.10, 0.30, 0.50, 0.62, 0.70, 0.72]]     # at step 30


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


# --- steps to target ------------------------------------------------------------------------------------

UNEQUAL = {0: 0.1, 5: 0.3, 10: 0.5, 30: 0.6, 100: 0.9}  # evals at 0, 5, 10, 30, 100; rows at every step


@pytest.mark.parametrize(("target", "expected"), [
    (0.5, Hit(10, 1000, 20.5, 0.5)),     # equality counts: 0.5 >= 0.5 at step 10
    (0.55, Hit(30, 3000, 60.5, 0.6)),    # between evals 10 and 30: the next eval, step 30
    (0.61, Hit(100, 10000, 200.5, 0.9)),  # the long gap 30 -> 100
    (0.0, Hit(0, 0, 0.5, 0.1)),          # the evaluation before training already reaches it
    (0.95, None),                        # never
])
def test_steps_to_target_unequal_intervals(target, expected):
    rows = make_rows(UNEQUAL)
    assert steps_to_target(rows, ACC, target) == expected
    random.Random(0).shuffle(rows)  # rows are taken in step order whatever the file order
    assert steps_to_target(rows, ACC, target) == expected


def test_steps_to_target_takes_the_first_crossing_and_ignores_other_keys():
    rows = make_rows({0: 0.1, 10: 0.6, 20: 0.4, 30: 0.7})
    assert steps_to_target(rows, ACC, 0.6).step == 10  # not 30, though the run dips below again
    assert steps_to_target(rows, f"{ACC}/L1", 1.0).step == 0  # --metric can name any key
    assert steps_to_target(make_rows({0: 0.3}), ACC, 0.3 + 1e-12).step == 0  # float noise tolerated


def test_default_target_is_median_of_baseline_bests():
    uniform = [mem_run(f"u{s}", dict(zip(STEPS, c, strict=True)), seed=s) for s, c in enumerate(UNIFORM)]
    assert default_target(uniform, ACC) == 0.60  # bests 0.60, 0.70, 0.50
    assert default_target(uniform[:2], ACC) == pytest.approx(0.65)  # even count: (0.60 + 0.70) / 2


def test_two_groups_three_seeds_speedups(tmp_path):
    c = compare_dirs([make_sweep(tmp_path / "sweep")])
    assert c.metric == ACC and c.target == 0.60 and c.keys == ["sampler.name"]
    assert c.baseline == "sampler.name=uniform"
    base, learn = c.groups  # baseline first
    assert (base.label, learn.label) == ("sampler.name=uniform", "sampler.name=learnability")
    # uniform hits at steps 40, 30, never -> median 40, range 30..inf, 2/3 reached
    assert base.reached == 2 and (base.to_target["steps"].median, base.to_target["steps"].lo) == (40, 30)
    assert math.isinf(base.to_target["steps"].hi)
    assert base.to_target["tokens"].median == 4000  # 100 tok/step x 40
    assert base.to_target["seconds"].median == 80.5  # 2 s/step x 40 + 0.5
    # learnability hits at 20, 20, 30 -> median 20; tokens 8000, 8000, 12000; seconds 60.5, 60.5, 90.5
    assert learn.reached == 3
    assert [(s.median, s.lo, s.hi) for s in learn.to_target.values()] == [
        (20, 20, 30), (8000, 8000, 12000), (60.5, 60.5, 90.5)]
    assert learn.speedup["steps"] == 2.0  # 40 / 20
    assert learn.speedup["tokens"] == 0.5  # 4000 / 8000: screening costs 4x tokens per step
    assert learn.speedup["seconds"] == pytest.approx(80.5 / 60.5)  # 1.3306
    assert base.speedup == {"steps": 1.0, "tokens": 1.0, "seconds": 1.0}
    assert (learn.final.median, learn.final.lo, learn.final.hi) == (0.80, 0.72, 0.85)
    assert (base.final.median, base.best.median, base.best.hi) == (0.55, 0.60, 0.70)
    assert base.seconds_per_step == pytest.approx(100.5 / 50)  # elapsed at step 50 / 50
    assert learn.seconds_per_step == pytest.approx(150.5 / 50)


def test_median_can_be_not_reached(tmp_path):
    c = compare_dirs([make_sweep(tmp_path / "sweep")], target=0.68)
    base, learn = c.groups
    # uniform: never, step 30, never -> median not reached, 1/3
    assert base.reached == 1 and math.isinf(base.to_target["steps"].median)
    assert base.to_target["steps"].lo == 30
    # learnability: 0.70 at 30, 0.70 at 30, 0.70 at 40 -> median 30; speed-up undefined
    assert learn.to_target["steps"].median == 30 and learn.speedup["steps"] is None
    md = render_markdown(c)
    assert "| sampler.name=uniform (baseline) | 3 | 1/3 | not reached (30–∞) |" in md
    assert "| sampler.name=learnability | 3 | 3/3 | 30 (30–40) | 12k (12k–16k) |" in md


def test_even_group_medians_and_ties():
    groups = {"a": [mem_run("a0", {0: 0.1, 10: 0.8}), mem_run("a1", {0: 0.1, 10: 0.5, 20: 0.8})],
              "b": [mem_run("b0", {0: 0.1, 10: 0.8, 20: 0.9}), mem_run("b1", {0: 0.1, 20: 0.5})],
              "c": [mem_run("c0", {0: 0.1, 20: 0.8}), mem_run("c1", {0: 0.1, 10: 0.2, 20: 0.8})]}
    a, b, c = summarise(groups, "a", ACC, 0.8)
    assert a.to_target["steps"].median == 15 and a.to_target["tokens"].median == 1500  # (10 + 20) / 2
    assert b.reached == 1 and math.isinf(b.to_target["steps"].median)  # (10 + inf) / 2: not reached
    assert c.to_target["steps"].median == 20 and c.reached == 2  # tie: both at 20
    assert c.speedup["steps"] == 0.75 and b.speedup["steps"] is None  # 15 / 20


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
    extra = make_run(tmp_path / "extra", make_rows({0: 0.1, 25: 0.6, 50: 0.9}),
                     sampler="learnability", seed=3)  # a run dir next to a sweep dir
    result = invoke(sweep, extra)
    assert result.exit_code == 0, result.output
    out = sweep / "compare"
    for text in ("sampler.name=uniform (baseline)", "sampler.name=learnability", "2/3", "4/4", "target 0.6",
                 "22.5 (20–30)", "1.78×", str(out / "compare.png")):
        assert text in result.stdout, text
    rows = list(csv.DictReader((out / "compare.csv").open()))
    # learnability now has 4 runs: steps 20, 20, 30, 25 -> median 22.5; speed-up 40 / 22.5
    assert [r["group"] for r in rows] == ["sampler.name=uniform", "sampler.name=learnability"]
    assert float(rows[1]["steps_to_target_median"]) == 22.5 and rows[0]["steps_to_target_max"] == "inf"
    assert float(rows[1]["speedup_steps"]) == pytest.approx(40 / 22.5)
    assert "| sampler.name=learnability | 4 | 4/4 | 22.5 (20–30) |" in (out / "compare.md").read_text()
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
    }


def test_cli_errors_exit_2_with_one_line(tmp_path):
    for name, (args, text) in broken_cases(tmp_path).items():
        result = invoke(*args)
        assert result.exit_code == 2, (name, result.output)
        assert result.stderr.startswith("lrn: error: "), (name, result.stderr)
        assert result.stderr.count("\n") == 1, (name, result.stderr)
        assert text in result.stderr, (name, result.stderr)
        assert not (tmp_path / "sweep" / "compare").exists(), name
