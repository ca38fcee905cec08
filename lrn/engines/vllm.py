"""vLLM as a rollout engine, colocated: one ``vllm.LLM`` in each training process, on that process's device.

- **Built from the policy's weights**: the engine starts from the model's config and tokenizer with
  dummy weights, then receives the policy's whole ``state_dict`` (``reload_weights``), so it generates
  from exactly the weights being trained, whatever checkpoint they came from.
- **One engine per rank** under ``torchrun`` / ``accelerate launch``: vLLM's ``external_launcher``
  executor (its torchrun-colocated mode) builds the engine on ``LOCAL_RANK``'s device inside the
  launcher's process group; with tensor_parallel_size=1 each rank is an independent engine (vLLM's
  "external data parallel") that generates its own share of the prompts. vLLM's default single-process
  executor would take local rank 0, i.e. put every rank's engine on GPU 0.
- **Weight sync** (:meth:`VLLMEngine.sync_weights`, after every optimizer update): the *whole* state
  dict is pushed (a partial push corrupts vLLM's fused q/k/v and gate/up layers; ``named_parameters``
  misses a tied ``lm_head``), then the prefix cache is reset (its KV blocks were computed by the old
  weights). LoRA: each adapted weight merged out of place (the model is untouched), pushed under
  the base model's names. A sharded policy (``trainer.strategy=fsdp``) is gathered one tensor at a
  time while vLLM reads them.
- **Sleep during the update** (:meth:`VLLMEngine.sleep`, where the build has sleep mode): level 2
  drops the KV cache and the weights (every sync pushes all of them anyway); the next sync wakes the
  weights, pushes, then wakes the KV cache.
- **Same distribution**: only the spec's settings (``generation_config="vllm"`` ignores the checkpoint's),
  only ``spec.eos_ids`` stop (``ignore_eos``), and the same :func:`lrn.engines.finish` as Hugging Face,
  so a :class:`Generation` means the same with either engine. Log-probs (when asked for) are vLLM's
  *processed* ones: ``log_softmax`` of the temperature/top-k/top-p processed logits, what
  :func:`lrn.policy.process_logits` scores.
- **Fast requests**: one ``generate`` call per rollout phase (vLLM batches by itself), the K answers
  to a question one request with ``n=K``, no per-request seeds (vLLM samples rows with their own
  generator one by one), no detokenisation without stop strings.
- **Reproducible**: each call seeds the engine's global RNG (CPU, and the current CUDA device) from
  ``spec.seed`` and starts from an empty prefix cache; in one process vLLM's scheduling is
  deterministic, so the same requests on the same weights draw the same answers, in a fresh engine
  (a resumed run) as in a used one. Every call restores the caller's Python / NumPy / torch RNGs.
- **Lifetime**: :meth:`VLLMEngine.close` shuts the engine down and frees its memory (the trainer calls
  it when a run ends, however it ends), so a Hydra sweep running jobs in one process does not pile
  up engines.

Needs ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (set here before vLLM is imported): the engine core runs in
this process, so ``collective_rpc`` hands the worker a live iterator of the policy's tensors.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lrn import distributed
from lrn.engines.base import Generation, SamplingSpec, finish
from lrn.validation import ConfigError

if TYPE_CHECKING:
    from lrn.config import VLLMConfig

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # read when vLLM builds an engine
CPU_KV_CACHE_BYTES = 256 << 20  # kv_cache_memory when unset on CPU (vLLM's GPU sizing does not apply there)
SLEEP_LEVEL = 2  # drop weights and KV cache: sync_weights pushes every weight after waking
log = logging.getLogger(__name__)


def _cuda_devices() -> list[int]:
    """The CUDA device this process samples on (vLLM's worker sets it to LOCAL_RANK's), if any."""
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []


@contextlib.contextmanager
def _own_rng() -> Iterator[None]:
    """Run vLLM without touching the caller's Python / NumPy / torch (CPU and current CUDA device) RNG states."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=_cuda_devices()):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def _seed_sampler(seed: int) -> None:
    """Seed the generators vLLM's sampler draws from for requests without their own seed: the CPU one
    (CPU build) and the current CUDA device's (the other devices are other ranks' business)."""
    torch.random.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed(seed)


