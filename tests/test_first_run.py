"""The first run a user sees: the default command, with its own output only (no library warning repeated,
no W&B banner or summary), from the shipped warm start."""

import os
import re
import subprocess
import sys
from collections import Counter

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_the_default_command_prints_no_line_more_than_twice(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}  # W&B as a user has it
    env.update(LRN_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path), COLUMNS="100")
    proc = subprocess.run([sys.executable, "-m", "lrn.cli", "train", "trainer.steps=3",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln.strip() for ln in re.split(r"[\r\n]", proc.stdout + proc.stderr) if ln.strip()]
    repeated = {ln: n for ln, n in Counter(lines).items() if n > 2}
    assert not repeated, repeated
    assert not any(ln.startswith("wandb:") for ln in lines), lines  # W&B's banner and summary are not shown
    assert any("W&B offline run in" in ln for ln in lines)  # one line of ours says where its files are
    assert "warm start" not in proc.stderr  # the default settings' warm start ships with lrn
    assert any("accuracy" in ln for ln in lines)  # the end-of-run table
