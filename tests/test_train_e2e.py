"""End-to-end runs of the real `lrn train` on a shrunk embedded config."""

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timings(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("perf/", "time/"))} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["uniform", "learnability"])
def test_train_writes_metrics_and_changes_parameters(run_lrn, cache_dir, tmp_path, sampler):
    run_lrn("train", *TINY, f"sampler={sampler}", f"hydra.run.dir={tmp_path}")
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    acc = "eval/arithmetic/accuracy"
    assert [r["step"] for r in rows if acc in r] == [0, 2, 3]
    for r in rows[1:]:
        assert 0.0 <= r["train/reward_mean"] <= 1.0
        for key in ("train/zero_signal_frac", "sampler/pool_learnability", "sampler/batch_learnability",
                    "sampler/screening_rollouts", "sampler/trained_questions", "loss/policy", "ppo/clipfrac",
                    "ppo/approx_kl",
                    "perf/rollout_s", "perf/update_s", "counts/tokens_generated_total"):
            assert key in r, key
    per_step = 4 * 4 * (4 if sampler == "learnability" else 1)  # learnability screens 4x the batch
    assert [r["counts/rollouts_total"] for r in rows] == [0, per_step, 2 * per_step, 3 * per_step]
    assert rows[1]["sampler/screening_rollouts"] == (per_step - 16)
    assert all(r["sampler/trained_questions"] == 4 for r in rows[1:])  # trainer.batch_size
    assert (tmp_path / "resolved_config.yaml").exists() and (tmp_path / ".hydra" / "overrides.yaml").exists()
    assert not (tmp_path / "wandb").exists()  # logger.wandb.mode=disabled: no W&B files at all
    # the final policy differs from the warm-started one it started from
    (start,) = list((cache_dir / "warmstart").glob("*/model.safetensors"))
    before, after = load_file(start), load_file(tmp_path / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # lrn eval on the finished run reproduces its last logged held-out accuracy exactly
    run_lrn("eval", str(tmp_path), "eval.samples=4", "eval.pass_k=[1,4]")
    summary = json.loads((tmp_path / "eval" / "arithmetic" / "summary.json").read_text())
    assert summary["metrics"][acc] == rows[-1][acc]
    assert 0.0 <= summary["metrics"]["eval/arithmetic/pass@4"] <= 1.0
    records = (tmp_path / "eval" / "arithmetic" / "records.jsonl").read_text().splitlines()
    assert len(records) == 5 * 8 and len(json.loads(records[0])["samples"]) == 4


@pytest.mark.slow
def test_frontier_on_the_validation_split(run_lrn, tmp_path):
    """The new sampler end to end, evaluated on the validation split under its own metric name."""
    run_lrn("train", *TINY, "sampler=frontier", "dataset.eval_split=validation", "dataset.val_per_level=6",
            f"hydra.run.dir={tmp_path}")
    rows = read_metrics(tmp_path)
    acc = "eval/arithmetic_val/accuracy"
    assert [r["step"] for r in rows if acc in r] == [0, 2, 3]
    assert not any("eval/arithmetic/accuracy" in r for r in rows)
    made = [r["sampler/rollouts"] for r in rows[1:]]
    assert [r["counts/rollouts_total"] for r in rows[1:]] == [sum(made[:i + 1]) for i in range(3)]
    for r in rows[1:]:  # every trained question has K = 4 answers; the rest were screening
        assert r["sampler/screening_rollouts"] == r["sampler/rollouts"] - 4 * r["sampler/trained_questions"]
    run_lrn("eval", str(tmp_path))  # the run's own config: the same split, the same accuracy
    summary = json.loads((tmp_path / "eval" / "arithmetic_val" / "summary.json").read_text())
    assert summary["metrics"][acc] == rows[-1][acc]
    assert len((tmp_path / "eval" / "arithmetic_val" / "records.jsonl").read_text().splitlines()) == 5 * 6


def test_predictive_sampler_trains_at_uniforms_rollouts_and_logs_its_calibration(run_lrn, tmp_path):
    run_lrn("train", *TINY, "sampler=predictive", "trainer.steps=4", f"hydra.run.dir={tmp_path}")
    rows = read_metrics(tmp_path)
    assert [r["counts/rollouts_total"] for r in rows] == [0, 16, 32, 48, 64]  # 4 questions x K = 4 a step
    for r in rows[1:]:
        assert r["sampler/candidates"] == 16 and r["sampler/trained_questions"] == 4  # pool_factor 4 x batch 4
        assert r["sampler/screening_rollouts"] == 0 and r["perf/features_s"] > 0
        assert r["sampler/mixed_frac"] == 1 - r["train/zero_signal_frac"]
        assert 0 <= r["sampler/brier"] <= 1 and 0 <= r["sampler/brier_probe"] <= 1
        assert r["sampler/prior_strength"] > 0
    # deciles over the groups of the last 10 steps: from 10 groups on (step 3: 12 groups)
    assert "sampler/calibration/d0_pred" not in rows[2] and "sampler/calibration/d9_obs" in rows[3]
    preds = [rows[4][f"sampler/calibration/d{i}_pred"] for i in range(10)]
    assert preds == sorted(preds)


@pytest.mark.slow
def test_same_seed_same_metrics_and_gae_runs(run_lrn, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_lrn("train", *TINY, "ppo.advantage=gae", "ppo.kl_coef=0.1", f"hydra.run.dir={a}")
    run_lrn("train", *TINY, "ppo.advantage=gae", "ppo.kl_coef=0.1", f"hydra.run.dir={b}")
    run_lrn("train", *TINY, "ppo.advantage=gae", "ppo.kl_coef=0.1", "seed=1", f"hydra.run.dir={c}")
    ra, rb, rc = (without_timings(read_metrics(d)) for d in (a, b, c))
    assert ra == rb
    assert ra != rc
    assert "loss/value" in ra[1] and "ppo/kl" in ra[1]


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_existing_run_directory_is_never_overwritten(run_lrn, tmp_path):
    run_lrn("train", *TINY, "trainer.steps=1", f"hydra.run.dir={tmp_path}")
    before = tree(tmp_path)
    # refused before Hydra writes: .hydra/overrides.yaml still says what this run was, not seed=7
    proc = run_lrn("train", *TINY, "seed=7", "eval.limit=10", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"lrn: error: {tmp_path}/metrics.jsonl already exists; choose another hydra.run.dir so no run is overwritten "
        f"(to continue that run: lrn train resume={tmp_path})"]
    assert tree(tmp_path) == before
    assert "seed=7" not in (tmp_path / ".hydra" / "overrides.yaml").read_text()


def test_only_a_new_directory_or_an_lrn_run_is_written_and_run_name_stays_inside_outputs(run_lrn, tmp_path):
    model = tmp_path / "model"  # e.g. a saved model: lrn must not write beside (or over) its files
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    proc = run_lrn("train", *TINY, f"hydra.run.dir={model}", check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"lrn: error: {model} is not empty and not an lrn run directory (it holds config.json); lrn writes only "
        "into a new directory or its own runs: choose another hydra.run.dir"]
    assert tree(model) == {"config.json": b'{"model_type": "llama"}'}
    proc = run_lrn("train", *TINY, "run_name=x/../../../escaped", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "lrn: error: run_name='x/../../../escaped' is invalid: it names the run directory inside outputs/: no '/', "
        "'\\' or '..'"]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_multirun_sweep_makes_one_run_directory_per_job(run_lrn, tmp_path):
    sweep = ["train", "-m", *TINY, "trainer.steps=1", "sampler=uniform,learnability", "seed=0,1",
             f"hydra.sweep.dir={tmp_path}"]
    run_lrn(*sweep)
    runs = sorted(p.parent for p in tmp_path.glob("*/metrics.jsonl"))
    assert len(runs) == 4
    # the same sweep again: its first job's directory is a finished run, so nothing at all is written
    before = tree(tmp_path)
    proc = run_lrn(*sweep, check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"lrn: error: sweep job refused: {runs[0]}/metrics.jsonl already exists; choose another hydra.run.dir so no "
        f"run is overwritten (to continue that run: lrn train resume={runs[0]})"]
    assert tree(tmp_path) == before  # multirun.yaml and every job's .hydra/ included
    names = {p.name.split("_", 1)[1] for p in runs}
    assert names == {f"{s}-arithmetic-s{seed}" for s in ("uniform", "learnability") for seed in (0, 1)}
    # lrn compare reads the real sweep output: two groups of two seeds, files written
    proc = run_lrn("compare", str(tmp_path), "--target", "0.0")
    assert "sampler.name=learnability" in proc.stdout and "sampler.name=uniform" in proc.stdout
    report = (tmp_path / "compare" / "compare.md").read_text()
    # the to-target table: both seeds of each group reach target 0 (at step 0)
    for group in ("uniform (baseline)", "learnability"):
        assert f"| sampler.name={group} | 0 | 2/2 | 0 | 0, 0 |" in report
    assert (tmp_path / "compare" / "compare.png").stat().st_size > 0


@pytest.mark.slow
def test_every_sampler_trains_through_the_cli_and_compare_ranks_them(run_lrn, tmp_path):
    samplers = ["uniform", "learnability", "learnability_adaptive", "learnability_history", "dynamic_filter"]
    run_lrn("train", "-m", *TINY, "trainer.steps=2", f"sampler={','.join(samplers)}", f"hydra.sweep.dir={tmp_path}")
    runs = {p.parent.name.split("_", 1)[1].rsplit("-arithmetic", 1)[0]: read_metrics(p.parent)
            for p in tmp_path.glob("*/metrics.jsonl")}
    assert sorted(runs) == sorted(samplers)
    shared = {"sampler/pool_learnability", "sampler/batch_learnability", "sampler/screening_rollouts",
              "train/zero_signal_frac", "sampler/pool_size"}
    for name, rows in runs.items():
        assert [r["step"] for r in rows] == [0, 1, 2]
        assert shared <= rows[1].keys(), name
    assert runs["dynamic_filter"][1]["sampler/draws"] >= 1
    assert runs["learnability_history"][1]["counts/rollouts_total"] == 4 * 4  # uniform's cost: no screening
    assert runs["learnability_history"][2]["sampler/history_seen"] == 4
    assert runs["learnability_adaptive"][1]["counts/rollouts_total"] <= (1.5 + 1) * 4 * 4
    proc = run_lrn("compare", str(tmp_path), "--target", "0.0")
    for name in samplers:
        assert f"sampler.name={name}" in proc.stdout


@pytest.mark.slow
def test_train_seconds_leave_out_evaluation_and_checkpoints(run_lrn, tmp_path):
    """time/train_s = time/elapsed_s less every evaluation (perf/eval_s) and checkpoint write so far
    (time/checkpoint_s): the seconds lrn compare compares samplers on."""
    from lrn.compare import compare_dirs

    run_lrn("train", *TINY, "trainer.checkpoint_every=1", f"hydra.run.dir={tmp_path}")
    rows = read_metrics(tmp_path)
    evaluated = 0.0
    for r in rows:
        evaluated += r.get("perf/eval_s", 0.0)
        assert r["time/train_s"] < r["time/elapsed_s"], r["step"]
        assert r["time/elapsed_s"] - r["time/train_s"] == pytest.approx(evaluated + r["time/checkpoint_s"], abs=1e-9)
    assert [r["step"] for r in rows if "perf/eval_s" in r] == [0, 2, 3]
    # checkpoints are written after a step's row: those of steps 1 and 2 are in step 3's row
    assert [r["time/checkpoint_s"] > 0 for r in rows] == [False, False, True, True]
    assert rows[2]["time/checkpoint_s"] < rows[3]["time/checkpoint_s"]
    # every step's own time, less its evaluation, lies inside the training clock
    assert rows[-1]["time/train_s"] >= sum(r["perf/step_s"] - r.get("perf/eval_s", 0.0) for r in rows[1:])
    assert compare_dirs([tmp_path], baseline="all", targets=[0.0]).seconds.startswith("time/train_s")


def test_wandb_mode_auto_follows_the_environment_and_an_explicit_mode_wins(monkeypatch, tmp_path):
    from lrn.logger import wandb_mode

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    for env, mode in (("disabled", "disabled"), ("offline", "offline"), ("dryrun", "offline"), ("online", "online")):
        monkeypatch.setenv("WANDB_MODE", env)
        assert wandb_mode("auto") == mode  # the environment wins over the key
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("offline") == "offline"  # logger.wandb.mode given explicitly wins over the environment


def test_wandb_mode_disabled_in_the_environment_leaves_no_wandb_files(run_lrn, tmp_path):
    run_lrn("train", *TINY, "trainer.steps=1", "logger.wandb.mode=auto", f"hydra.run.dir={tmp_path}",
            env={"WANDB_MODE": "disabled"})
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]
    assert not (tmp_path / "wandb").exists()
