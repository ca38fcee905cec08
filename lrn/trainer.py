"""The PPO loop. One iteration ("a training step", the unit every curve is plotted against):

1. select      the sampler picks this step's questions (learnability screens a pool with rollouts)
2. roll out    K answers for each picked question that has none yet
3. grade       the task's verifier scores each answer (inside the rollout engine)
4. advantages  group baseline or GAE with the value head, scaled to unit std
5. update      clipped-ratio PPO over epochs x mini-batches (+ value loss, KL to reference, entropy)
6. log / eval  metrics every step, held-out greedy accuracy every ``eval_every`` steps
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch

from lrn import ppo
from lrn.config import Config, PPOConfig
from lrn.evaluate import evaluate
from lrn.logger import MetricsLogger
from lrn.models import PolicyWithValue, frozen_reference, load_policy
from lrn.progress import TrainProgress, print_summary
from lrn.rollout import RolloutEngine, collate
from lrn.samplers import build_sampler
from lrn.tasks import build_task


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


def ppo_update(policy: PolicyWithValue, optimizer: torch.optim.Optimizer, cfg: PPOConfig, batch: dict,
               old: dict[str, torch.Tensor], temperature: float = 1.0) -> dict[str, float]:
    """Epochs x mini-batches of clipped PPO; returns the mean of each loss and diagnostic."""
    n = batch["input_ids"].shape[0]
    size = max(1, n // cfg.minibatches)
    sums: dict[str, float] = {}
    updates = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(n)
        for start in range(0, n - size + 1, size):
            idx = order[start:start + size].to(batch["input_ids"].device)
            mb = {k: v[idx] if v.dim() > 0 else v for k, v in batch.items()}
            mask = mb["completion_mask"]
            logits, values = policy(mb["input_ids"], mb["attention_mask"])
            logp, logits, values = completion_view(mb, logits, values, temperature)
            pg_loss, stats = ppo.policy_loss(logp, old["logp"][idx], old["adv"][idx], mask, cfg.clip)
            ent = ppo.masked_mean(ppo.entropy(logits), mask)
            loss = pg_loss - cfg.ent_coef * ent
            parts = {"loss/policy": pg_loss.item(), "ppo/entropy": ent.item(),
                     "ppo/clipfrac": stats["clipfrac"].item(), "ppo/approx_kl": stats["approx_kl"].item()}
            if values is not None:
                v_loss = ppo.value_loss(values, old["values"][idx], old["returns"][idx], mask, cfg.value_clip)
                loss = loss + cfg.vf_coef * v_loss
                parts["loss/value"] = v_loss.item()
            if "ref_logp" in old:
                kl = ppo.kl_to_reference(logp, old["ref_logp"][idx], mask)
                loss = loss + cfg.kl_coef * kl
                parts["ppo/kl"] = kl.item()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            parts["ppo/grad_norm"] = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm).item()
            optimizer.step()
            parts["loss/total"] = loss.item()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
            updates += 1
    return {key: value / updates for key, value in sums.items()}


def train(cfg: Config, run_dir: Path) -> dict:
    """Run PPO as configured, writing ``metrics.jsonl`` into ``run_dir``; returns the summary."""
    run_dir = Path(run_dir)
    task = build_task(cfg.dataset)
    lm, tokenizer = load_policy(cfg.model, cfg.dataset)
    seed_everything(cfg.seed)  # after the (cached or not) warm start, so both paths match
    policy = PolicyWithValue(lm, with_value=cfg.ppo.advantage == "gae")
    reference = PolicyWithValue(frozen_reference(lm), with_value=False) if cfg.ppo.kl_coef > 0 else None
    engine = RolloutEngine(lm, tokenizer, task, cfg.rollout.temperature, cfg.rollout.top_p,
                           cfg.rollout.batch_size)
    eval_engine = RolloutEngine(lm, tokenizer, task, cfg.rollout.temperature, cfg.rollout.top_p, cfg.eval.batch_size)
    k = cfg.trainer.rollouts_per_question
    sampler = build_sampler(cfg.sampler, task.train, cfg.trainer.batch_size, k, cfg.seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.ppo.lr, eps=1e-5)
    held_out = task.test[: cfg.eval.limit] if cfg.eval.limit else task.test
    logger = MetricsLogger(run_dir, cfg.run_name, cfg.to_dict(), cfg.logger.wandb)
    totals = {"counts/rollouts_total": 0, "counts/tokens_generated_total": 0}
    acc_key = f"eval/{task.name}/accuracy"
    history: list[tuple[int, float]] = []
    start = time.perf_counter()

    def run_eval(step: int) -> dict[str, float]:
        t = time.perf_counter()
        result = evaluate(eval_engine, held_out, task.name, cfg.dataset.grader, cfg.eval.samples, cfg.eval.pass_k)
        history.append((step, result.metrics[acc_key]))
        return {**result.metrics, "perf/eval_s": time.perf_counter() - t}

    progress = TrainProgress(cfg.trainer.steps, enabled=cfg.logger.progress)
    try:
        row = {"step": 0, **totals, **run_eval(0), "time/elapsed_s": time.perf_counter() - start}
        logger.log(row)
        progress.update(0, row, acc_key)
        for step in range(1, cfg.trainer.steps + 1):
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
            with torch.no_grad():
                logits, values = policy(batch["input_ids"], batch["attention_mask"])
                old_logp, _, old_values = completion_view(batch, logits, values, cfg.rollout.temperature)
                adv, returns = compute_advantages(cfg.ppo, batch, old_values, k)
                old = {"logp": old_logp, "adv": adv}
                if old_values is not None:
                    old.update(values=old_values, returns=returns)
                if reference is not None:
                    ref_logits, _ = reference(batch["input_ids"], batch["attention_mask"])
                    old["ref_logp"] = completion_view(batch, ref_logits, None, cfg.rollout.temperature)[0]
            advantage_s = time.perf_counter() - t

            # 5. update
            t = time.perf_counter()
            update_stats = ppo_update(policy, optimizer, cfg.ppo, batch, old, cfg.rollout.temperature)
            sampler.observe(selection)
            update_s = time.perf_counter() - t

            # 6. log / evaluate
            spent = engine.reset_counters()
            totals["counts/rollouts_total"] += spent.rollouts
            totals["counts/tokens_generated_total"] += spent.tokens
            mask = batch["completion_mask"]
            row = {
                "step": step, **totals,
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
        lm.save_pretrained(run_dir / "model")  # the final policy, loadable like any Hub model
        tokenizer.save_pretrained(run_dir / "model")
    finally:
        progress.close()
        logger.close()
    summary = {
        "run_dir": str(run_dir), "steps": cfg.trainer.steps, "sampler": cfg.sampler.name, "seed": cfg.seed,
        "accuracy_start": history[0][1], "accuracy_final": history[-1][1],
        "accuracy_best": max(a for _, a in history), "best_step": max(history, key=lambda h: h[1])[0],
        **totals, "wall_s": time.perf_counter() - start, "metric": acc_key,
    }
    if cfg.logger.progress:
        print_summary(summary)
    return summary
