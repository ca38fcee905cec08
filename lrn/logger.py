"""Metrics sinks: ``metrics.jsonl`` in the run directory always, W&B when it can be had.

W&B never stops a run: a missing key means offline mode, and any failure to start it is reported
once and training goes on with the local file. A failed write of ``metrics.jsonl`` (disk full,
read-only) is a :class:`lrn.storage.WriteError`.
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
from pathlib import Path

from lrn.config import WandbConfig
from lrn.storage import writing

log = logging.getLogger(__name__)


WANDB_ENV_MODES = {"online": "online", "offline": "offline", "disabled": "disabled", "dryrun": "offline",
                   "run": "online"}  # WANDB_MODE values W&B accepts, as logger.wandb.mode names them


def wandb_mode(requested: str) -> str:
    """``auto``: the environment's ``WANDB_MODE`` if set; else online when an API key is configured (env or
    ~/.netrc), offline otherwise. An explicit ``logger.wandb.mode`` is used as given."""
    if requested != "auto":
        return requested
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in WANDB_ENV_MODES:
        return WANDB_ENV_MODES[env]
    if env:
        log.warning("WANDB_MODE=%s is not one of %s; ignored", env, ", ".join(WANDB_ENV_MODES))
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Appends one JSON object per logged row to ``metrics.jsonl``; mirrors rows to W&B."""

    def __init__(self, run_dir: Path, run_name: str, config: dict, wandb_cfg: WandbConfig,
                 wandb_id: str | None = None):
        """``wandb_id``: continue that W&B run (a resumed training run) instead of starting a new one."""
        self.path = Path(run_dir) / "metrics.jsonl"
        with writing("metrics", self.path):
            self.file = self.path.open("a")
        self.wandb = None
        mode = wandb_mode(wandb_cfg.mode)
        if mode != "disabled":
            try:
                import wandb

                # silent: W&B's own banner and end-of-run summary would bury lrn's progress bar and table;
                # one line below says where the run is
                self.wandb = wandb.init(
                    project=wandb_cfg.project, entity=wandb_cfg.entity, name=run_name, config=config,
                    dir=str(run_dir), mode=mode, settings=wandb.Settings(init_timeout=60, console="off", silent=True),
                    id=wandb_id, resume="allow" if wandb_id else None,
                )
            except Exception as e:  # noqa: BLE001 - W&B must never stop a run
                log.warning("W&B could not start (%s: %s); logging to %s only", type(e).__name__, e, self.path)
            else:
                where = Path(self.wandb.dir).parent
                if mode == "online":
                    log.info("W&B run: %s", self.wandb.url)
                else:
                    log.info("W&B %s run in %s (upload it with: wandb sync %s)", mode, where, where)

    @property
    def run_id(self) -> str | None:
        """The W&B run id (None without W&B), kept in checkpoints so that a resumed run continues it."""
        return self.wandb.id if self.wandb is not None else None

    def log(self, row: dict) -> None:
        with writing("metrics", self.path):
            self.file.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
            self.file.flush()
        if self.wandb is not None:
            try:
                self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
            except Exception as e:  # noqa: BLE001
                log.warning("W&B log failed (%s); continuing with %s only", e, self.path)
                self.wandb = None

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:  # its last flush failed: log() has reported that
            pass
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as e:  # noqa: BLE001
                log.warning("W&B finish failed: %s", e)


class NullLogger:
    """What ranks other than 0 log to under a multi-process launch: nothing."""

    run_id = None

    def log(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows of ``metrics.jsonl`` up to ``step`` (a resumed run logs the later ones again).

    A line cut short by a kill is dropped too. The file is replaced atomically.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    with writing("metrics", path):
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
