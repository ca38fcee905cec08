"""Hugging Face ``generate`` as a rollout engine: batched, KV-cached, on the policy's own weights.

Every call builds a fresh :class:`GenerationConfig` from the :class:`SamplingSpec` and hides the
checkpoint's own ``generation_config`` for its duration, so nothing a checkpoint carries (repetition
penalty, n-gram blocking, minimum length, a default top-k of 50) shapes the answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from lrn.engines.base import Generation, SamplingSpec, finish


def generation_config(spec: SamplingSpec, pad_id: int) -> GenerationConfig:
    """The whole generation config, every field that changes the distribution set explicitly."""
    sampling = {} if spec.greedy else {"temperature": spec.temperature, "top_p": spec.top_p, "top_k": spec.top_k}
    return GenerationConfig(
        do_sample=not spec.greedy, max_new_tokens=spec.max_new_tokens, min_length=0,
        num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0,
        length_penalty=1.0, bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None,
        pad_token_id=pad_id, eos_token_id=list(spec.eos_ids), bos_token_id=None,
        stop_strings=list(spec.stop) or None, **sampling,
    )


@contextlib.contextmanager
def _own_generation_config(model: PreTrainedModel) -> Iterator[None]:
    """Hide the checkpoint's ``generation_config`` (``generate`` fills unset fields from it)."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the HF model
    saved = target.generation_config
    target.generation_config = GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved


class HFEngine:
    """Samples with the trainable model itself (``compute`` is the policy's autocast context)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 1024,
                 compute: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.model, self.tokenizer, self.batch_size, self.compute = model, tokenizer, batch_size, compute

    def sync_weights(self) -> None:
        """Nothing to do: generation runs on the trained weights."""

    def sleep(self) -> None:
        """Nothing to release: the engine is the policy."""

    def close(self) -> None:
        """Nothing to free: the policy belongs to the trainer."""

    @torch.no_grad()
    def generate(self, prompts: Sequence[list[int]], spec: SamplingSpec,
                 on_batch: Callable[[int], None] | None = None, logprobs: bool = False) -> list[Generation]:
        """Answers in the order of ``prompts``, ``batch_size`` sequences per ``generate``; ``logprobs`` is
        ignored (the trainer scores the answers itself)."""
        pad = self.tokenizer.pad_token_id
        config = generation_config(spec, pad)
        extra = {"tokenizer": self.tokenizer} if spec.stop else {}
        was_training = self.model.training
        self.model.eval()
        out: list[Generation] = []
        try:
            with _own_generation_config(self.model), self.compute():
                for start in range(0, len(prompts), self.batch_size):
                    chunk = prompts[start:start + self.batch_size]
                    width = max(len(p) for p in chunk)
                    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in chunk], device=self.model.device)
                    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk],
                                        device=self.model.device)
                    # synced_gpus=False: transformers would keep FSDP ranks in lock-step (one all-reduce per
                    # token); lrn generates from whole gathered weights, each rank its own share (`compute`)
                    seqs = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                               synced_gpus=False, **extra)
                    for prompt, seq in zip(chunk, seqs[:, width:].tolist(), strict=True):
                        out.append(Generation(list(prompt), *finish(seq, spec, self.tokenizer.decode)))
                    if on_batch is not None:
                        on_batch(len(chunk))
        finally:
            self.model.train(was_training)
        return out
