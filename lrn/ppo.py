"""PPO maths as small pure tensor functions: advantages, losses and diagnostics.

Shapes: B sequences, T completion tokens; ``mask`` is 1.0 on real completion tokens. Losses are
token-level means over the mask (every answer token weighs the same).
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked entries (population std); masked-out entries become 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(token) for each position: logits [B, T, V], tokens [B, T] -> [B, T]."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position: [B, T, V] -> [B, T]."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def group_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Reward minus the mean reward of the same question's K answers (GRPO/RLOO-style baseline).

    ``rewards`` is [N*K], grouped question by question; a group whose answers all score the same
    gets advantage 0: it carries no learning signal.
    """
    grouped = rewards.view(-1, k)
    return (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)


def terminal_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place each sequence's scalar reward on its last completion token: [B] -> [B, T]."""
    last = (mask.sum(1).long() - 1).clamp(min=0)
    out = torch.zeros_like(mask)
    out[torch.arange(mask.shape[0]), last] = rewards
    return out * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over completion tokens (Schulman et al. 2016).

    delta_t = r_t + gamma * V_{t+1} - V_t, with V = 0 after the last token;
    A_t = delta_t + gamma * lam * A_{t+1}. Returns (advantages, returns = advantages + values).
    """
    values = values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = adv * m
        next_value = torch.where(m > 0, values[:, t], next_value)
        next_adv = torch.where(m > 0, adv, next_adv)
    return advantages, advantages + values


def tis_weights(old_logp: torch.Tensor, engine_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Token-level truncated importance weights min(pi_old / pi_engine, cap), detached (Yao et al. 2025,
    "Your efficient RL framework secretly brings you off-policy RL training"; verl, TRL): the engine
    sampled from pi_engine, the PPO ratio is taken against the trainer's pi_old.

    >>> tis_weights(torch.tensor([0.0, -1.0]), torch.tensor([-1.0, 0.0]), 2.0)
    tensor([2.0000, 0.3679])
    """
    return (old_logp - engine_logp).exp().clamp(max=cap).detach()


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped-ratio surrogate: mean of max(-A r, -A clip(r, 1-eps, 1+eps)), each token's term times
    ``weights`` when given (truncated importance sampling, :func:`tis_weights`).

    Also returns clipfrac (share of tokens where clipping was active) and approx_kl, the
    low-variance estimator mean((r - 1) - log r) of KL(old || new).
    """
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    terms = torch.maximum(unclipped, clipped)
    loss = masked_mean(terms if weights is None else terms * weights, mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean((ratio - 1) - log_ratio, mask),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> torch.Tensor:
    """0.5 * max((V - R)^2, (V_clipped - R)^2), V clipped to old_values +- clip (0 disables clipping)."""
    loss = (values - returns) ** 2
    if clip > 0:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


def kl_to_reference(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || ref): mean(exp(ref - logp) - (ref - logp) - 1), unbiased and >= 0."""
    d = ref_logp - logp
    return masked_mean(d.exp() - d - 1, mask)
