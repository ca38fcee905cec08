"""`lrn eval`: held-out accuracy (greedy, pass@k) of a run directory, a model directory or `model=...`."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from omegaconf import OmegaConf

from lrn.commands import fail, one_line
from lrn.config import ConfigError, compose, to_config
from lrn.resume import INVOCATION_KEYS, override_key


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
