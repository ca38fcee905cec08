"""The PPO loop. One iteration ("a training step", the unit every curve is plotted against):

1. select      the sampler picks this step's questions (learnability screens a pool with rollouts)
2. roll out    K answers for each picked question that has none yet
3. grade       the task's verifier scores each answer (inside the rollout engine)
4. advantages  group baseline or GAE with the value head, scaled to unit std
5. update      clipped-ratio PPO over epochs x mini-batches (+ value loss, KL to reference, entropy)
6. log / eval  metrics every step, held-out greedy accuracy every ``eval_every`` steps, a checkpoint
               every ``checkpoint_every`` steps (``lrn/checkpoint.py``; ``resume`` continues from one);
               ``time/train_s`` is the wall clock without evaluation and checkpoint writing

Under ``torchrun`` / ``accelerate launch`` every rank runs this same loop (``lrn/distributed.py``):
rollouts (evaluation's included) are sharded and all-gathered, the update is sharded and its
gradients summed, and rank 0 alone writes metrics, checkpoints and the final model. With
``trainer.strategy=fsdp`` the policy itself is sharded too (``lrn/sharding.py``): every rank writes
its shards of each checkpoint, and the final model is gathered to rank 0.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from lrn import distributed, sharding
from lrn.batch import collate
from lrn.checkpoint import TrainState, apply_checkpoint, discard_newer, latest_checkpoint, write_checkpoint
from lrn.config import Config, ConfigError
from lrn.engines import Engine, HFEngine, SamplingSpec
from lrn.evaluate import evaluate
from lrn.features import prompt_features
from lrn.grading import GradePool
from lrn.interrupt import GracefulStop
from lrn.logger import MetricsLogger, NullLogger, truncate_metrics
from lrn.models import context_length, eos_ids, fit_prompts, load_policy, prepare_task
from lrn.policy import Policy, compute_dtype
from lrn.progress import TrainProgress, print_summary
from lrn.rollout import RolloutEngine, longest_prompt, sharded
from lrn.samplers import Sampler, build_sampler
from lrn.storage import WriteError, writing
from lrn.tasks import Task, build_task
from lrn.update import NonFiniteError, engine_gap, ppo_update, prepare

log = logging.getLogger(__name__)


class RunStopped(Exception):
    """The run stopped before its last step (signal, non-finite loss); ``exit_code`` for the CLI."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_rollouts(cfg: Config, policy: Policy, tokenizer, task: Task, batch_size: int, grading: GradePool,
                   on_batch=None, engine: Engine | None = None) -> RolloutEngine:
    """The rollout engine of ``cfg.rollout`` on ``policy``'s weights, sampling with one :class:`SamplingSpec`.

    ``engine``: share that vLLM engine instead of building another (one ``vllm.LLM`` per run; the caller
    closes it). ``batch_size`` bounds Hugging Face batches; vLLM schedules its own.
    """
    spec = SamplingSpec.from_config(cfg.rollout, task.max_new_tokens, eos_ids(policy.lm, tokenizer))
    if cfg.rollout.engine == "vllm":
        from lrn.engines.vllm import VLLMEngine

        if engine is None:
            length = (longest_prompt(task, tokenizer) + task.max_new_tokens
                      if cfg.rollout.vllm.max_model_len == "auto" else None)
            engine = VLLMEngine(policy.lm, tokenizer, cfg.rollout.vllm, policy.dtype, cfg.seed, length)
    else:  # sharded: the whole model gathered while it generates (each rank runs its own number of passes)
        compute = (lambda: sharding.generating(policy)) if sharding.is_sharded(policy) else policy.autocast
        engine = HFEngine(policy.lm, tokenizer, batch_size, compute)
    rollouts = RolloutEngine(engine, tokenizer, task, spec, grading, on_batch)
    rollouts.seed = cfg.seed
    return rollouts


