"""The rollout engine: batched sampling (KV-cached ``generate``) and grading of answers.

Rollouts are kept per sample as token-id lists, so a sampler can pick any subset of them and the
trainer re-collates that subset into tensors (:func:`collate`). Old log-probabilities are computed
by the trainer, not here, so any engine that returns token ids (vLLM too) fits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lrn.tasks import Problem, Task


@dataclass
class Rollout:
    """One sampled answer to one problem, graded."""

    problem: Problem
    prompt_ids: list[int]
    completion_ids: list[int]  # ends with EOS unless truncated
    text: str
    reward: float
    truncated: bool


RolloutFn = Callable[[list[Problem], int], list[list[Rollout]]]


@dataclass
class EngineCounters:
    """What the engine has spent; the trainer reads and resets these every step."""

    rollouts: int = 0
    tokens: int = 0
    generate_s: float = 0.0
    grade_s: float = 0.0


class RolloutEngine:
    """Samples K answers per problem from a Hugging Face causal LM and grades them."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task,
                 temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 1024,
                 on_batch: Callable[[int], None] | None = None, stop: list[str] | None = None):
        from lrn.models import eos_ids

        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.temperature, self.top_p, self.batch_size = temperature, top_p, batch_size
        self.on_batch = on_batch  # called with the number of sequences after each generated batch
        self.stop = list(stop or [])
        self.eos = eos_ids(model, tokenizer)
        self.counters = EngineCounters()

    @torch.no_grad()
    def generate(self, prompts: list[str], greedy: bool = False) -> list[tuple[list[int], list[int], bool]]:
        """(prompt ids, completion ids, truncated) for each prompt, in order."""
        tok, pad = self.tokenizer, self.tokenizer.pad_token_id
        was_training = self.model.training
        self.model.eval()
        out: list[tuple[list[int], list[int], bool]] = []
        stopping = {"stop_strings": self.stop, "tokenizer": tok} if self.stop else {}
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start:start + self.batch_size]
            enc = tok(chunk, return_tensors="pt", padding=True,
                      add_special_tokens=self.task.special_tokens).to(self.model.device)
            sampling = {} if greedy else {"temperature": self.temperature, "top_p": self.top_p, "top_k": 0}
            seqs = self.model.generate(
                **enc, do_sample=not greedy, max_new_tokens=self.task.max_new_tokens,
                pad_token_id=pad, eos_token_id=self.eos, **stopping, **sampling,
            )
            width = enc["input_ids"].shape[1]
            for row, mask, seq in zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist(),
                                      seqs[:, width:].tolist(), strict=True):
                prompt_ids = [t for t, m in zip(row, mask, strict=True) if m]
                out.append((prompt_ids, *self.finish(seq)))
            if self.on_batch is not None:
                self.on_batch(len(chunk))
        self.model.train(was_training)
        return out

    def finish(self, seq: list[int]) -> tuple[list[int], bool]:
        """(completion ids, truncated): cut after the first EOS, else after the first stop string."""
        ends = [i for i, t in enumerate(seq) if t in self.eos]
        if ends:
            return seq[: ends[0] + 1], False
        if self.stop and any(s in self.tokenizer.decode(seq) for s in self.stop):
            lo, hi = 1, len(seq)  # the shortest prefix whose text holds a stop string
            while lo < hi:
                mid = (lo + hi) // 2
                if any(s in self.tokenizer.decode(seq[:mid]) for s in self.stop):
                    hi = mid
                else:
                    lo = mid + 1
            return seq[:lo], False
        return seq, True

    def rollout(self, problems: list[Problem], k: int, greedy: bool = False, count: bool = True
                ) -> list[list[Rollout]]:
        """K graded rollouts per problem (the ``rollout_fn`` samplers receive).

        ``count`` adds them to the training compute counters; evaluation passes False.
        """
        t0 = time.perf_counter()
        prompts = [self.task.prompt(p) for p in problems for _ in range(k)]
        generated = self.generate(prompts, greedy=greedy)
        t1 = time.perf_counter()
        flat = []
        for i, (prompt_ids, completion, truncated) in enumerate(generated):
            problem = problems[i // k]
            text = self.tokenizer.decode(completion, skip_special_tokens=True)
            reward = 0.0 if truncated else self.task.grade(text, problem.answer)
            flat.append(Rollout(problem, prompt_ids, completion, text, reward, truncated))
        t2 = time.perf_counter()
        if count:
            self._count(flat, t1 - t0, t2 - t1)
        return [flat[i * k:(i + 1) * k] for i in range(len(problems))]

    def _count(self, flat: list[Rollout], generate_s: float, grade_s: float) -> None:
        c = self.counters
        c.rollouts += len(flat)
        c.tokens += sum(len(r.completion_ids) for r in flat)
        c.generate_s += generate_s
        c.grade_s += grade_s

    def reset_counters(self) -> EngineCounters:
        counters, self.counters = self.counters, EngineCounters()
        return counters


def collate(rollouts: list[Rollout], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Left-padded prompts followed by right-padded completions, as one batch.

    Returns input_ids and attention_mask [B, P+C], completion_mask [B, C] (1 on generated tokens)
    and rewards [B]; logits at positions P-1 .. P+C-2 predict the completion tokens.
    """
    p_len = max(len(r.prompt_ids) for r in rollouts)
    c_len = max(len(r.completion_ids) for r in rollouts)
    ids, attn, cmask = [], [], []
    for r in rollouts:
        lp, lc = len(r.prompt_ids), len(r.completion_ids)
        ids.append([pad_id] * (p_len - lp) + r.prompt_ids + r.completion_ids + [pad_id] * (c_len - lc))
        attn.append([0] * (p_len - lp) + [1] * (lp + lc) + [0] * (c_len - lc))
        cmask.append([1] * lc + [0] * (c_len - lc))
    return {
        "input_ids": torch.tensor(ids, device=device),
        "attention_mask": torch.tensor(attn, device=device),
        "completion_mask": torch.tensor(cmask, device=device, dtype=torch.float32),
        "rewards": torch.tensor([r.reward for r in rollouts], device=device, dtype=torch.float32),
        "prompt_len": torch.tensor(p_len),
    }
