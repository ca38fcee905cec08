"""Checkpoints and exact resume: a run that is killed, interrupted or damaged continues exactly."""

import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY
from safetensors.torch import load_file

from lrn.batch import PPOBatch
from lrn.checkpoint import (
    CheckpointError,
    TrainState,
    apply_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    read_tree,
    rng_state,
    set_rng_state,
    write_checkpoint,
    write_tree,
)
from lrn.config import TinyModelConfig
from lrn.engines import SamplingSpec
from lrn.logger import truncate_metrics
from lrn.models import build_char_tokenizer, build_tiny_model
from lrn.policy import Policy
from lrn.resume import config_changes, resume_overrides
from lrn.samplers.uniform import UniformSampler
from lrn.storage import writing
from lrn.tasks import Problem

RUN = [*TINY, "trainer.steps=6", "trainer.checkpoint_every=2"]
_baseline: dict[str, Path] = {}


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(("perf/", "time/"))} for r in rows]


def assert_same_as_uninterrupted(run_dir: Path, baseline: Path) -> None:
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(7))
    assert without_timings(rows) == without_timings(read_metrics(baseline))
    elapsed = [r["time/elapsed_s"] for r in rows]
    assert elapsed == sorted(elapsed)  # the clock continues from the checkpoint
    # and so do the seconds spent evaluating and checkpointing that time/train_s leaves out
    evaluated = 0.0
    for r in rows:
        evaluated += r.get("perf/eval_s", 0.0)
        assert r["time/elapsed_s"] - r["time/train_s"] == pytest.approx(evaluated + r["time/checkpoint_s"], abs=1e-9)
    train = [r["time/train_s"] for r in rows]
    assert train == sorted(train)


@pytest.fixture
def baseline(run_lrn, tmp_path_factory) -> Path:
    """An uninterrupted run of RUN, made once per session; copy it before changing it."""
    if "run" not in _baseline:
        run_dir = tmp_path_factory.mktemp("baseline") / "run"
        run_lrn("train", *RUN, f"hydra.run.dir={run_dir}")
        _baseline["run"] = run_dir
    return _baseline["run"]


