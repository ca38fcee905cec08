"""Where `lrn train` may write, and the lock that gives a run directory to one process.

A run directory is either new (absent, or empty but for a lock file) or an lrn run (it holds
``metrics.jsonl``, ``resolved_config.yaml`` or ``.lrn.lock``). Anything else, a model directory or
someone's data, is refused before a byte is written into it.

While a run or a resume goes on, its process holds an exclusive ``flock`` on ``<run dir>/.lrn.lock``
(which records its pid and host), and a second ``lrn train`` into that directory is refused in one
line naming the holder. The kernel drops the lock when the holder ends, however it ends: a crash
leaves the file behind, but a file nobody holds blocks nothing.

``lrn train`` takes the lock before Hydra writes ``.hydra/`` or its log file (``lrn/commands/train.py``), so a
refused command leaves the directory it was refused for exactly as it was.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)
LOCK_NAME = ".lrn.lock"
MARKERS = ("metrics.jsonl", "resolved_config.yaml", LOCK_NAME)  # files only an lrn run directory holds

_held: dict[Path, int] = {}  # run directory -> descriptor of the lock this process holds on it


def _forget_in_child() -> None:
    """A forked child (e.g. an engine process) must not keep the lock alive after this process ends: it drops its
    copies of the descriptors. Closing them releases nothing while this process holds its own (an unlock would)."""
    while _held:
        os.close(_held.popitem()[1])


os.register_at_fork(after_in_child=_forget_in_child)


class RunDirError(Exception):
    """A run directory that may not be used now; one line naming it and the way out."""


def _key(run_dir: Path) -> Path:
    return Path(run_dir).expanduser().resolve()


def holds(run_dir: Path) -> bool:
    """Whether this process holds the lock of ``run_dir``."""
    return _key(run_dir) in _held


def _holder(lock: Path) -> str:
    """Who holds ``lock``, from what the holder wrote into it."""
    try:
        info = json.loads(lock.read_text())
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"
    gone = ""
    if host == socket.gethostname() and not _alive(pid):
        gone = ", which has ended: a process it started still holds the lock"
    return f"pid {pid} on host {host}{gone}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _in_use(run_dir: Path) -> RunDirError:
    return RunDirError(f"{run_dir} is in use by another lrn process ({_holder(run_dir / LOCK_NAME)}); wait for it "
                       "to finish (or stop it), or choose another hydra.run.dir")


def check_not_held(run_dir: Path) -> None:
    """Refuse ``run_dir`` if another process holds its lock. Writes nothing (a shared lock, tried and dropped)."""
    lock = Path(run_dir) / LOCK_NAME
    if holds(run_dir) or not lock.is_file():
        return
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # unreadable: taking the lock will say why
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(run_dir) from None
    except OSError:
        pass  # a filesystem without locks: see acquire
    finally:
        os.close(fd)


def check_contents(run_dir: Path, resume: bool, own: tuple[str, ...] = ()) -> None:
    """Refuse a directory that is not new or an lrn run, or (a new run) one that already has metrics.

    ``own``: names this job has written there already (Hydra's ``.hydra`` and log file, for a job whose
    launcher ran it before it could lock), which do not make the directory someone else's."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a directory; choose another hydra.run.dir")
    if resume:
        return  # lrn/resume.py has checked it is a run with a checkpoint
    if (run_dir / "metrics.jsonl").exists():
        raise RunDirError(f"{run_dir}/metrics.jsonl already exists; choose another hydra.run.dir so no run is "
                          f"overwritten (to continue that run: lrn train resume={run_dir})")
    names = sorted(p.name for p in run_dir.iterdir() if p.name not in own)
    if names and not any(name in MARKERS for name in names):
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise RunDirError(f"{run_dir} is not empty and not an lrn run directory (it holds {shown}); lrn writes only "
                          "into a new directory or its own runs: choose another hydra.run.dir")


def check(run_dir: Path, resume: bool = False, own: tuple[str, ...] = ()) -> None:
    """Everything :func:`acquire` refuses, found without writing anything."""
    check_not_held(run_dir)
    check_contents(run_dir, resume, own)


def acquire(run_dir: Path, resume: bool = False, own: tuple[str, ...] = ()) -> None:
    """Take ``run_dir`` for this process until it ends (or :func:`release_all`); a no-op if already held.

    Checks first, so that nothing is created in a directory that is refused; then creates the
    directory and the lock file, locks it, and checks again under the lock (another process may have
    finished a run there in between).
    """
    if holds(run_dir):
        return
    run_dir = Path(run_dir)
    check(run_dir, resume, own)
    lock = run_dir / LOCK_NAME
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise RunDirError(f"cannot write {lock}: {e.strerror or e}; make {run_dir} writable or choose another "
                          "hydra.run.dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _in_use(run_dir) from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            os.close(fd)
            raise
        log.warning("cannot lock %s (%s): a second lrn process in this directory would not be refused", lock,
                    e.strerror)
    try:
        check_contents(run_dir, resume, own)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except RunDirError:
        os.close(fd)
        raise
    except OSError as e:
        os.close(fd)
        raise RunDirError(f"cannot write {lock}: {e.strerror or e}; free space or make {run_dir} writable") from None
    _held[_key(run_dir)] = fd


def release_all() -> None:
    """Drop every lock this process holds (the files stay; unheld, they block nothing)."""
    while _held:
        _, fd = _held.popitem()
        os.close(fd)
