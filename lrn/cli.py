"""The `lrn` command line: Typer commands whose arguments are Hydra overrides.

`lrn train` hands its arguments to Hydra's own entry point, so run directories, `-m` sweeps,
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
from typing import Annotated

import typer
from omegaconf import DictConfig, OmegaConf

from lrn import distributed, rundir
from lrn.config import CONF_DIR, Config, ConfigError, compose, to_config
from lrn.curves import FRACTIONS
from lrn.intervals import METHOD, METHODS
from lrn.resume import (
    INVOCATION_KEYS,
    check_resume_config,
    hydra_quote,
    override_key,
    resume_overrides,
    resume_value,
)
from lrn.rundir import RunDirError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="RL fine-tuning (PPO) of language models on maths, with sampling for learnability.")
HYDRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve", "--shell-completion"}
log = logging.getLogger("lrn")


@app.callback()
def main() -> None:
    """RL fine-tuning (PPO) of language models on maths, with sampling for learnability."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file weight-loading bars drown the training progress bar


def fail(message: str) -> None:
    """Print one line and exit with code 2 (bad input), never a traceback."""
    typer.echo(f"lrn: error: {message}", err=True)
    raise SystemExit(2)


def one_line(error: BaseException) -> str:
    """Hydra/OmegaConf errors span several lines; keep the lines that say what is wrong."""
    options = getattr(error, "options", None)
    missing = getattr(error, "missing_cfg_file", None)
    if options and missing and "/" in missing:
        group, name = missing.rsplit("/", 1)
        return f"{group}={name}: no such option; available: {', '.join(sorted(options))}"
    skip = ("full_key", "object_type", "reference_type", "config search path", "set the environment")
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.lower().startswith(skip) and not ln.startswith(("-", "provider"))]
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        lines.append(f"({one_line(cause)})")
    return " ".join(lines) or type(error).__name__


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


@app.command(context_settings=HYDRA_ARGS)
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


def number_list(option: str, text: str | None) -> list[float] | None:
    """``0.3,0.35`` to numbers; exit 2 naming the option on anything else."""
    if text is None:
        return None
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        fail(f"{option} {text!r}: not a comma list of numbers; pass e.g. {option} 0.3,0.35")
    if not values:
        fail(f"{option} is empty; pass a comma list of numbers, e.g. {option} 0.3,0.35")
    return values


