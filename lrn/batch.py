"""The typed PPO batch: one step's chosen rollouts as tensors, and what the trainer adds to them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from lrn.rollout import Rollout


@dataclass
class PPOBatch:
    """Left-padded prompts followed by right-padded answers, B rows.

    ``input_ids``/``attention_mask`` are [B, P+C]; ``completion_mask`` [B, C] is 1.0 on answer tokens;
    hidden states at positions P-1 .. P+C-2 predict the answer tokens. The trainer fills the fields
    after ``prompt_len`` (old log-probs, advantages, ...) before the update.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    rewards: torch.Tensor
    prompt_len: int
    old_logp: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    engine_logp: torch.Tensor | None = None  # the rollout engine's own log-probs (vLLM), [B, C]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, idx: torch.Tensor) -> PPOBatch:
        """The sub-batch of rows ``idx`` (same padding widths)."""
        idx = idx.to(self.input_ids.device)
        return dataclasses.replace(self, **{
            f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)})


def collate(rollouts: list[Rollout], pad_id: int, device: torch.device) -> PPOBatch:
    """Rollouts as one :class:`PPOBatch` (prompts left-padded, answers right-padded with ``pad_id``)."""
    p_len = max(len(r.prompt_ids) for r in rollouts)
    c_len = max(len(r.completion_ids) for r in rollouts)
    ids, attn, cmask = [], [], []
    for r in rollouts:
        lp, lc = len(r.prompt_ids), len(r.completion_ids)
        ids.append([pad_id] * (p_len - lp) + r.prompt_ids + r.completion_ids + [pad_id] * (c_len - lc))
        attn.append([0] * (p_len - lp) + [1] * (lp + lc) + [0] * (c_len - lc))
        cmask.append([1] * lc + [0] * (c_len - lc))
    engine_logp = None
    if all(r.engine_logprobs is not None for r in rollouts):
        engine_logp = torch.tensor([r.engine_logprobs + [0.0] * (c_len - len(r.engine_logprobs)) for r in rollouts],
                                   device=device, dtype=torch.float32)
    return PPOBatch(
        input_ids=torch.tensor(ids, device=device), attention_mask=torch.tensor(attn, device=device),
        completion_mask=torch.tensor(cmask, device=device, dtype=torch.float32),
        rewards=torch.tensor([r.reward for r in rollouts], device=device, dtype=torch.float32), prompt_len=p_len,
        engine_logp=engine_logp,
    )
