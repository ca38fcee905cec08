"""The run-directory lock and rules (lrn/rundir.py), with real processes holding real OS locks."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY

from lrn import rundir
from lrn.rundir import LOCK_NAME, RunDirError

HOLD = "import sys; from lrn import rundir; rundir.acquire(sys.argv[1]); print('held', flush=True); sys.stdin.read()"


def holder(run_dir) -> subprocess.Popen:
    """Another process that takes ``run_dir`` and keeps it until its stdin closes (or it is killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline() == "held\n"
    return proc


@pytest.fixture(autouse=True)
def release():
    yield
    rundir.release_all()


def test_a_held_directory_is_refused_naming_the_holder_and_freed_when_the_holder_is_killed(tmp_path):
    run_dir = tmp_path / "run"
    proc = holder(run_dir)
    message = (f"{run_dir} is in use by another lrn process (pid {proc.pid} on host {socket.gethostname()}); "
               "wait for it to finish (or stop it), or choose another hydra.run.dir")
    for attempt in (rundir.check, rundir.acquire, lambda d: rundir.acquire(d, resume=True)):
        with pytest.raises(RunDirError) as err:
            attempt(run_dir)
        assert str(err.value) == message
    info = json.loads((run_dir / LOCK_NAME).read_text())
    assert (info["pid"], info["host"]) == (proc.pid, socket.gethostname())
    proc.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops the lock, the file stays
    proc.wait()
    assert (run_dir / LOCK_NAME).exists()
    rundir.acquire(run_dir)
    assert rundir.holds(run_dir) and json.loads((run_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
    rundir.acquire(run_dir)  # held already: a no-op, not a conflict with itself
    rundir.release_all()
    assert not rundir.holds(run_dir)


HOLD_AND_FORK = """
import os, sys, time
from lrn import rundir
rundir.acquire(sys.argv[1])
child = os.fork()  # as an engine process started with fork would be
if child == 0:
    os.write(1, f"child {os.getpid()}\\n".encode())  # once fork() returns here, the at-fork hooks have run
    time.sleep(120)
    os._exit(0)
os.write(1, b"parent\\n")  # one write each: the two lines cannot interleave
sys.stdin.read()
"""


def test_a_forked_child_does_not_keep_the_directory_once_its_parent_is_killed(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, str(run_dir)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = sorted(proc.stdout.readline().split() for _ in range(2))  # from both, in either order
    assert lines[1] == ["parent"]
    child = int(lines[0][1])
    try:
        with pytest.raises(RunDirError, match=f"in use by another lrn process \\(pid {proc.pid} on host"):
            rundir.check(run_dir)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        os.kill(child, 0)  # the child lives on ...
        rundir.acquire(run_dir)  # ... without the lock
    finally:
        os.kill(child, signal.SIGKILL)


def test_only_new_directories_and_lrn_runs_are_accepted_and_a_refused_one_is_left_untouched(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(RunDirError, match=r"model is not empty and not an lrn run directory \(it holds config.json\)"):
        rundir.acquire(model)
    assert sorted(p.name for p in model.iterdir()) == ["config.json"]  # no lock file written into it
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "metrics.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(RunDirError, match=r"metrics.jsonl already exists; .* lrn train resume="):
        rundir.acquire(finished)
    assert sorted(p.name for p in finished.iterdir()) == ["metrics.jsonl"]
    rundir.acquire(finished, resume=True)  # its own resume may
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirError, match="is a file, not a directory"):
        rundir.acquire(tmp_path / "file")
    for fresh in (tmp_path / "absent" / "deeper", tmp_path / "empty"):
        if fresh.name == "empty":
            fresh.mkdir()
        rundir.acquire(fresh)
        assert sorted(p.name for p in fresh.iterdir()) == [LOCK_NAME]
    rundir.release_all()
    rundir.acquire(tmp_path / "empty")  # holding only a lock file left by an earlier process: still new


# -- end to end: real `lrn train` processes (slow) --------------------------------------------------

def start(cache_dir, *args: str) -> subprocess.Popen:
    env = {**os.environ, "LRN_CACHE": str(cache_dir), "WANDB_SILENT": "true"}
    return subprocess.Popen([sys.executable, "-m", "lrn.cli", "train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def wait_for(proc: subprocess.Popen, done, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)


def logged(run_dir, n: int):
    return lambda: (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().count("\n") >= n


def files(run_dir) -> dict[str, bytes]:
    """What a second process must not change: the run's configs and its lock (the metrics grow by themselves)."""
    names = [".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "resolved_config.yaml", LOCK_NAME]
    return {name: (run_dir / name).read_bytes() for name in names}


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    return stderr


@pytest.mark.slow
def test_two_lrn_train_processes_in_one_run_directory_the_second_is_refused_and_changes_nothing(run_lrn, cache_dir,
                                                                                                tmp_path):
    run_dir = tmp_path / "run"
    long_run = [*TINY, "trainer.steps=1000", "trainer.checkpoint_every=1000"]  # runs until stopped
    first = start(cache_dir, *long_run, f"hydra.run.dir={run_dir}")
    try:
        wait_for(first, logged(run_dir, 2), "step 1")
        before = files(run_dir)
        in_use = (f"lrn: error: {run_dir} is in use by another lrn process (pid {first.pid} on host "
                  f"{socket.gethostname()}); wait for it to finish (or stop it), or choose another hydra.run.dir")
        for second in (["train", *TINY, "seed=7", "eval.limit=10", f"hydra.run.dir={run_dir}"],  # another run
                       ["train", f"resume={run_dir}"]):  # a resume of a run going on (it has no checkpoint yet)
            proc = run_lrn(*second, check=False)
            assert proc.returncode == 2 and proc.stderr.splitlines() == [in_use]
            assert first.poll() is None  # refused for being in use, not for being finished
        assert files(run_dir) == before
    finally:
        stop(first)
    stopped = rows(run_dir)[-1]["step"]
    assert [r["step"] for r in rows(run_dir)] == list(range(stopped + 1))  # one run's rows, each step once
    assert (run_dir / "checkpoints" / f"step_{stopped}").is_dir()

    # two resumes at once: the one that holds the directory goes on, the other is refused
    resumed = start(cache_dir, f"resume={run_dir}")
    try:
        wait_for(resumed, logged(run_dir, stopped + 2), f"step {stopped + 1} of the resumed run")
        before = files(run_dir)
        proc = run_lrn("train", f"resume={run_dir}", check=False)
        assert proc.returncode == 2 and proc.stderr.splitlines() == [in_use.replace(str(first.pid), str(resumed.pid))]
        assert files(run_dir) == before and resumed.poll() is None
    finally:
        stop(resumed)
    assert [r["step"] for r in rows(run_dir)] == list(range(rows(run_dir)[-1]["step"] + 1))
