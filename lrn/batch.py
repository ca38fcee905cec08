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

    def prompt_lengths(self) -> torch.Tensor:
        """Real (unpadded) prompt tokens per row, [B]."""
        return self.attention_mask[:, :self.prompt_len].sum(1)

    def answer_lengths(self) -> torch.Tensor:
        """Answer tokens per row, [B]."""
        return self.completion_mask.sum(1).long()

    def trimmed(self) -> PPOBatch:
        """The same rows no wider than their own longest prompt and longest answer: the padding columns
        that every row of this batch has (left of the prompts, right of the answers) are cut off.
        Positions come from the attention mask, so the model computes the same values on the rest."""
        p = max(int(self.prompt_lengths().max()), 1)
        c = max(int(self.answer_lengths().max()), 1)
        left = self.prompt_len - p
        fields = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, torch.Tensor) or value.dim() < 2:
                continue
            if f.name in ("input_ids", "attention_mask"):
                fields[f.name] = value[:, left:self.prompt_len + c]
            else:  # [B, C] answer-token fields
                fields[f.name] = value[:, :c]
        return dataclasses.replace(self, prompt_len=p, **fields)

    def micro_batches(self, idx: torch.Tensor, max_rows: int | None = None, max_tokens: int | None = None
                      ) -> list[tuple[torch.Tensor, PPOBatch]]:
        """Rows ``idx`` as micro-batches, each :meth:`trimmed` to its own widths: (row indices, sub-batch).

        Rows are grouped by length (sorted by prompt, then answer length) and packed greedily while a
        micro-batch has at most ``max_rows`` rows and rows x (longest prompt + longest answer) stays within
        ``max_tokens``; a row longer than the budget gets a micro-batch of its own. Neither limit: one
        micro-batch. Which rows share a micro-batch changes nothing beyond float rounding.
        """
        if len(idx) == 0:
            return []
        device = self.input_ids.device
        prompts = self.prompt_lengths()[idx.to(device)].tolist()
        answers = self.answer_lengths()[idx.to(device)].tolist()
        order = sorted(range(len(idx)), key=lambda i: (prompts[i], answers[i]))
        groups: list[list[int]] = []
        p_max = c_max = 0
        for i in order:
            p, c = max(p_max, prompts[i]), max(c_max, answers[i])
            if not groups or (max_rows is not None and len(groups[-1]) >= max_rows) or \
                    (max_tokens is not None and (len(groups[-1]) + 1) * (p + c) > max_tokens):
                groups.append([])
                p, c = prompts[i], answers[i]
            groups[-1].append(i)
            p_max, c_max = p, c
        parts = [idx[torch.tensor(g)] for g in groups]
        return [(part, self.rows(part).trimmed()) for part in parts]


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
