"""Rollouts: generate K answers per problem with an engine (``lrn/engines/``) and grade them.

Rollouts are kept per sample as token-id lists, so a sampler can pick any subset of them and the
trainer re-collates that subset into a :class:`lrn.batch.PPOBatch`. Old log-probabilities are
computed by the trainer from the same :class:`SamplingSpec`, whatever engine generated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedTokenizerBase

from lrn import distributed
from lrn.engines import Engine, SamplingSpec, derive_seed
from lrn.grading import GradePool
from lrn.tasks import Problem, Task


@dataclass
class Rollout:
    """One sampled answer to one problem, graded (``engine_logprobs``: the engine's own, if it gives them)."""

    problem: Problem
    prompt_ids: list[int]
    completion_ids: list[int]  # ends with EOS unless truncated or ended by a stop string
    text: str
    reward: float
    truncated: bool
    engine_logprobs: list[float] | None = None


RolloutFn = Callable[[list[Problem], int], list[list[Rollout]]]


def prompt_ids(task: Task, tokenizer: PreTrainedTokenizerBase, problems: list[Problem]) -> list[list[int]]:
    """The token ids an engine is given for each problem: the task's rendered prompt, tokenised."""
    texts = [task.prompt(p) for p in problems]
    return tokenizer(texts, add_special_tokens=task.special_tokens)["input_ids"] if texts else []


def longest_prompt(task: Task, tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens in the longest prompt of the task's training pool and held-out set (what
    ``rollout.vllm.max_model_len=auto`` adds ``dataset.max_new_tokens`` to)."""
    return max((len(ids) for ids in prompt_ids(task, tokenizer, [*task.train, *task.test])), default=0)


@dataclass
class EngineCounters:
    """What the engine has spent; the trainer reads and resets these every step."""

    rollouts: int = 0
    tokens: int = 0
    generate_s: float = 0.0
    grade_s: float = 0.0


class RolloutEngine:
    """Samples K answers per problem with ``engine`` under ``spec`` and grades them with ``grader``.

    Grading goes through ``grading`` (:class:`GradePool`: worker processes for math-verify). Truncated
    answers score 0 without being graded.
    """

    def __init__(self, engine: Engine, tokenizer: PreTrainedTokenizerBase, task: Task, spec: SamplingSpec,
                 grading: GradePool, on_batch: Callable[[int], None] | None = None):
        self.engine, self.tokenizer, self.task, self.spec, self.grading = engine, tokenizer, task, spec, grading
        self.on_batch = on_batch  # called with the number of sequences after each generated batch
        self.counters = EngineCounters()
        # seed of engines that take one (vLLM): each call samples under a spec seed derived from
        # (seed, step, call within the step, rank), so a resumed run draws what an uninterrupted one did
        self.seed: int | None = None
        self.step = self._calls = 0
        self.logprobs = False  # ask the engine for its log-probs of sampled tokens (Rollout.engine_logprobs)

    def start_step(self, step: int, logprobs: bool = False) -> None:
        """Calls from now on belong to training step ``step`` (seeding) and ask for the engine's
        log-probs when ``logprobs`` (``ppo.tis_cap`` needs them; the ``rollout/logprob_diff`` metric is due)."""
        self.step, self._calls, self.logprobs = step, 0, logprobs

    def rollout(self, problems: list[Problem], k: int, greedy: bool = False, count: bool = True
                ) -> list[list[Rollout]]:
        """K graded rollouts per problem (the ``rollout_fn`` samplers receive).

        ``count`` adds them to the training compute counters; evaluation passes False.
        """
        t0 = time.perf_counter()
        tok = self.tokenizer
        prompts = [ids for ids in prompt_ids(self.task, tok, problems) for _ in range(k)]
        spec = self.spec.as_greedy() if greedy else self.spec
        if self.seed is not None and prompts:  # a call without prompts draws nothing, and counts as none
            spec = replace(spec, seed=derive_seed(self.seed, self.step, self._calls, distributed.rank()))
            self._calls += 1
        generated = self.engine.generate(prompts, spec, self.on_batch, logprobs=self.logprobs and not greedy)
        t1 = time.perf_counter()
        answers = [tok.decode(g.completion_ids, skip_special_tokens=True) for g in generated]
        ended = [i for i, g in enumerate(generated) if not g.truncated]
        rewards = [0.0] * len(generated)
        graded = self.grading.grade([answers[i] for i in ended], [problems[i // k].answer for i in ended])
        for i, reward in zip(ended, graded, strict=True):
            rewards[i] = reward
        flat = [Rollout(problems[i // k], g.prompt_ids, g.completion_ids, answers[i], rewards[i], g.truncated,
                        g.logprobs) for i, g in enumerate(generated)]
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


class ShardedRollouts:
    """``engine`` across ranks: each rank rolls out its contiguous share of the problems and the groups are
    all-gathered back in order, so every rank (and every sampler) sees all of them.

    Each rank generates from its own torch RNG stream, seeded from (``seed``..., rank, call), inside
    ``fork_rng``: the global torch RNG (mini-batch order) stays identical on all ranks, and a resumed
    run re-derives the streams without per-rank state. ``engine.counters`` count this rank's share.
    """

    def __init__(self, engine: RolloutEngine, seed: tuple[int, ...]):
        self.engine, self.task, self.seed, self.calls = engine, engine.task, seed, 0

    def rollout(self, problems: list[Problem], k: int, greedy: bool = False, count: bool = True
                ) -> list[list[Rollout]]:
        self.calls += 1
        mine = list(distributed.shard(problems))
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derive_seed(*self.seed, distributed.rank(), self.calls))
            # an empty share too: generating from a sharded policy (trainer.strategy=fsdp) first gathers
            # its weights, a collective every rank must join
            groups = self.engine.rollout(mine, k, greedy, count)
        return distributed.gather_shards(groups)


def sharded(engine: RolloutEngine, *seed: int) -> RolloutEngine | ShardedRollouts:
    """``engine`` itself in a single process; else its :class:`ShardedRollouts` seeded from ``seed``."""
    return ShardedRollouts(engine, seed) if distributed.active() else engine
