"""Prompt features for samplers that predict before they generate (``sampler=predictive``).

The trainer builds one :func:`prompt_features` callable and hands it to every sampler (those that do not
predict ignore it). A call is one no-grad, prompt-only forward of the policy's transformer (``policy.body``,
the output layer left out) in the compute dtype: the final hidden state at each prompt's last token.
Prompts are left-padded, so that token is at position -1 of every row; positions come from the
attention mask, as in the policy's own forward, so padding does not change a row's features.

Under several processes each rank computes its contiguous share of the prompts and the rows are
all-gathered: every rank then holds the same numbers (rank r's rows are rank r's computation, on every
rank), at a world-th of the cost.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from lrn import distributed
from lrn.policy import Policy
from lrn.rollout import prompt_ids
from lrn.tasks import Problem, Task


@torch.no_grad()
def last_prompt_states(policy: Policy, ids: list[list[int]], pad_id: int, batch_size: int) -> np.ndarray:
    """[n, hidden] float32: each prompt's final hidden state at its last token, ``batch_size`` prompts per forward."""
    width = policy.body.config.hidden_size
    out = [np.zeros((0, width), np.float32)]
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        longest = max(len(p) for p in chunk)
        input_ids = torch.tensor([[pad_id] * (longest - len(p)) + list(p) for p in chunk], device=policy.device)
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in chunk], device=policy.device)
        with policy.autocast():
            hidden = policy.body(input_ids=input_ids, attention_mask=mask,
                                 position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False).last_hidden_state
        out.append(hidden[:, -1].float().cpu().numpy())
    return np.concatenate(out)


def prompt_features(policy: Policy, tokenizer, task: Task, batch_size: int) -> Callable[[list[Problem]], np.ndarray]:
    """``features(problems) -> [n, hidden]``: the same array on every rank (sharded, then gathered)."""

    def features(problems: list[Problem]) -> np.ndarray:
        mine = list(distributed.shard(problems))
        rows = last_prompt_states(policy, prompt_ids(task, tokenizer, mine), tokenizer.pad_token_id, batch_size)
        return np.concatenate(distributed.gather_shards([rows]))

    return features
