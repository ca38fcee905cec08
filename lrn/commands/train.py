"""`lrn train`: Typer hands its arguments to Hydra's own entry point, so run directories, `-m` sweeps,
launchers (submitit) and `hydra.*` overrides behave as in any Hydra app. Before that, every job of
the sweep is composed and validated here, so a config mistake ends in one line and exit code 2
before any model is built; and every job's run directory is checked and locked (``lrn/rundir.py``),
so a directory in use or not an lrn run is refused before Hydra writes anything into it.

Under ``torchrun`` / ``accelerate launch`` every rank runs `lrn train`: the process group is joined
here, before Hydra, so that rank 0 can decide the run directory for all (``lrn/distributed.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

import typer
from omegaconf import DictConfig, OmegaConf

from lrn import distributed, rundir
from lrn.commands import fail, one_line
from lrn.config import CONF_DIR, Config, ConfigError, compose, to_config
from lrn.resume import check_resume_config, hydra_quote, override_key, resume_overrides, resume_value
from lrn.rundir import RunDirError

INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve", "--shell-completion"}
log = logging.getLogger("lrn")


def normalise_args(args: list[str]) -> list[str]:
    """Accept a bare `--cfg` as `--cfg job` (print the composed config)."""
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg in ("--cfg", "-c") and (i + 1 == len(args) or args[i + 1] not in ("job", "hydra", "all")):
            out.append("job")
    return out


def sweep_jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of every job a (multi)run would launch."""
    if not multirun:
        return [overrides]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def validate_jobs(args: list[str]) -> list[Config]:
    """Compose and validate every job of the command; exit 2 on the first mistake."""
    multirun = "-m" in args or "--multirun" in args
    overrides = [a for a in args if not a.startswith("-")]
    try:
        return [to_config(compose(job)) for job in sweep_jobs(overrides, multirun)]
    except ConfigError as e:
        fail(str(e))
    except Exception as e:  # noqa: BLE001 - Hydra's composition and override-parse errors
        fail(one_line(e))


def run_hydra(task_function, args: list[str], config_name: str = "config") -> None:
    """Run ``task_function`` through Hydra's real entry point with ``args`` as the command line."""
    import hydra

    sys.argv = [sys.argv[0], *args]
    hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(task_function)()