@app.command()
def compare(
    dirs: Annotated[list[Path], typer.Argument(
        metavar="DIR", show_default=False,
        help="Run directories and/or sweep directories (searched for metrics.jsonl).")],
    by: Annotated[str | None, typer.Option(
        metavar="KEYS", help="Comma-separated config keys to group by, e.g. sampler.name,ppo.lr.",
        show_default="every key that differs, except seed, run_name, logger.*, eval.*")] = None,
    baseline: Annotated[str, typer.Option(
        metavar="SPEC", help="key=value[,key=value] picking the baseline group; a bare group name means "
        "<group>.name.")] = "sampler=uniform",
    reference: Annotated[str | None, typer.Option(
        metavar="SPEC", help="A second group every ratio and difference is also given against (e.g. the "
        "better uniform), with its own intervals; same syntax as --baseline.")] = None,
    metric: Annotated[str | None, typer.Option(
        metavar="KEY", help="Metric to compare.", show_default="the single eval/<set>/accuracy")] = None,
    targets: Annotated[str | None, typer.Option(
        metavar="X,Y,...", help="Target values of the metric, instead of the grid.",
        show_default="--fractions of the way from the baseline's start to its plateau")] = None,
    target: Annotated[float | None, typer.Option(help="A single target (same as --targets X).")] = None,
    fractions: Annotated[str, typer.Option(
        metavar="F,G,...", help="The default grid: these fractions of the way from the baseline's start (seed "
        "mean at its first evaluation) to its plateau (mean of its seed-mean curve's last quarter).")
    ] = ",".join(f"{f:g}" for f in FRACTIONS),
    budget_steps: Annotated[str | None, typer.Option(
        metavar="N,...", help="Step budgets for the metric-at-budget table.",
        show_default="25%, 50%, 100% of the baseline's shortest seed")] = None,
    budget_tokens: Annotated[str | None, typer.Option(
        metavar="N,...", help="Generated-token budgets.", show_default="as for steps")] = None,
    budget_seconds: Annotated[str | None, typer.Option(
        metavar="S,...", help="Training-second budgets.", show_default="as for steps")] = None,
    unpaired: Annotated[bool, typer.Option(
        "--unpaired", help="Resample seeds within each group even where groups ran the same seeds.")] = False,
    interval: Annotated[str, typer.Option(
        metavar="METHOD", help=f"Speed-up interval method: {', '.join(METHODS)} (docs/compare.md: calibration).")
    ] = METHOD,
    out: Annotated[Path | None, typer.Option(
        help="Folder for compare.md, compare.csv, compare_budgets.csv and compare.png.",
        show_default="<first DIR>/compare")] = None,
) -> None:
    """Steps, tokens and seconds to a grid of targets, the metric at fixed budgets, and the mean metric over
    tokens, per group of runs, with intervals on every ratio and difference (docs/compare.md).

    Runs evaluated differently (eval.limit, eval.samples, trainer.eval_every, the held-out dataset.*) are refused.
    """
    from lrn.compare import CompareError, compare_dirs
    from lrn.report import print_table, write_outputs

    if interval not in METHODS:
        fail(f"--interval {interval!r} is unknown: allowed {', '.join(METHODS)}")
    budgets = {k: v for k, v in (("steps", number_list("--budget-steps", budget_steps)),
                                 ("tokens", number_list("--budget-tokens", budget_tokens)),
                                 ("seconds", number_list("--budget-seconds", budget_seconds))) if v is not None}
    try:
        result = compare_dirs(dirs, by=by, baseline=baseline, metric=metric, target=target,
                              targets=number_list("--targets", targets),
                              fractions=number_list("--fractions", fractions), budgets=budgets,
                              reference=reference, unpaired=unpaired, method=interval)
    except CompareError as e:
        fail(str(e))
    for warning in result.warnings:
        typer.echo(f"lrn: {warning}", err=True)
    print_table(result)
    out = out or dirs[0] / "compare"
    try:
        paths = write_outputs(result, out)
    except OSError as e:
        fail(f"cannot write to {out}: {e.strerror or e}; choose another --out")
    typer.echo(f"wrote {', '.join(map(str, paths))}")


def is_model_dir(path: Path) -> bool:
    """A saved model (config.json) or LoRA adapter (adapter_config.json)."""
    return (path / "config.json").exists() or (path / "adapter_config.json").exists()


def eval_target(args: list[str]) -> tuple[list[str], Path | None]:
    """Split `lrn eval` arguments into Hydra overrides and an optional run or model directory.

    A run directory contributes its original overrides (from .hydra/overrides.yaml) and its final
    policy (``model/``); a model directory (with config.json) becomes ``model.name_or_path``.
    """
    paths = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    if len(paths) > 1:
        fail(f"lrn eval takes one run or model directory, got {len(paths)}: {' '.join(paths)}")
    if not paths:
        return overrides, None
    target = Path(paths[0])
    if not target.is_dir():
        fail(f"{target}: no such directory; give a run directory (outputs/...) or a model directory")
    if is_model_dir(target):
        return [*overrides, f"model.name_or_path={target.resolve()}"], None
    model = target / "model"
    if not is_model_dir(model):
        fail(f"{target}: neither a model directory (config.json) nor a finished run directory (model/config.json)")
    saved = target / ".hydra" / "overrides.yaml"
    original = [o for o in OmegaConf.load(saved) if not o.lstrip("+~").startswith("hydra")
                and override_key(o) not in INVOCATION_KEYS] if saved.exists() else []
    return [*original, *overrides, f"model.name_or_path={model.resolve()}"], target


