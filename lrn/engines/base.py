"""What every rollout engine shares: the sampling spec, the generation record, the engine protocol.

A :class:`SamplingSpec` is the one place that defines the sampling distribution. Engines generate with
it and with nothing else (no setting is inherited from a checkpoint's ``generation_config``), and the
policy scores with the same logit processing (:func:`lrn.policy.process_logits`), so the trainer's old
log-probs are the sampler's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol


def derive_seed(*keys: int) -> int:
    """A 31-bit seed (what vLLM's requests take) derived from integers, e.g. (run seed, step, call, rank):
    the same on every machine and in every process."""
    import numpy as np

    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0] & 0x7FFFFFFF)


@dataclass(frozen=True)
class SamplingSpec:
    """Everything that shapes an answer's distribution and its end.

    ``top_k=0`` and ``top_p=1`` switch those filters off; ``greedy`` takes the arg-max (the filters and
    temperature are then irrelevant). An answer ends at any of ``eos_ids`` (kept, it was sampled) or
    at a ``stop`` string (kept up to the token that completes it), else after ``max_new_tokens``
    (truncated). ``seed`` makes a call's draws reproducible in an engine that takes one (vLLM seeds its
    sampler once per call with it).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    stop: tuple[str, ...] = ()
    eos_ids: tuple[int, ...] = ()
    seed: int | None = None

    @classmethod
    def from_config(cls, rollout, max_new_tokens: int, eos_ids: Sequence[int]) -> SamplingSpec:
        """The spec of ``rollout.*`` (a :class:`lrn.config.RolloutConfig`) for a task and a tokenizer."""
        return cls(max_new_tokens=max_new_tokens, temperature=rollout.temperature, top_p=rollout.top_p,
                   top_k=rollout.top_k, stop=tuple(rollout.stop), eos_ids=tuple(eos_ids))

    def as_greedy(self) -> SamplingSpec:
        return replace(self, greedy=True)

    @property
    def filtered(self) -> bool:
        """Whether top-k / top-p truncate the distribution (scoring must then apply the same mask)."""
        return not self.greedy and (self.top_k > 0 or self.top_p < 1.0)


@dataclass
class Generation:
    """One generated answer: token ids of prompt and completion, whether it ran out of tokens, and the
    engine's own log-probs of the sampled tokens when it reports them (vLLM; None for HF)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    truncated: bool
    logprobs: list[float] | None = None


class Engine(Protocol):
    """Generates answers to tokenised prompts; ``on_batch(n)`` is called after each batch of n sequences.

    ``logprobs``: also report the engine's log-prob of each sampled token, where the engine has them
    (vLLM); an engine may skip computing them otherwise.
    """

    def generate(self, prompts: Sequence[list[int]], spec: SamplingSpec,
                 on_batch: Callable[[int], None] | None = None, logprobs: bool = False) -> list[Generation]: ...

    def sync_weights(self) -> None:
        """Make the engine generate from the policy's current weights (a no-op where it shares them)."""

    def sleep(self) -> None:
        """Release what the engine can until the next :meth:`sync_weights` (the update needs the memory)."""

    def close(self) -> None:
        """Free everything the engine holds; the run is over."""


def finish(seq: list[int], spec: SamplingSpec, decode: Callable[[list[int]], str]) -> tuple[list[int], bool]:
    """(completion ids, truncated) of a raw generated sequence, padding included.

    The answer ends at the first EOS id (kept) or, before it, at the shortest prefix whose text holds a
    stop string. Stop strings are searched only before the first EOS: a sequence stopped by a string
    is padded afterwards, and where the pad id is also an EOS id (Qwen's ``<|endoftext|>``), that pad
    was never sampled and must not become part of the answer.
    """
    eos = set(spec.eos_ids)
    first_eos = next((i for i, t in enumerate(seq) if t in eos), None)
    body = seq if first_eos is None else seq[:first_eos]
    if spec.stop and any(s in decode(body) for s in spec.stop):
        lo, hi = 1, len(body)  # the shortest prefix whose text holds a stop string
        while lo < hi:
            mid = (lo + hi) // 2
            if any(s in decode(body[:mid]) for s in spec.stop):
                hi = mid
            else:
                lo = mid + 1
        return body[:lo], False
    if first_eos is not None:
        return seq[:first_eos + 1], False
    return seq, True