def hydra_config(overrides: list[str]) -> DictConfig:
    """The job's config with Hydra's own node (run and sweep directories, launcher), ``${now:...}`` as of now."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides, return_hydra_config=True)


def claim_run_dir(args: list[str], resume: bool) -> list[str]:
    """Check and lock the run directory (``lrn/rundir.py``) before Hydra writes into it; the command line with
    that directory pinned, so Hydra uses the one checked here (its ``${now:...}`` resolved once).

    Under a multi-process launch rank 0 decides the directory and holds it for all ranks."""
    overrides = [a for a in args if not a.startswith("-")]
    run_dir = error = None
    if distributed.is_main():
        run_dir = str(OmegaConf.select(hydra_config(overrides), "hydra.run.dir"))
        try:
            rundir.acquire(Path(run_dir), resume)
        except RunDirError as e:
            error = str(e)
    run_dir, error = distributed.broadcast_object((run_dir, error))
    if error is not None:
        if distributed.is_main():
            fail(error)
        raise SystemExit(2)
    kept = [a for a in args if a.startswith("-") or override_key(a) != "hydra.run.dir"]
    return [*kept, f"hydra.run.dir={hydra_quote(run_dir)}"]


def claim_sweep_dirs(args: list[str]) -> list[str]:
    """The sweep's version of :func:`claim_run_dir`: every job's directory is checked before anything is written,
    then locked by this process for the whole sweep when the basic launcher runs the jobs in it (a job of
    another launcher, e.g. submitit, locks its own in :func:`train_job`)."""
    jobs = sweep_jobs([a for a in args if not a.startswith("-")], multirun=True)
    first = hydra_config(jobs[0])
    sweep_dir = Path(str(first.hydra.sweep.dir))
    pinned = f"hydra.sweep.dir={hydra_quote(str(sweep_dir))}"
    if sweep_dir.exists() and (not sweep_dir.is_dir() or (any(sweep_dir.iterdir())
                                                          and not (sweep_dir / "multirun.yaml").exists())):
        fail(f"hydra.sweep.dir={sweep_dir} is not empty and not a sweep directory (no multirun.yaml); choose another "
             "hydra.sweep.dir")
    dirs = [sweep_dir / str(OmegaConf.select(hydra_config([*job, pinned, f"hydra.job.num={i}"]), "hydra.sweep.subdir"))
            for i, job in enumerate(jobs)]
    for i, run_dir in enumerate(dirs):
        if run_dir in dirs[:i]:
            fail(f"jobs {dirs.index(run_dir)} and {i} of the sweep would share the run directory {run_dir}; make "
                 "hydra.sweep.subdir differ per job (default: ${hydra.job.num}_${run_name})")
    basic = str(first.hydra.launcher._target_).endswith(".BasicLauncher")
    try:
        for run_dir in dirs:
            rundir.check(run_dir)
        for run_dir in dirs if basic else []:
            rundir.acquire(run_dir)
    except RunDirError as e:
        rundir.release_all()
        fail(f"sweep job refused: {e}")
    return [*args, pinned]


def rank_args(args: list[str]) -> list[str]:
    """The command line of this rank of a multi-process launch: Hydra's own files (``.hydra/``, the log file)
    are written by rank 0 only (the run directory is rank 0's: :func:`claim_run_dir`)."""
    if not distributed.is_main():
        args = [*args, "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return args


def train_job(cfg: DictConfig) -> dict:
    """One Hydra job: validate, prepare the run directory, train."""
    from hydra.core.hydra_config import HydraConfig

    from lrn.checkpoint import CheckpointError, list_checkpoints
    from lrn.interrupt import GracefulStop
    from lrn.storage import WriteError
    from lrn.trainer import RunStopped, train, write_failed

    try:
        config = to_config(cfg)
    except ConfigError as e:
        fail(str(e))
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if distributed.is_main():
        # held since the command's claim, but by the jobs of a launcher other than the basic one (submitit),
        # which take it here, after Hydra has written this job's own files
        own = tuple(name for name in (hydra_cfg.output_subdir, f"{hydra_cfg.job.name}.log") if name)
        try:
            rundir.acquire(run_dir, resume=config.resume is not None, own=own)
        except RunDirError as e:
            fail(str(e))
    distributed.barrier()  # rank 0 holds the directory before anyone writes
    main = distributed.is_main()  # asked now: a vLLM engine's shutdown at the run's end ends the process group
    with GracefulStop() as stop:  # a signal from here on ends the run in one line, at the trainer's next check
        try:
            failed = None
            if distributed.is_main():
                try:
                    save_resolved_config(config, run_dir)
                except WriteError as e:
                    failed = str(e)
                log.info("run directory: %s (processes: %d, process group: %s)", run_dir, distributed.world(),
                         distributed.backend())
            failed = distributed.broadcast_object(failed)
            if failed:  # before training: a resumed run's newest checkpoint is still its last good one
                newest = list_checkpoints(run_dir / "checkpoints")[:1] if config.resume else []
                raise write_failed(failed, run_dir, newest[0] if newest else None)
            return train(config, run_dir, stop)
        except (ConfigError, CheckpointError) as e:
            fail(str(e))
        except RunStopped as e:
            if main:
                typer.echo(f"lrn: {e}", err=True)
            raise SystemExit(e.exit_code) from None


def save_resolved_config(config: Config, run_dir: Path) -> None:
    """``resolved_config.yaml``: the experiment's config without the keys of this invocation (so that a resumed
    run compares equal with it), replaced atomically."""
    from lrn.storage import writing

    resolved = OmegaConf.structured(dataclasses.replace(config, resume=None, force_resume=False))
    with writing("the resolved config", run_dir / "resolved_config.yaml"):
        OmegaConf.save(resolved, run_dir / "resolved_config.yaml.tmp")
        os.replace(run_dir / "resolved_config.yaml.tmp", run_dir / "resolved_config.yaml")


def train(ctx: typer.Context) -> None:
    """Train with PPO. Arguments are Hydra overrides; `-m` runs a sweep; `--help` lists config groups."""
    args = normalise_args(list(ctx.args))
    resume = resume_value([a for a in args if not a.startswith("-")])
    if resume is not None:  # the run's own overrides, then these, in the run's directory
        run_dir = Path(resume).expanduser().resolve()
        try:
            # before reading the run: one that is going on is in use, whatever its files say so far (under
            # torchrun every rank looks, all before rank 0 locks it: that comes after the process group's join)
            rundir.check_not_held(run_dir)
            args = resume_overrides(run_dir, args)
        except (ConfigError, RunDirError) as e:
            fail(str(e))
    multirun = "-m" in args or "--multirun" in args
    if not INFO_FLAGS.intersection(args):
        (config, *_) = validate_jobs(args)
        if resume is not None:
            try:
                check_resume_config(Path(config.resume), config)
            except ConfigError as e:
                fail(str(e))
        if distributed.launched() and multirun:
            fail("-m under torchrun / accelerate launch would run the whole sweep in every process; sweep "
                 "with a Hydra launcher instead (docs/distributed.md)")
    try:
        if not INFO_FLAGS.intersection(args):
            if distributed.launched():
                distributed.init()
                args = rank_args(args)
            # nothing is written before the run directories are checked and locked (lrn/rundir.py)
            args = claim_sweep_dirs(args) if multirun else claim_run_dir(args, resume is not None)
        run_hydra(train_job, args)
    finally:
        rundir.release_all()
        distributed.shutdown()
