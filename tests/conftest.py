"""Shared fixtures: a shrunk embedded config that trains in seconds, and a session-wide cache."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A 1-layer, width-32 model with a 40-step warm start, 3 PPO steps of 4 questions x 4 answers.
TINY = [
    "model.tiny.layers=1", "model.tiny.width=32", "model.tiny.heads=2", "model.tiny.ffn=64",
    "model.warm_start.steps=40", "model.warm_start.batch_size=64",
    "dataset.train_size=300", "dataset.test_per_level=8",
    "trainer.steps=3", "trainer.batch_size=4", "trainer.rollouts_per_question=4", "trainer.eval_every=2",
    # the 40-step warm start is rarely right, so rewards are mostly 0: an entropy bonus guarantees a gradient
    "ppo.ent_coef=0.01",
    "logger.wandb.mode=disabled", "logger.progress=false",
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lrn-cache")


@pytest.fixture
def run_lrn(cache_dir):
    """Run the real `lrn` CLI in a subprocess; returns the CompletedProcess."""

    def run(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "LRN_CACHE": str(cache_dir), "WANDB_SILENT": "true", **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "lrn.cli", *args], cwd=ROOT, env=full_env,
                              capture_output=True, text=True, timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError(f"lrn {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc

    return run