@app.command(name="eval", context_settings=HYDRA_ARGS)
def eval_command(ctx: typer.Context) -> None:
    """Evaluate a run directory, a model directory or `model=...` on the held-out set of `dataset=...`."""
    import datetime

    from lrn.evaluate import evaluate, write_results
    from lrn.logger import MetricsLogger
    from lrn.models import context_length, fit_prompts, load_policy, prepare_task
    from lrn.policy import Policy, compute_dtype
    from lrn.progress import eval_progress, print_eval
    from lrn.tasks import build_task
    from lrn.trainer import build_rollouts, grade_pool, seed_everything

    logging.basicConfig(level=logging.WARNING)
    overrides, run_dir = eval_target(list(ctx.args))
    try:
        config = to_config(compose(overrides))
    except ConfigError as e:
        fail(str(e))
    except Exception as e:  # noqa: BLE001 - Hydra's composition errors
        fail(one_line(e))
    try:
        task = build_task(config.dataset, evaluation=True)
        lm, tokenizer = load_policy(config.model, config.dataset, config.seed)
        prepare_task(task, tokenizer, config.model)
        fit_prompts(task, tokenizer, context_length(lm, config.rollout), config.dataset.long_prompts,
                    config.eval.limit)
        policy = Policy(lm, with_value=False, dtype=compute_dtype(config.model.dtype, lm.device))
    except ConfigError as e:
        fail(str(e))
    if config.eval.output_dir:
        out = Path(config.eval.output_dir)
    elif run_dir is not None:
        out = run_dir / "eval" / task.name
    else:
        out = Path("outputs") / "eval" / f"{datetime.datetime.now():%Y-%m-%d/%H-%M-%S}_{task.name}"
    problems = task.test[: config.eval.limit] if config.eval.limit else task.test
    seed_everything(config.seed)
    grading = grade_pool(config)
    with eval_progress(len(problems) * (1 + config.eval.samples)) as advance:
        engine = build_rollouts(config, policy, tokenizer, task, config.eval.batch_size, grading, on_batch=advance)
        try:
            result = evaluate(engine, problems, task.name, config.dataset.grader, config.eval.samples,
                              config.eval.pass_k)
        finally:
            engine.engine.close()
            grading.close()
    write_results(result, out, config.to_dict())
    logger = MetricsLogger(out, f"eval-{config.run_name}", config.to_dict(), config.logger.wandb)
    logger.log({"step": 0, **result.metrics})
    logger.close()
    print_eval(result.metrics, len(problems), out)


@app.command()
def grade(
    file: Annotated[Path, typer.Argument(help="JSON lines with a completion (or list of them) and a gold answer.")],
    overrides: Annotated[list[str] | None, typer.Argument(
        metavar="[dataset=NAME]", help="Take the grader from this dataset config.")] = None,
    grader: Annotated[str | None, typer.Option(help="integer | numeric | math (overrides the dataset's).")] = None,
    completion_field: Annotated[str, typer.Option(help="Field holding the completion text(s).")] = "completion",
    answer_field: Annotated[str, typer.Option(help="Field holding the gold answer.")] = "answer",
    answer_rule: Annotated[str, typer.Option(
        help="Read the gold as raw text, gsm8k (after ####) or boxed (last \\boxed{}).")] = "raw",
    out: Annotated[Path | None, typer.Option(help="Graded rows.", show_default="<FILE>.graded.jsonl")] = None,
) -> None:
    """Re-grade saved completions with the graders training uses; writes per-row rewards and the accuracy."""
    from lrn.grading import GRADERS
    from lrn.regrade import Fields, regrade

    name = grader
    if name is None:
        dataset = [o.split("=", 1)[1] for o in overrides or [] if o.startswith("dataset=")]
        if not dataset:
            fail("lrn grade needs a grader: give dataset=<gsm8k|math|math500|arithmetic|jsonl> or --grader")
        try:
            name = compose([f"dataset={dataset[-1]}"]).dataset.grader
        except Exception as e:  # noqa: BLE001 - Hydra's composition errors
            fail(one_line(e))
    if name not in GRADERS:
        fail(f"--grader={name!r} is unknown: allowed {', '.join(sorted(GRADERS))}")
    out = out or file.with_name(file.stem + ".graded.jsonl")
    try:
        summary = regrade(file, name, Fields(completion_field, answer_field, answer_rule), out)
    except ConfigError as e:
        fail(str(e))
    typer.echo(f"accuracy {summary['accuracy']:.4f} over {summary['rows']} rows ({summary['completions']} "
               f"completions, grader {name}); wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    app()