def peak_memory_gb(device: torch.device) -> float:
    """This rank's peak memory: on a GPU the most allocated since the last call (the step's), on CPU the
    process's resident high-water mark so far (the kernel keeps no per-step one)."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        return peak / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def grade_pool(cfg: Config) -> GradePool:
    """Worker processes for the math grader (``rollout.grade_workers``); the others grade inline."""
    return GradePool(cfg.dataset.grader, cfg.rollout.grade_workers if cfg.dataset.grader == "math" else 0)


def resume(cfg: Config, run_dir: Path, policy: Policy, optimizer: torch.optim.Optimizer,
           schedule: torch.optim.lr_scheduler.LRScheduler, sampler: Sampler) -> tuple[TrainState, Path]:
    """Load the newest valid checkpoint of ``run_dir`` (RNG states included) and drop later metrics rows.

    Every rank reads the same checkpoint (its RNG states are every rank's: they are kept in step);
    rank 0 then tidies the directory."""
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt.state.step > cfg.trainer.steps:
        raise ConfigError(f"trainer.steps={cfg.trainer.steps} is below the step of {ckpt.path} "
                          f"({ckpt.state.step}); set trainer.steps >= {ckpt.state.step}")
    state = apply_checkpoint(ckpt, policy, optimizer, schedule, sampler, cfg.ppo.lr)
    distributed.barrier()  # every rank has read it before rank 0 deletes anything
    if distributed.is_main():
        discard_newer(run_dir / "checkpoints", ckpt)
        truncate_metrics(run_dir / "metrics.jsonl", state.step)  # rows logged after the checkpoint
    log.info("resuming %s from %s", run_dir, ckpt.path)
    return state, ckpt.path


def write_failed(error: str, run_dir: Path, last_checkpoint: Path | None) -> RunStopped:
    """A failed write as the run's last line: what and where, the last good checkpoint, how to go on."""
    if last_checkpoint is None:
        return RunStopped(f"error: {error}; no checkpoint yet: free space (or make {run_dir} writable), then start "
                          "the run again", 1)
    return RunStopped(f"error: {error}; last good checkpoint: {last_checkpoint}; free space (or make {run_dir} "
                      f"writable), then resume with: lrn train resume={run_dir}", 1)


def synced(signum: int | None, failed: str | None) -> tuple[int, str | None]:
    """What every rank acts on at the same point: the largest signal any rank received, and a failed write
    (rank 0 alone writes)."""
    states = distributed.all_gather_object((signum or 0, failed))
    return max(s for s, _ in states), next((f for _, f in states if f), None)


def train(cfg: Config, run_dir: Path, stop: GracefulStop | None = None) -> dict:
    """Run PPO as configured, writing ``metrics.jsonl`` and checkpoints into ``run_dir``; returns the summary.

    With ``cfg.resume`` set, continue from the newest valid checkpoint in ``run_dir/checkpoints``.
    Raises :class:`RunStopped` after a signal (checkpoint written), a non-finite loss or a failed write
    (disk full, read-only: one line with the last good checkpoint).

    The first SIGINT/SIGTERM is caught from the start (``stop``: the caller's, already installed): during
    start-up it ends the run before its first step; during step 0's evaluation it checkpoints step 0;
    later, the current step.
    However the run ends, its rollout engine is shut down (a vLLM engine frees its memory before the next
    sweep job).
    """
    with contextlib.ExitStack() as closing:
        if stop is None:
            stop = closing.enter_context(GracefulStop())
        return _train(cfg, Path(run_dir), stop, closing)


def _train(cfg: Config, run_dir: Path, stop: GracefulStop, closing: contextlib.ExitStack) -> dict:
    task = build_task(cfg.dataset)
    with distributed.main_first():  # rank 0 fills the warm-start cache, the others read it
        lm, tokenizer = load_policy(cfg.model, cfg.dataset, cfg.seed)
    prepare_task(task, tokenizer, cfg.model)
    fit_prompts(task, tokenizer, context_length(lm, cfg.rollout), cfg.dataset.long_prompts, cfg.eval.limit)
    seed_everything(cfg.seed)  # after the (cached or not) warm start, so both paths match; the same on all ranks
    policy = Policy(lm, with_value=cfg.ppo.advantage == "gae", dtype=compute_dtype(cfg.model.dtype, lm.device),
                    reference=cfg.ppo.kl_coef > 0)
    if cfg.trainer.strategy == "fsdp":
        sharding.shard(policy)  # before the optimizer sees the parameters: they become shards
    grading = grade_pool(cfg)
    engine = build_rollouts(cfg, policy, tokenizer, task, cfg.rollout.batch_size, grading)
    closing.callback(engine.engine.close)  # last: under torchrun vLLM's shutdown ends the process group
    eval_engine = build_rollouts(cfg, policy, tokenizer, task, cfg.eval.batch_size, grading, engine=engine.engine)
    spec = engine.spec
    k = cfg.trainer.rollouts_per_question
    sampler = build_sampler(cfg.sampler, task.train, cfg.trainer.batch_size, k, cfg.seed,
                            features=prompt_features(policy, tokenizer, task, cfg.rollout.batch_size))
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.ppo.lr, eps=1e-5)
    warmup = max(1, cfg.ppo.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    held_out = task.test[: cfg.eval.limit] if cfg.eval.limit else task.test
    checkpoints = run_dir / "checkpoints"
    main = distributed.is_main()  # rank 0 alone writes files, W&B and the terminal
    acc_key = f"eval/{task.name}/accuracy"
    state, last_checkpoint = TrainState(), None
    logger: MetricsLogger | NullLogger = NullLogger()
    progress = TrainProgress(cfg.trainer.steps, enabled=cfg.logger.progress and main)
    start = time.perf_counter()

    def clock() -> dict[str, float]:
        """The run's clocks now: wall seconds, and the same without evaluation and checkpoint writing
        (``time/train_s``: what a sampler's cost in seconds is compared on, lrn compare)."""
        elapsed = time.perf_counter() - start
        return {"time/elapsed_s": elapsed, "time/train_s": elapsed - state.eval_s - state.checkpoint_s,
                "time/checkpoint_s": state.checkpoint_s}

    def run_eval(step: int) -> dict[str, float]:
        t = time.perf_counter()
        eval_engine.start_step(step)
        result = evaluate(sharded(eval_engine, cfg.seed, step, 1), held_out, task.name, cfg.dataset.grader,
                          cfg.eval.samples, cfg.eval.pass_k)  # sharded across ranks and gathered
        state.history.append((step, result.metrics[acc_key]))
        spent = time.perf_counter() - t
        state.eval_s += spent
        return {**result.metrics, "perf/eval_s": spent}

    def log(row: dict) -> str | None:
        """Log ``row``; a failed write is returned, for every rank to stop on at the next sync."""
        try:
            logger.log(row)
        except WriteError as e:
            return str(e)
        return None

    def save_checkpoint() -> Path:
        t = time.perf_counter()
        state.elapsed_s = t - start  # saved with the clocks before this write: a resumed run leaves it out too
        path, failed = checkpoints / f"step_{state.step}", None
        if main or sharding.is_sharded(policy):  # a sharded checkpoint is written by every rank together
            try:
                path = write_checkpoint(checkpoints, state.step, policy, tokenizer, optimizer, schedule, sampler,
                                        state, cfg.trainer.keep_checkpoints)
            except WriteError as e:  # nothing half-written is left: the previous checkpoint stays the last
                failed = str(e)
        failed = distributed.broadcast_object(failed)  # and no rank goes on (or exits) before it is complete
        if failed:
            raise write_failed(failed, run_dir, last_checkpoint)
        state.checkpoint_s += time.perf_counter() - t
        return path

    try:
        if cfg.resume:  # the reference above stays the starting policy; the checkpoint replaces the rest
            state, last_checkpoint = resume(cfg, run_dir, policy, optimizer, schedule, sampler)
            engine.engine.sync_weights()
        start = time.perf_counter() - state.elapsed_s
        if main:
            logger = MetricsLogger(run_dir, cfg.run_name, cfg.to_dict(), cfg.logger.wandb, wandb_id=state.wandb_id)
        state.wandb_id = logger.run_id
        signum, _ = synced(stop.signum, None)
        if signum:  # during start-up: nothing new to save
            then = f"resume with: lrn train resume={run_dir}" if last_checkpoint else "start the run again"
            raise RunStopped(f"interrupted while starting, before step {state.step + 1}; {then}", 128 + signum)
        progress.update(state.step, {}, acc_key)
        failed: str | None = None
        if last_checkpoint is None:  # a new run: evaluate the starting policy
            row = {"step": 0, **state.totals, **run_eval(0), **clock()}
            failed = log(row)
            progress.update(0, row, acc_key)
            signum, failed = synced(stop.signum, failed)
            if failed:
                raise write_failed(failed, run_dir, last_checkpoint)
            if signum and cfg.trainer.steps > 0:  # a long evaluation need not be followed by a whole step
                last_checkpoint = save_checkpoint()
                raise RunStopped(f"interrupted at step 0; resume with: lrn train resume={run_dir}", 128 + signum)
        for step in range(state.step + 1, cfg.trainer.steps + 1):
            t_step = time.perf_counter()
            engine.reset_counters()
            eval_due = cfg.trainer.eval_due(step)
            # the engine's log-probs: for truncated importance sampling, or for rollout/logprob_diff,
            # which is logged on evaluation steps
            engine.start_step(step, logprobs=cfg.ppo.tis_cap is not None or eval_due)
            rollout = sharded(engine, cfg.seed, step).rollout  # each rank its share, all-gathered

            # 1. select: the sampler may roll out candidates itself (screening)
            t = time.perf_counter()
            selection = sampler.next_batch(step, rollout)
            # 2. roll out: questions the sampler handed back without rollouts
            groups = selection.rollouts or rollout(selection.problems, k)
            select_s = time.perf_counter() - t
            # 3. grade: done by the engine; flatten question by question (K consecutive answers each);
            #    every rank holds the whole batch, so advantages see whole groups
            rollouts = [r for group in groups for r in group]
            batch = collate(rollouts, tokenizer.pad_token_id, policy.device)
            t = time.perf_counter()
            engine.engine.sleep()  # vLLM: its KV cache and weights freed for the update (the sync wakes it)
            sleep_s = time.perf_counter() - t

            # 4. advantages, from no-grad passes of the current (= old) policy and the reference
            t = time.perf_counter()
            prepare(policy, cfg.ppo, batch, spec, k)
            if step == cfg.trainer.debug_nan_step:  # testing aid: a non-finite loss on purpose
                batch.advantages = batch.advantages * math.nan
            advantage_s = time.perf_counter() - t

            # 5. update
            t = time.perf_counter()
            try:
                update_stats = ppo_update(policy, optimizer, cfg.ppo, batch, spec)
            except NonFiniteError as e:
                raise RunStopped(
                    f"non-finite loss or gradient norm at step {step} ({e}); last good checkpoint: "
                    f"{last_checkpoint or 'none'}; ppo.skip_nonfinite=true skips such updates", 1) from None
            update_stats["ppo/lr"] = schedule.get_last_lr()[0]
            schedule.step()
            update_s = time.perf_counter() - t
            t = time.perf_counter()
            engine.engine.sync_weights()  # vLLM: push the updated weights (HF: nothing to do)
            sync_s = time.perf_counter() - t + sleep_s

            # 6. log / evaluate / checkpoint
            spent = engine.reset_counters()  # this rank's share; the counters are global sums
            counts = distributed.sum_values({"rollouts": spent.rollouts, "tokens": spent.tokens})
            state.step = step
            state.totals["counts/rollouts_total"] += counts["rollouts"]
            state.totals["counts/tokens_generated_total"] += counts["tokens"]
            mask = batch.completion_mask
            row = {
                "step": step, **state.totals,
                "train/reward_mean": batch.rewards.mean().item(),
                "train/answer_tokens_mean": mask.sum(1).mean().item(),
                "train/truncated_frac": float(np.mean([r.truncated for r in rollouts])),
                **selection.stats, **update_stats, **engine_gap(batch),
                "perf/select_s": select_s - spent.generate_s - spent.grade_s,
                "perf/rollout_s": spent.generate_s, "perf/grade_s": spent.grade_s,
                "perf/advantage_s": advantage_s, "perf/update_s": update_s,
                "perf/weight_sync_s": sync_s,
                "perf/tokens_per_s": counts["tokens"] / max(spent.generate_s, 1e-9),
                "perf/peak_memory_gb": peak_memory_gb(policy.device),
            }
            if eval_due:
                row.update(run_eval(step))
            row["perf/step_s"] = time.perf_counter() - t_step
            row.update(clock())
            failed = log(row)
            progress.update(step, row, acc_key)
            signum, failed = synced(stop.signum, failed)  # all ranks stop at the same step
            if failed:
                raise write_failed(failed, run_dir, last_checkpoint)
            stopping = signum > 0 and step < cfg.trainer.steps
            if step % cfg.trainer.checkpoint_every == 0 or stopping:
                last_checkpoint = save_checkpoint()
            if stopping:
                raise RunStopped(f"interrupted at step {step}; resume with: lrn train resume={run_dir}",
                                 128 + signum)
        if last_checkpoint is None or last_checkpoint.name != f"step_{state.step}":
            last_checkpoint = save_checkpoint()  # the end of the run
        # the final policy, loadable like any Hub model (sharded: gathered to rank 0 one tensor at a time)
        weights = sharding.full_state_dict(lm) if sharding.is_sharded(policy) else None
        if main:
            with writing("the final model", run_dir / "model"):
                lm.save_pretrained(run_dir / "model", state_dict=weights)
                tokenizer.save_pretrained(run_dir / "model")
    except WriteError as e:  # raised by rank 0 where no other rank waits on it (resume, the logger, the model)
        raise write_failed(str(e), run_dir, last_checkpoint) from None
    finally:
        grading.close()
        progress.close()
        logger.close()
    history = state.history
    summary = {
        "run_dir": str(run_dir), "steps": cfg.trainer.steps, "sampler": cfg.sampler.name, "seed": cfg.seed,
        "accuracy_start": history[0][1], "accuracy_final": history[-1][1],
        "accuracy_best": max(a for _, a in history), "best_step": max(history, key=lambda h: h[1])[0],
        **state.totals, "wall_s": time.perf_counter() - start, "metric": acc_key,
    }
    if cfg.logger.progress and main:
        print_summary(summary)
    return summary