def start_run(cache_dir: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "LRN_CACHE": str(cache_dir), "WANDB_SILENT": "true"}
    return subprocess.Popen([sys.executable, "-m", "lrn.cli", "train", *RUN, *extra, f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 300) -> None:
    """Poll metrics.jsonl until the row of ``step`` is complete (rows are steps 0, 1, ... one per line)."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().count("\n") >= step + 1:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before step {step}:\n{proc.stderr.read()[-2000:]}")
        time.sleep(0.002)
    proc.kill()
    raise AssertionError(f"no step {step} within {timeout} s")


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume_equals_uninterrupted(run_lrn, cache_dir, baseline, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_run(cache_dir, run_dir)
    wait_for_step(proc, run_dir, 3)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run_dir / "model").exists()
    run_lrn("train", f"resume={run_dir}")
    assert_same_as_uninterrupted(run_dir, baseline)
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_6", "step_4"]  # keep 2


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_exits(run_lrn, cache_dir, baseline, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_run(cache_dir, run_dir, "trainer.checkpoint_every=100")  # only the interrupt writes one
    wait_for_step(proc, run_dir, 3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    (line,) = [ln for ln in stderr.splitlines() if "interrupted at step" in ln]
    step = int(line.split("interrupted at step ")[1].split(";")[0])
    assert 3 <= step < 6 and line.endswith(f"resume with: lrn train resume={run_dir}")
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == [f"step_{step}"]
    assert read_metrics(run_dir)[-1]["step"] == step
    run_lrn("train", f"resume={run_dir}")
    assert_same_as_uninterrupted(run_dir, baseline)


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_previous(run_lrn, baseline, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(baseline, run_dir)
    weights = run_dir / "checkpoints" / "step_6" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    proc = run_lrn("train", f"resume={run_dir}")
    output = proc.stdout + proc.stderr
    assert f"{weights}: truncated" in output
    assert "resuming" in output and "step_4" in output
    assert_same_as_uninterrupted(run_dir, baseline)
    assert latest_checkpoint(run_dir / "checkpoints").path.name == "step_6"  # rewritten, valid again


def flip(path: Path, offset: int, length: int) -> None:
    """Invert ``length`` bytes of ``path`` from ``offset``: damage that keeps the file's size."""
    data = bytearray(path.read_bytes())
    data[offset:offset + length] = bytes(b ^ 0xFF for b in data[offset:offset + length])
    path.write_bytes(bytes(data))


def warnings(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if "][WARNING] - " in ln]


@pytest.mark.slow
def test_flipped_bytes_in_the_newest_weights_fall_back_to_the_previous_checkpoint(run_lrn, baseline, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(baseline, run_dir)
    weights = run_dir / "checkpoints" / "step_6" / "model" / "model.safetensors"
    size = weights.stat().st_size
    flip(weights, size // 2, 4096)  # inside the tensors: the header still parses and every size still matches
    assert weights.stat().st_size == size and load_file(str(weights)).keys()
    proc = run_lrn("train", f"resume={run_dir}")
    output = proc.stdout + proc.stderr  # Hydra logs to stdout
    (warning,) = warnings(output)
    assert warning.endswith(f"damaged checkpoint, skipped: {weights}: contents changed since it was written "
                            "(SHA-256 differs from manifest.json)")
    assert f"resuming {run_dir} from {run_dir / 'checkpoints' / 'step_4'}" in output
    assert_same_as_uninterrupted(run_dir, baseline)
    assert latest_checkpoint(run_dir / "checkpoints").path.name == "step_6"  # rewritten, valid again


def read_only(directory: Path) -> tuple[str, Callable[[], None]]:
    """Make ``directory`` refuse new entries for real: chmod for a user, the immutable flag for root (whom
    permissions do not stop). Returns the error the system gives and how to undo it."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return "Permission denied", lambda: directory.chmod(0o755)
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i (CAP_LINUX_IMMUTABLE): no real read-only directory")
    return "Operation not permitted", lambda: subprocess.run(["chattr", "-i", str(directory)], check=True)


def limit_file_size() -> None:
    """In the child: writing past 32 KiB fails with EFBIG (Python ignores SIGXFSZ). The tiny model's metrics,
    configs and state files stay below; its 55 KB weights do not."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, 32 * 1024))


@pytest.mark.slow
@pytest.mark.parametrize("cause", ["file-size limit", "read-only directory"])
def test_a_failed_checkpoint_write_ends_in_one_line_and_the_run_resumes_exactly(run_lrn, cache_dir, baseline,
                                                                                tmp_path, cause):
    run_dir, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    shutil.copytree(baseline, run_dir)  # as if stopped after step 4's checkpoint: steps 5-6 to go
    shutil.rmtree(checkpoints / "step_6")
    shutil.rmtree(run_dir / "model")
    undo, preexec = (lambda: None), None
    if cause == "file-size limit":
        reason, preexec = "File too large", limit_file_size
    else:
        reason, undo = read_only(checkpoints)
    try:
        proc = subprocess.run([sys.executable, "-m", "lrn.cli", "train", f"resume={run_dir}"], cwd=ROOT,
                              env={**os.environ, "LRN_CACHE": str(cache_dir), "WANDB_SILENT": "true"},
                              preexec_fn=preexec, capture_output=True, text=True, timeout=600)
    finally:
        undo()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("lrn:")] == [
        f"lrn: error: cannot write checkpoint {checkpoints / 'step_6'}: {reason}; last good checkpoint: "
        f"{checkpoints / 'step_4'}; free space (or make {run_dir} writable), then resume with: lrn train "
        f"resume={run_dir}"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_4"]  # no half-written one, not even a temporary
    assert read_metrics(run_dir)[-1]["step"] == 6  # logged before its checkpoint failed; the resume logs it again
    run_lrn("train", f"resume={run_dir}")
    assert_same_as_uninterrupted(run_dir, baseline)


@pytest.mark.slow
def test_a_signal_while_the_run_starts_ends_it_in_one_line(cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "lrn.cli", "train", *RUN, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                            env={**os.environ, "LRN_CACHE": str(cache_dir), "WANDB_SILENT": "true"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # logged once the run directory is held, before the model is loaded
        if "run directory:" in line:
            break
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in output, output[-2000:]
    (line,) = [ln for ln in output.splitlines() if ln.startswith("lrn:")]
    assert re.fullmatch(rf"lrn: interrupted (while starting, before step 1; start the run again|at step \d+; "
                        rf"resume with: lrn train resume={re.escape(str(run_dir))})", line), line


@pytest.mark.slow
def test_nonfinite_loss_stops_the_run_or_is_skipped(run_lrn, tmp_path):
    stopped, skipped = tmp_path / "stopped", tmp_path / "skipped"
    proc = run_lrn("train", *RUN, "trainer.debug_nan_step=3", f"hydra.run.dir={stopped}", check=False)
    assert proc.returncode == 1
    (line,) = [ln for ln in proc.stderr.splitlines() if "non-finite" in ln]
    assert "at step 3" in line and f"last good checkpoint: {stopped / 'checkpoints' / 'step_2'}" in line
    assert [r["step"] for r in read_metrics(stopped)] == [0, 1, 2]
    run_lrn("train", *RUN, "trainer.debug_nan_step=3", "ppo.skip_nonfinite=true", f"hydra.run.dir={skipped}")
    rows = read_metrics(skipped)
    assert [r["step"] for r in rows] == list(range(7))
    assert [r["ppo/skipped_updates"] for r in rows[1:]] == [0, 0, 2 * 2, 0, 0, 0]  # epochs x mini-batches
    assert "loss/policy" not in rows[3] and "loss/policy" in rows[4]


@pytest.mark.slow
def test_resume_refuses_a_changed_experiment_but_allows_cadences(run_lrn, baseline, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(baseline, run_dir)
    before = (run_dir / "metrics.jsonl").read_text(), (run_dir / ".hydra" / "overrides.yaml").read_text()
    for change, key in (("seed=1", "seed"), ("sampler=uniform", "sampler.name")):
        proc = run_lrn("train", f"resume={run_dir}", change, check=False)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and f"{key} (" in proc.stderr and "force_resume=true" in proc.stderr
    assert ((run_dir / "metrics.jsonl").read_text(), (run_dir / ".hydra" / "overrides.yaml").read_text()) == before
    run_lrn("train", f"resume={run_dir}", "trainer.eval_every=1", "trainer.steps=7")
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(8)) and "eval/arithmetic/accuracy" in rows[7]
    assert without_timings(rows[:7]) == without_timings(read_metrics(baseline))


def finished_and_cut_back(run_lrn, tmp_path: Path, *overrides: str) -> tuple[Path, Path]:
    """A finished 6-step run, and a copy of it cut back to its step-4 checkpoint (step 6's and model/ gone)."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_lrn("train", *RUN, *overrides, f"hydra.run.dir={full}")
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_6")
    shutil.rmtree(resumed / "model")
    return full, resumed


@pytest.mark.slow
def test_history_sampler_posterior_survives_resume(run_lrn, tmp_path):
    """Resuming from step 4 repeats steps 5-6 exactly only if the posterior came back with the checkpoint."""
    full, resumed = finished_and_cut_back(run_lrn, tmp_path, "sampler=learnability_history")
    state = read_tree(resumed / "checkpoints" / "step_4", "state")["sampler"]
    assert state["right"].sum() + state["wrong"].sum() > 0 and state["last"].max() == 4
    run_lrn("train", f"resume={resumed}")
    assert without_timings(read_metrics(resumed)) == without_timings(read_metrics(full))


@pytest.mark.slow
def test_predictive_sampler_probe_and_buffer_survive_resume(run_lrn, tmp_path):
    """Resumed from step 4, steps 5-6 repeat exactly only if the probe, its replay buffer (features as they were
    generated), the question counts and the RNG came back with the checkpoint."""
    full, resumed = finished_and_cut_back(run_lrn, tmp_path, "sampler=predictive")
    state = read_tree(resumed / "checkpoints" / "step_4", "state")["sampler"]
    assert state["probe_size"] == 4 * 4 and state["probe_step"][:16].max() == 4  # 4 steps of 4 groups
    assert state["probe_x"].shape == (4096, 32) and state["probe_x"][:16].abs().sum() > 0  # width-32 features
    run_lrn("train", f"resume={resumed}")
    assert without_timings(read_metrics(resumed)) == without_timings(read_metrics(full))


# -- in-process units (fast) -------------------------------------------------------------------------

def small_run_objects(seed: int = 0, layers: int = 1, shard: Callable | None = None):
    """A policy with a value head (``shard`` applied to it, e.g. FSDP's), Adam and a schedule after two
    updates, and a sampler that has drawn."""
    torch.manual_seed(seed)
    tokenizer = build_char_tokenizer()
    lm = build_tiny_model(TinyModelConfig(layers=layers, width=16, heads=2, ffn=32), tokenizer)
    policy = Policy(lm, with_value=True)
    if shard is not None:
        shard(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 3))
    batch = PPOBatch(torch.randint(3, 40, (2, 6)), torch.ones(2, 6, dtype=torch.long), torch.ones(2, 3),
                     torch.zeros(2), prompt_len=3)
    for _ in range(2):
        logp, _, values = policy(batch, SamplingSpec(max_new_tokens=3), entropy_grad=True)
        (logp.mean() + values.mean()).backward()
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
    sampler = UniformSampler([Problem(str(i), f"{i}+1", str(i + 1)) for i in range(10)], 2, 2, seed=seed)
    sampler.draw(3 + seed)
    return policy, tokenizer, optimizer, schedule, sampler


def test_trees_round_trip_optimizer_and_rng_state_exactly(tmp_path):
    policy, _, optimizer, schedule, sampler = small_run_objects()
    random.random(), np.random.rand(), torch.rand(1)
    tree = {"optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(), "sampler": sampler.state_dict(),
            "rng": rng_state()}
    write_tree(tmp_path, "t", tree)
    back = read_tree(tmp_path, "t")
    draws = random.random(), float(np.random.rand()), torch.rand(3)
    set_rng_state(back["rng"])
    assert (random.random(), float(np.random.rand())) == draws[:2] and torch.equal(torch.rand(3), draws[2])
    assert back["scheduler"] == schedule.state_dict() and back["sampler"] == sampler.state_dict()
    original = optimizer.state_dict()
    assert back["optimizer"]["param_groups"] == original["param_groups"]
    assert back["optimizer"]["state"].keys() == original["state"].keys()
    for i, entry in original["state"].items():
        assert all(torch.equal(back["optimizer"]["state"][i][k], v) for k, v in entry.items())


def test_damaged_checkpoints_are_skipped_with_a_warning_naming_the_file(tmp_path, caplog):
    objects = small_run_objects()
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        write_checkpoint(root, step, *objects, TrainState(step=step, history=[(0, 0.5)]), keep=2)
    assert [p.name for p in list_checkpoints(root)] == ["step_3", "step_2"]
    state_json = root / "step_3" / "state.json"
    state_json.write_text("x" * state_json.stat().st_size)  # same size, garbage: its checksum gives it away
    ckpt = latest_checkpoint(root)
    assert ckpt.path.name == "step_2" and ckpt.state.history == [(0, 0.5)]
    assert f"{state_json}: contents changed since it was written" in caplog.text
    policy, _, optimizer, schedule, sampler = small_run_objects()
    assert apply_checkpoint(ckpt, policy, optimizer, schedule, sampler).step == 2
    head = root / "step_2" / "value_head.safetensors"
    head.write_bytes(head.read_bytes()[:10])
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        latest_checkpoint(root)


def test_checkpoints_from_before_the_training_clock_still_load(tmp_path):
    """TrainState.eval_s and checkpoint_s came later: a checkpoint without them loads them as 0."""
    objects = small_run_objects()
    root = tmp_path / "checkpoints"
    write_checkpoint(root, 4, *objects, TrainState(step=4, elapsed_s=12.5, eval_s=2.0, checkpoint_s=1.0), keep=2)
    state_json = root / "step_4" / "state.json"
    tree = json.loads(state_json.read_text())
    assert (tree["trainer"].pop("eval_s"), tree["trainer"].pop("checkpoint_s")) == (2.0, 1.0)
    state_json.write_text(json.dumps(tree))
    manifest = json.loads((root / "step_4" / "manifest.json").read_text())
    manifest["files"]["state.json"] = state_json.stat().st_size
    (root / "step_4" / "manifest.json").write_text(json.dumps(manifest))
    state = latest_checkpoint(root).state
    assert (state.step, state.elapsed_s, state.eval_s, state.checkpoint_s) == (4, 12.5, 0.0, 0.0)


def test_resume_overrides_and_config_changes(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "checkpoints" / "step_2").mkdir(parents=True)
    (tmp_path / "resolved_config.yaml").write_text("seed: 0\n")
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- seed=3\n- trainer.steps=5\n- resume=/old\n")
    assert resume_overrides(tmp_path, ["resume=x", "trainer.steps=9", "--cfg", "job"]) == [
        "seed=3", f"resume={tmp_path}", "trainer.steps=9", f"hydra.run.dir={tmp_path}", "--cfg", "job"]
    old = {"seed": 0, "trainer": {"steps": 5, "eval_every": 2}, "logger": {"progress": True}, "ppo": {"lr": 1e-4}}
    new = {"seed": 1, "trainer": {"steps": 9, "eval_every": 1}, "logger": {"progress": False}, "ppo": {"lr": 1e-4}}
    assert config_changes(old, new) == [("seed", 0, 1)]
    # where the warm start is cached (another machine's LRN_CACHE) does not change the experiment
    moved = {**new, "seed": 0, "model": {"warm_start": {"cache_dir": "/other"}}}
    assert config_changes({**old, "model": {"warm_start": {"cache_dir": "/mine"}}}, moved) == []
    # nor how processes share the model: either checkpoint layout loads under either strategy
    assert config_changes({"trainer": {"strategy": "ddp"}}, {"trainer": {"strategy": "fsdp"}}) == []
    # a key lrn gained after the run started (dataset.long_prompts) is no change at its default, one otherwise
    defaults = {"dataset": {"long_prompts": "refuse"}}
    assert config_changes(old, {**old, "dataset": {"long_prompts": "refuse"}}, defaults) == []
    assert config_changes(old, {**old, "dataset": {"long_prompts": "drop"}}, defaults) == [
        ("dataset.long_prompts", "<absent>", "drop")]


def test_flipped_weight_bytes_are_found_by_the_checksum_before_anything_is_loaded(tmp_path, caplog):
    objects = small_run_objects()
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        write_checkpoint(root, step, *objects, TrainState(step=step, history=[(0, 0.5)]), keep=2)
    manifest = json.loads((root / "step_2" / "manifest.json").read_text())
    weights = root / "step_2" / "model" / "model.safetensors"
    assert manifest["files"]["model/model.safetensors"] == {"size": weights.stat().st_size,
                                                            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    flip(weights, weights.stat().st_size // 2, 64)
    assert load_file(str(weights)).keys()  # still a well-formed file of the same size: only the checksum tells
    ckpt = latest_checkpoint(root)
    assert ckpt.path.name == "step_1"
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"damaged checkpoint, skipped: {weights}: contents changed since it was written (SHA-256 differs from "
        "manifest.json)"]


def test_truncate_metrics_drops_later_and_partial_rows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n{"step": 3, "x": ')
    truncate_metrics(path, 1)
    assert path.read_text() == '{"step": 0}\n{"step": 1}\n'


WRITE_PAST_THE_LIMIT = """
import sys, torch
from pathlib import Path
from safetensors.torch import save_file
from lrn.config import WandbConfig
from lrn.logger import MetricsLogger
from lrn.storage import WriteError, writing
run_dir = Path(sys.argv[1])
logger = MetricsLogger(run_dir, "run", {}, WandbConfig(mode="disabled"))
try:
    logger.log({"step": 0, "text": "x" * 40_000})  # past 32 KiB: Python's writer: OSError
except WriteError as e:
    print(e)
logger.close()
try:
    with writing("a checkpoint", run_dir / "w.safetensors"):  # safetensors' Rust writer: "... (os error 27)"
        save_file({"w": torch.zeros(10_000)}, str(run_dir / "w.safetensors"))
except WriteError as e:
    print(e)
"""


def test_a_failed_write_is_a_write_error_naming_what_and_where_from_python_and_rust_writers(tmp_path):
    proc = subprocess.run([sys.executable, "-c", WRITE_PAST_THE_LIMIT, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, preexec_fn=limit_file_size,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [f"cannot write metrics {tmp_path / 'metrics.jsonl'}: File too large",
                                        f"cannot write a checkpoint {tmp_path / 'w.safetensors'}: File too large"]
    with pytest.raises(KeyError), writing("a checkpoint", tmp_path):
        raise KeyError("a bug, not a failed write: it stays what it is")