def sleep_enabled(setting: bool | str) -> bool:
    """``rollout.vllm.sleep`` resolved: ``auto`` is on where this vLLM build has sleep mode (CUDA, ROCm);
    ``true`` on a build without it is a :class:`ConfigError`."""
    if setting is False:
        return False
    from vllm.platforms import current_platform

    available = current_platform.is_sleep_mode_available()
    if setting is True and not available:
        raise ConfigError(f"rollout.vllm.sleep=true: this vLLM build ({current_platform.device_name}) has no "
                          "sleep mode (CUDA and ROCm builds do); set rollout.vllm.sleep=auto or false")
    return available


def _base_model(model: PreTrainedModel) -> PreTrainedModel:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def full_state_dict(model: PreTrainedModel) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the model under the base model's names, as Hugging Face saves them; with peft
    adapters, each adapted weight merged out of place (base + delta, one layer at a time in float32) and
    the adapter tensors left out. The model itself is never modified: merging into a bf16 base and
    unmerging again would leave rounding residue in the frozen weights after every push.

    A sharded model (``trainer.strategy=fsdp``) is gathered one tensor at a time as the engine reads the
    iterator (an all-gather each, in the same order on every rank): no rank ever holds more than one
    whole weight beyond its shards."""
    from lrn.sharding import full

    if not hasattr(model, "get_base_model"):
        for name, tensor in model.state_dict().items():
            yield name, full(tensor)
        return
    from peft.tuners.lora import LoraLayer

    adapted = {f"{name}.base_layer.weight": module for name, module in model.named_modules()
               if isinstance(module, LoraLayer) and not module.merged and not module.disable_adapters}
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            continue
        tensor = full(tensor)
        layer = adapted.get(name)
        if layer is not None:
            tensor = tensor.float() + sum(_delta_weight(layer, a) for a in layer.active_adapters if a in layer.lora_A)
        yield name.removeprefix("base_model.model.").replace(".base_layer.", "."), tensor


def _delta_weight(layer, adapter: str) -> torch.Tensor:
    """A plain LoRA layer's B @ A x scaling in float32 (peft's ``get_delta_weight``, what lrn's LoRA config
    makes), from whole A and B when they are shards."""
    from torch.distributed.tensor import DTensor

    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    if not isinstance(a, DTensor):
        return layer.get_delta_weight(adapter).float()
    delta = b.full_tensor().float() @ a.full_tensor().float()
    return (delta.T if layer.fan_in_fan_out else delta) * layer.scaling[adapter]


class VLLMEngine:
    """Samples with a colocated ``vllm.LLM`` that mirrors ``model``'s weights (call :meth:`sync_weights`
    after each update, :meth:`close` at the end).

    ``max_model_len``: the context length to use when ``settings.max_model_len`` is ``auto`` (the caller
    knows the prompts: the longest one + the answer budget); capped at the model's own limit.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: VLLMConfig,
                 compute_dtype: torch.dtype, seed: int = 0, max_model_len: int | None = None):
        if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
            raise RuntimeError("rollout.engine=vllm needs VLLM_ENABLE_V1_MULTIPROCESSING=0 (the engine runs "
                               "in the training process, where it can read the policy's weights)")
        from vllm import LLM

        self.model, self.tokenizer = model, tokenizer
        self.llm = None
        base = _base_model(model)
        on_cpu = base.device.type == "cpu"
        self.sleeps = sleep_enabled(settings.sleep)
        self.asleep = False
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
            enable_sleep_mode=self.sleeps,
        )
        if distributed.active():  # torchrun / accelerate: this rank's engine on this rank's device
            kwargs.update(distributed_executor_backend="external_launcher", tensor_parallel_size=1)
        if kv is not None:
            kwargs["kv_cache_memory_bytes"] = kv
        if settings.max_num_batched_tokens is not None:
            kwargs["max_num_batched_tokens"] = settings.max_num_batched_tokens
        length = self._context_length(settings.max_model_len, max_model_len, base.config)
        if length is not None:
            kwargs["max_model_len"] = length
        with _own_rng():
            self.llm = LLM(**kwargs)
        config = self.llm.llm_engine.vllm_config
        log.info("vLLM engine: executor %s, max_model_len %d, sleep mode %s",
                 config.parallel_config.distributed_executor_backend, config.model_config.max_model_len,
                 "on" if self.sleeps else "off")
        self.sync_weights()

    @staticmethod
    def _context_length(setting: int | str | None, auto: int | None, config) -> int | None:
        """``rollout.vllm.max_model_len`` as vLLM takes it (None: the model's own limit)."""
        length = auto if setting == "auto" else setting
        limit = getattr(config, "max_position_embeddings", None)
        if setting == "auto" and length is not None and limit is not None and length > limit:
            log.warning("rollout.vllm.max_model_len=auto: the longest prompt + answer (%d tokens) exceeds the "
                        "model's max_position_embeddings (%d); using %d", length, limit, limit)
            length = limit
        return length

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Push the policy's whole current state dict into the engine (waking it first if it sleeps), then
        drop its stale prefix cache.

        A failed push can leave the engine's weights half-replaced, so it raises rather than going on.
        """
        try:
            with _own_rng():
                if self.asleep:  # weights first: the KV cache is not needed for the push
                    if torch.cuda.is_available():  # what the update cached goes back to the driver, for vLLM
                        torch.cuda.empty_cache()
                    self.llm.wake_up(tags=["weights"])
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": full_state_dict(self.model)})
                if self.asleep:
                    self.llm.wake_up(tags=["kv_cache"])
                    self.asleep = False
                self.llm.reset_prefix_cache()
        except Exception as e:
            raise RuntimeError(f"pushing the policy's weights into vLLM failed ({type(e).__name__}: {e}); "
                               "the engine's weights may be partly replaced, so the run stops") from e

    def sleep(self) -> None:
        """Release the engine's KV cache and weights until the next :meth:`sync_weights` (a no-op where
        sleep mode is off). The update then has that memory."""
        if self.sleeps and not self.asleep:
            self.llm.sleep(level=SLEEP_LEVEL)
            self.asleep = True

    def close(self) -> None:
        """Shut the engine down and free its memory (idempotent).

        vLLM's shutdown also destroys the default torch process group, so under a launcher this must be
        the rank's last collective step (the trainer calls it as the run ends).
        """
        if self.llm is None:
            return
        llm, self.llm = self.llm, None
        try:
            llm.llm_engine.engine_core.shutdown()
        finally:
            del llm
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._dir.cleanup()

    def _params(self, spec: SamplingSpec, n: int, logprobs: bool):
        from vllm import SamplingParams

        sampling = ({"temperature": 0.0} if spec.greedy else
                    {"temperature": spec.temperature, "top_p": spec.top_p, "top_k": spec.top_k})
        return SamplingParams(
            n=n, max_tokens=spec.max_new_tokens, stop=list(spec.stop) or None, stop_token_ids=list(spec.eos_ids),
            ignore_eos=True, include_stop_str_in_output=True, skip_special_tokens=False,
            detokenize=bool(spec.stop),  # vLLM needs text only to find stop strings; finish() works on ids
            logprobs=0 if logprobs and not spec.greedy else None, **sampling)

    def generate(self, prompts: Sequence[list[int]], spec: SamplingSpec,
                 on_batch: Callable[[int], None] | None = None, logprobs: bool = False) -> list[Generation]:
        """Answers in the order of ``prompts``, from one ``generate`` call; runs of identical consecutive
        prompts (the K answers to a question) become one request with ``n`` samples. ``logprobs``: also
        return each sampled token's log-prob (sampling only)."""
        groups: list[tuple[list[int], int]] = []
        for p in prompts:
            if groups and groups[-1][0] == list(p):
                groups[-1] = (groups[-1][0], groups[-1][1] + 1)
            else:
                groups.append((list(p), 1))
        if self.asleep:  # before returning on no prompts: a sharded policy's push is a collective of all ranks
            self.sync_weights()
        if not groups:
            return []
        params = {n: self._params(spec, n, logprobs) for n in {n for _, n in groups}}
        with _own_rng():
            if spec.seed is not None:
                _seed_sampler(spec.seed)
            self.llm.reset_prefix_cache()  # every call starts from the same engine state
            results = self.llm.generate([{"prompt_token_ids": p} for p, _ in groups], [params[n] for _, n in groups],
                                        use_tqdm=False)
        out: list[Generation] = []
        for (prompt, _), result in zip(groups, results, strict=True):
            for completion in result.outputs:
                ids, truncated = finish(list(completion.token_ids), spec, self.tokenizer.decode)
                scores = None
                if completion.logprobs is not None:
                    scores = [completion.logprobs[i][t].logprob for i, t in enumerate(ids)]
                out.append(Generation(prompt, ids, truncated, scores))
        if on_batch is not None:
            on_batch(len(prompts))
        return out
