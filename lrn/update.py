"""Phases 4 and 5 of a training step: advantages, and the clipped-ratio PPO update on a :class:`PPOBatch`."""

from __future__ import annotations

import contextlib
import math

import torch

from lrn import distributed, ppo, sharding
from lrn.batch import PPOBatch
from lrn.config import PPOConfig
from lrn.engines import SamplingSpec
from lrn.policy import Policy


class NonFiniteError(ArithmeticError):
    """A mini-batch produced a non-finite loss or gradient norm (and ``ppo.skip_nonfinite`` is off)."""


def compute_advantages(cfg: PPOConfig, batch: PPOBatch, values: torch.Tensor | None, k: int
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token advantages [B, C] (and returns for the value loss, GAE only)."""
    mask = batch.completion_mask
    if cfg.advantage == "group":
        adv = ppo.group_advantages(batch.rewards, k)
        if cfg.whiten:  # scale only: a zero-signal group must keep advantage exactly 0
            adv = adv / (adv.std(unbiased=False) + 1e-8)
        return adv[:, None] * mask, None
    rewards = ppo.terminal_rewards(batch.rewards, mask)
    adv, returns = ppo.gae(rewards, values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten:
        adv = ppo.masked_whiten(adv, mask)
    return adv, returns


def prepare(policy: Policy, cfg: PPOConfig, batch: PPOBatch, spec: SamplingSpec, k: int) -> None:
    """Fill ``batch``'s old log-probs, values, advantages and (with a KL term) reference log-probs from
    no-grad passes of the current (= old) policy, in micro-batches as the update makes them.

    Under several processes each rank scores its contiguous share of the rows and the shares are
    summed across ranks (every entry has exactly one non-zero contribution, so the sum is exact); every
    rank then computes the advantages of the whole batch (whole groups, whole-batch whitening).
    """
    mine = torch.as_tensor(distributed.shard(range(len(batch))), dtype=torch.long)
    logp, values = policy.score(batch, spec, cfg.micro_batch_size, cfg.micro_batch_tokens, rows=mine)
    batch.old_logp = distributed.sum_tensor(logp)
    batch.old_values = distributed.sum_tensor(values) if values is not None else None
    batch.advantages, batch.returns = compute_advantages(cfg, batch, batch.old_values, k)
    if cfg.kl_coef > 0:
        with policy.reference() as reference:
            ref = reference.score(batch, spec, cfg.micro_batch_size, cfg.micro_batch_tokens, rows=mine)[0]
        batch.ref_logp = distributed.sum_tensor(ref)


def engine_gap(batch: PPOBatch) -> dict[str, float]:
    """``rollout/logprob_diff``: mean |engine - trainer| old log-prob over answer tokens (engines that
    report log-probs only; the trainer's are the ones PPO uses)."""
    if batch.engine_logp is None or batch.old_logp is None:
        return {}
    gap = (batch.engine_logp - batch.old_logp).abs()
    return {"rollout/logprob_diff": ppo.masked_mean(gap, batch.completion_mask).item()}


def micro_loss(model: torch.nn.Module, mb: PPOBatch, cfg: PPOConfig, spec: SamplingSpec
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO loss of one micro-batch (token means over its answer tokens) and its logged terms."""
    mask = mb.completion_mask
    logp, entropy, values = model(mb, spec, entropy_grad=cfg.ent_coef > 0)
    tis = None
    if cfg.tis_cap is not None and mb.engine_logp is not None:
        tis = ppo.tis_weights(mb.old_logp, mb.engine_logp, cfg.tis_cap)
    pg_loss, stats = ppo.policy_loss(logp, mb.old_logp, mb.advantages, mask, cfg.clip, tis)
    ent = ppo.masked_mean(entropy, mask)
    loss = pg_loss - cfg.ent_coef * ent if cfg.ent_coef > 0 else pg_loss
    terms = {"loss/policy": pg_loss, "ppo/entropy": ent, "ppo/clipfrac": stats["clipfrac"],
             "ppo/approx_kl": stats["approx_kl"]}
    if values is not None:
        v_loss = ppo.value_loss(values, mb.old_values, mb.returns, mask, cfg.value_clip)
        loss = loss + cfg.vf_coef * v_loss
        terms["loss/value"] = v_loss
    if mb.ref_logp is not None:
        kl = ppo.kl_to_reference(logp, mb.ref_logp, mask)
        loss = loss + cfg.kl_coef * kl
        terms["ppo/kl"] = kl
    terms["loss/total"] = loss
    return loss, terms


def ppo_update(policy: Policy, optimizer: torch.optim.Optimizer, cfg: PPOConfig, batch: PPOBatch,
               spec: SamplingSpec) -> dict[str, float]:
    """Epochs x mini-batches of clipped PPO; returns the mean of each loss and diagnostic.

    Each mini-batch is split into micro-batches (``ppo.micro_batch_size`` rows, ``ppo.micro_batch_tokens``
    tokens; length-grouped, each as wide as its own rows) whose gradients are accumulated; each
    micro-batch's token-mean losses are weighted by its share of the mini-batch's answer tokens, so the
    update equals the unsplit one (up to float rounding) in less memory.
    A non-finite loss or gradient norm raises :class:`NonFiniteError`, or with ``cfg.skip_nonfinite``
    skips that mini-batch's update (counted in ``ppo/skipped_updates``, left out of the means).
    Under several processes the policy runs inside torch's DistributedDataParallel: each rank takes its
    contiguous share of every mini-batch, weighted by its tokens over the mini-batch's, micro-batches
    before the last skip the gradient sync (``no_sync``), and the last one's backward sums the gradients
    across ranks in buckets, overlapped with the backward pass (``distributed.data_parallel``).
    Sharded with FSDP (``trainer.strategy=fsdp``), every micro-batch's backward reduce-scatters (sums) its
    gradients into each rank's float32 shard: accumulating unsharded gradients between micro-batches
    would hold a whole float32 gradient on every rank, which sharding is there to avoid. Clipping uses
    the global norm over all shards.
    """
    model = distributed.data_parallel(policy)
    sharded = sharding.is_sharded(policy)
    n = len(batch)
    size = max(1, n // cfg.minibatches)
    sums: dict[str, float] = {}
    updates = skipped = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(n)  # the same on every rank: the global torch RNG is kept in step
        for start in range(0, n - size + 1, size):
            idx = order[start:start + size]
            tokens = batch.completion_mask[idx.to(batch.completion_mask.device)].sum().clamp(min=1.0)
            mine = torch.as_tensor(distributed.shard(idx))  # this rank's rows; weights stay relative to all `tokens`
            micros = [(mb, mb.completion_mask.sum() / tokens)
                      for _, mb in batch.micro_batches(mine, cfg.micro_batch_size, cfg.micro_batch_tokens)]
            weightless = (batch.rows(idx[:1]).trimmed(), torch.zeros(()))
            if sharded:  # as many passes on every rank: each all-gathers the blocks and reduce-scatters
                micros = sharding.pad(micros, weightless)
            elif not micros:  # no row of this mini-batch here: a weightless pass, so that the ranks' syncs match
                micros = [weightless]
            optimizer.zero_grad(set_to_none=True)
            parts: dict[str, float] = {}
            for j, (mb, weight) in enumerate(micros):
                with distributed.no_sync(model) if j < len(micros) - 1 else contextlib.nullcontext():
                    loss, terms = micro_loss(model, mb, cfg, spec)
                    (loss * weight.to(loss.device)).backward()  # a non-finite loss too: every rank must sync
                for key, value in terms.items():
                    parts[key] = parts.get(key, 0.0) + (value.detach() * weight.to(value.device)).item()
            parts = distributed.sum_values(parts)  # the whole mini-batch's values, the same on every rank
            grad_norm = sharding.full(torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)).item()
            if not (math.isfinite(grad_norm) and math.isfinite(parts["loss/total"])):
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
