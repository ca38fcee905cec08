"""vLLM as a rollout engine, colocated: one ``vllm.LLM`` in the training process, on the training device.

- **Built from the policy's weights**: the engine starts from the model's config and tokenizer with
  dummy weights, then receives the policy's whole ``state_dict`` (``reload_weights``), so it generates
  from exactly the weights being trained, whatever checkpoint they came from.
- **Weight sync** (:meth:`VLLMEngine.sync_weights`, after every optimizer update): the *whole* state
  dict is pushed (a partial push corrupts vLLM's fused q/k/v and gate/up layers; ``named_parameters``
  misses a tied ``lm_head``), then the prefix cache is reset (its KV blocks were computed by the old
  weights). LoRA: adapters merged, pushed under the base model's names, unmerged.
- **Same distribution**: only the spec's settings (``generation_config="vllm"`` ignores the checkpoint's),
  only ``spec.eos_ids`` stop (``ignore_eos``), and the same :func:`lrn.engines.finish` as Hugging Face,
  so a :class:`Generation` means the same with either engine. Log-probs are vLLM's *processed* ones:
  ``log_softmax`` of the temperature/top-k/top-p processed logits, what :func:`lrn.policy.process_logits`
  scores.
- **Reproducible**: K answers to a question are one request with ``n=K`` and its own seed, derived from
  ``spec.seed`` and the question's place in the call. vLLM re-seeds and draws from the caller's global
  RNGs (Python, NumPy, torch); every call into it restores them, so the trainer's streams are untouched.

Needs ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (set here before vLLM is imported): the engine core runs in
this process, so ``collective_rpc`` hands the worker a live iterator of the policy's tensors.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lrn.engines.base import Generation, SamplingSpec, derive_seed, finish

if TYPE_CHECKING:
    from lrn.config import VLLMConfig

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # read when vLLM builds an engine
CPU_KV_CACHE_BYTES = 256 << 20  # kv_cache_memory when unset on CPU (vLLM's GPU sizing does not apply there)


@contextlib.contextmanager
def _own_rng() -> Iterator[None]:
    """Run vLLM without touching the caller's Python / NumPy / torch (CPU and CUDA) RNG states."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def _base_model(model: PreTrainedModel) -> PreTrainedModel:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def full_state_dict(model: PreTrainedModel) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the (LoRA-merged) model under the base model's names, as Hugging Face saves them.

    With peft adapters the caller must have merged them (``merge_adapter``); adapter tensors are left out.
    """
    if not hasattr(model, "get_base_model"):
        yield from model.state_dict().items()
        return
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            continue
        yield name.removeprefix("base_model.model.").replace(".base_layer.", "."), tensor


class VLLMEngine:
    """Samples with a colocated ``vllm.LLM`` that mirrors ``model``'s weights (call :meth:`sync_weights`
    after each update)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: VLLMConfig,
                 compute_dtype: torch.dtype, seed: int = 0, batch_size: int = 1024):
        if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
            raise RuntimeError("rollout.engine=vllm needs VLLM_ENABLE_V1_MULTIPROCESSING=0 (the engine runs "
                               "in the training process, where it can read the policy's weights)")
        from vllm import LLM

        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        base = _base_model(model)
        on_cpu = base.device.type == "cpu"
        dtype = settings.dtype if settings.dtype != "auto" else str(compute_dtype).removeprefix("torch.")
        # the model's config and tokenizer only: the weights come from the policy (sync_weights below)
        self._dir = tempfile.TemporaryDirectory(prefix="lrn-vllm-")
        base.config.save_pretrained(self._dir.name)
        tokenizer.save_pretrained(self._dir.name)
        kv = settings.kv_cache_memory or (CPU_KV_CACHE_BYTES if on_cpu else None)
        kwargs = dict(
            model=self._dir.name, load_format="dummy", dtype=dtype, seed=seed,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            enforce_eager=on_cpu if settings.enforce_eager is None else settings.enforce_eager,
            generation_config="vllm", logprobs_mode="processed_logprobs", disable_log_stats=True,
        )
        if kv is not None:
            kwargs["kv_cache_memory_bytes"] = kv
        for key in ("max_num_batched_tokens", "max_model_len"):
            if getattr(settings, key) is not None:
                kwargs[key] = getattr(settings, key)
        with _own_rng():
            self.llm = LLM(**kwargs)
        self.sync_weights()

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Push the policy's whole current state dict into the engine, then drop its stale prefix cache.

        A failed push can leave the engine's weights half-replaced, so it raises rather than going on.
        """
        lora = hasattr(self.model, "merge_adapter")
        if lora:
            self.model.merge_adapter()
        try:
            with _own_rng():
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": full_state_dict(self.model)})
                self.llm.reset_prefix_cache()
        except Exception as e:
            raise RuntimeError(f"pushing the policy's weights into vLLM failed ({type(e).__name__}: {e}); "
                               "the engine's weights may be partly replaced, so the run stops") from e
        finally:
            if lora:
                self.model.unmerge_adapter()

    def _params(self, spec: SamplingSpec, n: int, seed: int | None):
        from vllm import SamplingParams

        sampling = ({"temperature": 0.0} if spec.greedy else
                    {"temperature": spec.temperature, "top_p": spec.top_p, "top_k": spec.top_k, "seed": seed})
        return SamplingParams(
            n=n, max_tokens=spec.max_new_tokens, stop=list(spec.stop) or None, stop_token_ids=list(spec.eos_ids),
            ignore_eos=True, include_stop_str_in_output=True, skip_special_tokens=False,
            logprobs=None if spec.greedy else 0, **sampling)

    def generate(self, prompts: Sequence[list[int]], spec: SamplingSpec,
                 on_batch: Callable[[int], None] | None = None) -> list[Generation]:
        """Answers in the order of ``prompts``; runs of identical consecutive prompts (the K answers to a
        question) become one request with ``n`` samples and the question's own seed."""
        groups: list[tuple[list[int], int]] = []
        for p in prompts:
            if groups and groups[-1][0] == list(p):
                groups[-1] = (groups[-1][0], groups[-1][1] + 1)
            else:
                groups.append((list(p), 1))
        out: list[Generation] = []
        start = 0
        while start < len(groups):  # batches of whole questions, about batch_size sequences each
            stop, size = start, 0
            while stop < len(groups) and (size == 0 or size + groups[stop][1] <= self.batch_size):
                size += groups[stop][1]
                stop += 1
            chunk = groups[start:stop]
            params = [self._params(spec, n, None if spec.seed is None else derive_seed(spec.seed, start + i))
                      for i, (_, n) in enumerate(chunk)]
            with _own_rng():
                results = self.llm.generate([{"prompt_token_ids": p} for p, _ in chunk], params, use_tqdm=False)
            for (prompt, _), result in zip(chunk, results, strict=True):
                for completion in result.outputs:
                    ids, truncated = finish(list(completion.token_ids), spec, self.tokenizer.decode)
                    logprobs = None
                    if completion.logprobs is not None:
                        logprobs = [completion.logprobs[i][t].logprob for i, t in enumerate(ids)]
                    out.append(Generation(prompt, ids, truncated, logprobs))
            if on_batch is not None:
                on_batch(size)
            start = stop
        return out
