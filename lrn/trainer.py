"""The PPO loop. One iteration ("a training step", the unit every curve is plotted against):

1. select      the sampler picks this step's questions (learnability screens a pool with rollouts)
2. roll out    K answers for each picked question that has none yet
3. grade       the task's verifier scores each answer (inside the rollout engine)
4. advantages  group baseline or GAE with the value head, scaled to unit std
5. update      clipped-ratio PPO over epochs x mini-batches (+ value loss, KL to reference, entropy)
6. log / eval  metrics every step, held-out greedy accuracy every ``eval_every`` steps, a checkpoint
               every ``checkpoint_every`` steps (``lrn/checkpoint.py``; ``resume`` continues from one)
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from lrn import ppo
from lrn.checkpoint import TrainState, apply_checkpoint, discard_newer, latest_checkpoint, write_checkpoint
from lrn.config import Config, ConfigError, PPOConfig
from lrn.evaluate import evaluate
from lrn.interrupt import GracefulStop
from lrn.logger import MetricsLogger, truncate_metrics
from lrn.models import PolicyWithValue, frozen_reference, load_policy, prepare_task
from lrn.progress import TrainProgress, print_summary
from lrn.rollout import RolloutEngine, collate
from lrn.samplers import Sampler, build_sampler
from lrn.tasks import build_task

log = logging.getLogger(__name__)


class RunStopped(Exception):
    """The run stopped before its last step (signal, non-finite loss); ``exit_code`` for the CLI."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class NonFiniteError(ArithmeticError):
    """A mini-batch produced a non-finite loss or gradient norm (and ``ppo.skip_nonfinite`` is off)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def completion_view(batch: dict[str, torch.Tensor], logits: torch.Tensor, values: torch.Tensor | None,
                    temperature: float = 1.0):
    """Slice a forward pass down to the completion tokens: (log-probs, logits, values), each [B, C].

    Logits are divided by the sampling temperature, so log-probs are those of the distribution
    the rollouts were actually drawn from.
    """
    p = int(batch["prompt_len"])
    c = batch["completion_mask"].shape[1]
    logits = logits[:, p - 1:p + c - 1] / temperature
    logp = ppo.token_logprobs(logits, batch["input_ids"][:, p:p + c])
    return logp, logits, (values[:, p - 1:p + c - 1] if values is not None else None)


def compute_advantages(cfg: PPOConfig, batch: dict, values: torch.Tensor | None, k: int
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token advantages [B, C] (and returns for the value loss, GAE only)."""
    mask = batch["completion_mask"]
    if cfg.advantage == "group":
        adv = ppo.group_advantages(batch["rewards"], k)
        if cfg.whiten:  # scale only: a zero-signal group must keep advantage exactly 0
            adv = adv / (adv.std(unbiased=False) + 1e-8)
        return adv[:, None] * mask, None
    rewards = ppo.terminal_rewards(batch["rewards"], mask)
    adv, returns = ppo.gae(rewards, values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten:
        adv = ppo.masked_whiten(adv, mask)
    return adv, returns


def _rows(batch: dict, idx: torch.Tensor) -> dict:
    return {k: v[idx] if v.dim() > 0 else v for k, v in batch.items()}


def ppo_update(policy: PolicyWithValue, optimizer: torch.optim.Optimizer, cfg: PPOConfig, batch: dict,
               old: dict[str, torch.Tensor], temperature: float = 1.0) -> dict[str, float]:
    """Epochs x mini-batches of clipped PPO; returns the mean of each loss and diagnostic.

    With ``cfg.micro_batch_size`` each mini-batch is split into micro-batches whose gradients are
    accumulated; each micro-batch's token-mean losses are weighted by its share of the mini-batch's
    answer tokens, so the update equals the unsplit one (up to float rounding) in less memory.
    A non-finite loss or gradient norm raises :class:`NonFiniteError`, or with ``cfg.skip_nonfinite``
    skips that mini-batch's update (counted in ``ppo/skipped_updates``, left out of the means).
    """
    n = batch["input_ids"].shape[0]
    size = max(1, n // cfg.minibatches)
    micro = cfg.micro_batch_size or size
    sums: dict[str, float] = {}
    updates = skipped = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(n)
        for start in range(0, n - size + 1, size):
            idx = order[start:start + size].to(batch["input_ids"].device)
            tokens = batch["completion_mask"][idx].sum().clamp(min=1.0)
            optimizer.zero_grad(set_to_none=True)
            parts: dict[str, float] = {}
            for m in range(0, size, micro):
                midx = idx[m:m + micro]
                mb = _rows(batch, midx)
                mask = mb["completion_mask"]
                weight = mask.sum() / tokens
                logits, values = policy(mb["input_ids"], mb["attention_mask"])
                logp, logits, values = completion_view(mb, logits, values, temperature)
                pg_loss, stats = ppo.policy_loss(logp, old["logp"][midx], old["adv"][midx], mask, cfg.clip)
                ent = ppo.masked_mean(ppo.entropy(logits), mask)
                loss = pg_loss - cfg.ent_coef * ent
                terms = {"loss/policy": pg_loss, "ppo/entropy": ent, "ppo/clipfrac": stats["clipfrac"],
                         "ppo/approx_kl": stats["approx_kl"]}
                if values is not None:
                    v_loss = ppo.value_loss(values, old["values"][midx], old["returns"][midx], mask, cfg.value_clip)
                    loss = loss + cfg.vf_coef * v_loss
                    terms["loss/value"] = v_loss
                if "ref_logp" in old:
                    kl = ppo.kl_to_reference(logp, old["ref_logp"][midx], mask)
                    loss = loss + cfg.kl_coef * kl
                    terms["ppo/kl"] = kl
                terms["loss/total"] = loss
                for key, value in terms.items():
                    parts[key] = parts.get(key, 0.0) + (value * weight).item()
                if not math.isfinite(parts["loss/total"]):
                    break
                (loss * weight).backward()
            grad_norm = math.nan
            if math.isfinite(parts["loss/total"]):
                grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm).item()
            if not math.isfinite(grad_norm):  # also when the loss was not finite (no step then)
                optimizer.zero_grad(set_to_none=True)
                if not cfg.skip_nonfinite:
                    raise NonFiniteError(f"loss {parts['loss/total']:.4g}, gradient norm {grad_norm:.4g}")
                skipped += 1
                continue
            optimizer.step()
            parts["ppo/grad_norm"] = grad_norm
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
            updates += 1
    stats = {key: value / updates for key, value in sums.items()}
    if cfg.skip_nonfinite:
        stats["ppo/skipped_updates"] = float(skipped)
    return stats


@torch.no_grad()
def score_batch(policy: PolicyWithValue, batch: dict, temperature: float, chunk: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Completion log-probs [B, C] (and values) of ``policy`` in forward passes of ``chunk`` sequences."""
    n = batch["input_ids"].shape[0]
    chunk = chunk or n
    logps, values = [], []
    for start in range(0, n, chunk):
        mb = _rows(batch, torch.arange(start, min(n, start + chunk), device=batch["input_ids"].device))
        logits, v = policy(mb["input_ids"], mb["attention_mask"])
        logp, _, v = completion_view(mb, logits, v, temperature)
        logps.append(logp)
        values.append(v)
    return torch.cat(logps), (torch.cat(values) if values[0] is not None else None)


def resume(cfg: Config, run_dir: Path, policy: PolicyWithValue, optimizer: torch.optim.Optimizer,
           schedule: torch.optim.lr_scheduler.LRScheduler, sampler: Sampler) -> tuple[TrainState, Path]:
    """Load the newest valid checkpoint of ``run_dir`` (RNG states included) and drop later metrics rows."""
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt.state.step > cfg.trainer.steps:
        raise ConfigError(f"trainer.steps={cfg.trainer.steps} is below the step of {ckpt.path} "
                          f"({ckpt.state.step}); set trainer.steps >= {ckpt.state.step}")
    state = apply_checkpoint(ckpt, policy, optimizer, schedule, sampler, cfg.ppo.lr)
    discard_newer(run_dir / "checkpoints", ckpt)
    truncate_metrics(run_dir / "metrics.jsonl", state.step)  # rows logged after the checkpoint
    log.info("resuming %s from %s", run_dir, ckpt.path)
    return state, ckpt.path


def train(cfg: Config, run_dir: Path) -> dict:
    """Run PPO as configured, writing ``metrics.jsonl`` and checkpoints into ``run_dir``; returns the summary.

    With ``cfg.resume`` set, continue from the newest valid checkpoint in ``run_dir/checkpoints``.
    Raises :class:`RunStopped` after a signal (checkpoint written) or a non-finite loss.
    """
    run_dir = Path(run_dir)
    task = build_task(cfg.dataset)
    lm, tokenizer = load_policy(cfg.model, cfg.dataset)
    prepare_task(task, tokenizer, cfg.model)
    seed_everything(cfg.seed)  # after the (cached or not) warm start, so both paths match
    policy = PolicyWithValue(lm, with_value=cfg.ppo.advantage == "gae")
    reference = PolicyWithValue(frozen_reference(lm), with_value=False) if cfg.ppo.kl_coef > 0 else None
    engine = RolloutEngine(lm, tokenizer, task, cfg.rollout.temperature, cfg.rollout.top_p,
                           cfg.rollout.batch_size, stop=cfg.rollout.stop)
    eval_engine = RolloutEngine(lm, tokenizer, task, cfg.rollout.temperature, cfg.rollout.top_p, cfg.eval.batch_size,
                                stop=cfg.rollout.stop)
    k = cfg.trainer.rollouts_per_question
    sampler = build_sampler(cfg.sampler, task.train, cfg.trainer.batch_size, k, cfg.seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.ppo.lr, eps=1e-5)
    warmup = max(1, cfg.ppo.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    held_out = task.test[: cfg.eval.limit] if cfg.eval.limit else task.test
    checkpoints = run_dir / "checkpoints"
    state, last_checkpoint = TrainState(), None
    if cfg.resume:  # the reference above stays the starting policy; the checkpoint replaces the rest
        state, last_checkpoint = resume(cfg, run_dir, policy, optimizer, schedule, sampler)
    logger = MetricsLogger(run_dir, cfg.run_name, cfg.to_dict(), cfg.logger.wandb, wandb_id=state.wandb_id)
    state.wandb_id = logger.run_id
    acc_key = f"eval/{task.name}/accuracy"
    start = time.perf_counter() - state.elapsed_s

    def run_eval(step: int) -> dict[str, float]:
        t = time.perf_counter()
        result = evaluate(eval_engine, held_out, task.name, cfg.dataset.grader, cfg.eval.samples, cfg.eval.pass_k)
        state.history.append((step, result.metrics[acc_key]))
        return {**result.metrics, "perf/eval_s": time.perf_counter() - t}

    def save_checkpoint() -> Path:
        state.elapsed_s = time.perf_counter() - start
        return write_checkpoint(checkpoints, state.step, policy, tokenizer, optimizer, schedule, sampler, state,
                                cfg.trainer.keep_checkpoints)

    progress = TrainProgress(cfg.trainer.steps, enabled=cfg.logger.progress)
    progress.update(state.step, {}, acc_key)
    try:
        with GracefulStop() as stop:
            if last_checkpoint is None:  # a new run: evaluate the starting policy
                row = {"step": 0, **state.totals, **run_eval(0), "time/elapsed_s": time.perf_counter() - start}
                logger.log(row)
                progress.update(0, row, acc_key)
            for step in range(state.step + 1, cfg.trainer.steps + 1):
                t_step = time.perf_counter()
                engine.reset_counters()

                # 1. select: the sampler may roll out candidates itself (screening)
                t = time.perf_counter()
                selection = sampler.next_batch(step, engine.rollout)
                # 2. roll out: questions the sampler handed back without rollouts
                groups = selection.rollouts or engine.rollout(selection.problems, k)
                select_s = time.perf_counter() - t
                # 3. grade: done by the engine; flatten question by question (K consecutive answers each)
                rollouts = [r for group in groups for r in group]
                batch = collate(rollouts, tokenizer.pad_token_id, lm.device)

                # 4. advantages, from one no-grad pass of the current (= old) policy and the reference
                t = time.perf_counter()
                micro = cfg.ppo.micro_batch_size
                with torch.no_grad():
                    old_logp, old_values = score_batch(policy, batch, cfg.rollout.temperature, micro)
                    adv, returns = compute_advantages(cfg.ppo, batch, old_values, k)
                    if step == cfg.trainer.debug_nan_step:  # testing aid: a non-finite loss on purpose
                        adv = adv * math.nan
                    old = {"logp": old_logp, "adv": adv}
                    if old_values is not None:
                        old.update(values=old_values, returns=returns)
                    if reference is not None:
                        old["ref_logp"] = score_batch(reference, batch, cfg.rollout.temperature, micro)[0]
                advantage_s = time.perf_counter() - t

                # 5. update
                t = time.perf_counter()
                try:
                    update_stats = ppo_update(policy, optimizer, cfg.ppo, batch, old, cfg.rollout.temperature)
                except NonFiniteError as e:
                    raise RunStopped(
                        f"non-finite loss or gradient norm at step {step} ({e}); last good checkpoint: "
                        f"{last_checkpoint or 'none'}; ppo.skip_nonfinite=true skips such updates", 1) from None
                update_stats["ppo/lr"] = schedule.get_last_lr()[0]
                schedule.step()
                update_s = time.perf_counter() - t

                # 6. log / evaluate / checkpoint
                spent = engine.reset_counters()
                state.step = step
                state.totals["counts/rollouts_total"] += spent.rollouts
                state.totals["counts/tokens_generated_total"] += spent.tokens
                mask = batch["completion_mask"]
                row = {
                    "step": step, **state.totals,
                    "train/reward_mean": batch["rewards"].mean().item(),
                    "train/answer_tokens_mean": mask.sum(1).mean().item(),
                    "train/truncated_frac": float(np.mean([r.truncated for r in rollouts])),
                    **selection.stats, **update_stats,
                    "perf/select_s": select_s - spent.generate_s - spent.grade_s,
                    "perf/rollout_s": spent.generate_s, "perf/grade_s": spent.grade_s,
                    "perf/advantage_s": advantage_s, "perf/update_s": update_s,
                    "perf/tokens_per_s": spent.tokens / max(spent.generate_s, 1e-9),
                }
                if step % cfg.trainer.eval_every == 0 or step == cfg.trainer.steps:
                    row.update(run_eval(step))
                row["perf/step_s"] = time.perf_counter() - t_step
                row["time/elapsed_s"] = time.perf_counter() - start
                logger.log(row)
                progress.update(step, row, acc_key)
                stopping = stop.signum is not None and step < cfg.trainer.steps
                if step % cfg.trainer.checkpoint_every == 0 or stopping:
                    last_checkpoint = save_checkpoint()
                if stopping:
                    raise RunStopped(f"interrupted at step {step}; resume with: lrn train resume={run_dir}",
                                     128 + stop.signum)
            if last_checkpoint is None or last_checkpoint.name != f"step_{state.step}":
                last_checkpoint = save_checkpoint()  # the end of the run
        lm.save_pretrained(run_dir / "model")  # the final policy, loadable like any Hub model
        tokenizer.save_pretrained(run_dir / "model")
    finally:
        progress.close()
        logger.close()
    history = state.history
    summary = {
        "run_dir": str(run_dir), "steps": cfg.trainer.steps, "sampler": cfg.sampler.name, "seed": cfg.seed,
        "accuracy_start": history[0][1], "accuracy_final": history[-1][1],
        "accuracy_best": max(a for _, a in history), "best_step": max(history, key=lambda h: h[1])[0],
        **state.totals, "wall_s": time.perf_counter() - start, "metric": acc_key,
    }
    if cfg.logger.progress:
        print_summary(summary)
    return summary
