"""Failed writes (disk full, read-only or full-quota filesystems, permissions, file-size limits) as one line.

The trainer wraps each of its writes (metrics, checkpoints, the final model, the resolved config) in
:func:`writing`; a failure becomes a :class:`WriteError` naming what and where, which the trainer
turns into one line with the last good checkpoint and the command that resumes (``lrn/trainer.py``).
Libraries report the same failure differently: Python raises :class:`OSError`, the Rust writers of
safetensors and tokenizers raise exceptions whose text ends in ``(os error N)``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class WriteError(Exception):
    """A file of the run could not be written: ``what`` (metrics, a checkpoint, ...) at ``path``, and why."""

    def __init__(self, what: str, path: Path, reason: str):
        super().__init__(f"cannot write {what} {path}: {reason}")
        self.what, self.path, self.reason = what, path, reason


def write_failure(error: BaseException) -> str | None:
    """Why a write failed (the system's words), if ``error`` is a failed write; None for anything else."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    match = _RUST_OS_ERROR.search(str(error))
    if match:
        return os.strerror(int(match.group(1)))
    return None


@contextlib.contextmanager
def writing(what: str, path: Path) -> Iterator[None]:
    """Turn a failed write inside the block into a :class:`WriteError` about ``what`` at ``path``."""
    try:
        yield
    except WriteError:
        raise
    except Exception as e:
        reason = write_failure(e)
        if reason is None:
            raise
        raise WriteError(what, path, reason) from None
