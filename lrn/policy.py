"""The trainable policy: fp32 master weights, compute-dtype autocast, completion-only log-probs.

- **Precision**: parameters (and so Adam's state) stay in float32; forward and backward run under
  ``torch.autocast`` in the compute dtype (``model.dtype``: bf16 on a capable GPU with ``auto``).
  Updating bf16 weights in place would round most lr-1e-6 steps away.
- **Memory**: the output layer runs only on answer tokens, in chunks of at most ``CHUNK_ELEMENTS``
  logits; with gradients each chunk is recomputed in the backward pass, so no [B, T, V] tensor of
  logits ever exists. Entropy is computed without gradient unless its coefficient needs one.
- **Scoring = sampling**: log-probs are those of the distribution the engine sampled from, the same
  :func:`process_logits` (temperature, top-k, top-p) applied to the logits.
- **Modes**: dropout is switched off for good (as RL trainers do: the ratio needs the scoring
  function) and the model stays in train mode, so gradient checkpointing acts; engines switch to eval
  mode only while they generate.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lrn.batch import PPOBatch
from lrn.engines import SamplingSpec
from lrn.validation import ConfigError

CHUNK_ELEMENTS = 2**25  # logits per chunk of the output layer: 128 MB in float32


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """``model.dtype`` as the compute dtype: ``auto`` is bf16 on a GPU that has it, else float32."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if name == "float16":
        raise ConfigError("model.dtype=float16: training in float16 needs loss scaling, which lrn does not do; "
                          "use model.dtype=bfloat16 (or float32)")
    return getattr(torch, name)


def disable_dropout(model: nn.Module) -> None:
    """Zero every dropout (LoRA's included): PPO's ratio compares the update's forward with scoring's."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def process_logits(logits: torch.Tensor, spec: SamplingSpec, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The logits an engine samples from: divided by the temperature, then top-k, then top-p masked to
    -inf (Hugging Face's and vLLM's order; top-p keeps the smallest head of mass >= top_p, at least one
    token). ``keep`` [N] token ids are never masked: a sampled token was inside the sampler's mask,
    and under an updated policy it must keep a finite log-prob."""
    if spec.greedy:
        return logits
    logits = logits / spec.temperature
    if not spec.filtered:
        return logits
    remove = torch.zeros_like(logits, dtype=torch.bool)
    if 0 < spec.top_k < logits.shape[-1]:
        kth = torch.topk(logits, spec.top_k, dim=-1).values[..., -1:]
        remove |= logits < kth
    if spec.top_p < 1.0:
        sorted_logits, order = torch.sort(logits.masked_fill(remove, -torch.inf), dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative <= 1.0 - spec.top_p
        drop[..., -1] = False
        remove |= torch.zeros_like(remove).scatter(-1, order, drop)
    if keep is not None:
        remove[torch.arange(len(keep), device=keep.device), keep] = False
    return logits.masked_fill(remove, -torch.inf)


def _token_scores(head: nn.Module, hidden: torch.Tensor, tokens: torch.Tensor, spec: SamplingSpec,
                  entropy_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of ``tokens``, entropy) for hidden states [N, H]: float32 [N] each."""
    logp_all = process_logits(head(hidden).float(), spec, keep=tokens).log_softmax(-1)
    logp = logp_all.gather(-1, tokens[:, None]).squeeze(-1)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        finite = torch.where(torch.isfinite(logp_all), logp_all, 0.0)
        entropy = -(finite.exp() * finite).sum(-1)
    return logp, entropy


class Policy(nn.Module):
    """A causal LM (fp32 master weights) with an optional scalar value head on its last hidden state."""

    def __init__(self, lm: nn.Module, with_value: bool, dtype: torch.dtype = torch.float32,
                 reference: bool = False):
        super().__init__()
        self.lm = lm.float()
        self.dtype = dtype
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # peft wraps the HF model
        if getattr(base.config, "final_logit_softcapping", None) or getattr(base.config, "logit_scale", None):
            raise ConfigError(f"model.name_or_path: {type(base).__name__} post-processes its logits "
                              "(softcapping / scaling), which lrn's completion-only scoring does not apply")
        disable_dropout(lm)
        lm.train()
        self.value_head = nn.Linear(base.config.hidden_size, 1) if with_value else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
            self.value_head.to(device=self.device)
        self._frozen = None  # the KL reference: LoRA switches its adapters off instead of copying
        if reference and not hasattr(lm, "disable_adapter"):
            frozen = Policy(copy.deepcopy(lm).requires_grad_(False), with_value=False, dtype=dtype)
            object.__setattr__(self, "_frozen", frozen)  # not a submodule: the optimizer must not see it

    @property
    def body(self) -> nn.Module:
        """The transformer without its output layer (with LoRA: the adapted one)."""
        return (self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm).get_decoder()

    @property
    def head(self) -> nn.Module:
        return (self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm).get_output_embeddings()

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def autocast(self) -> contextlib.AbstractContextManager:
        """The compute-dtype context every forward (and generation) runs in."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def forward(self, batch: PPOBatch, spec: SamplingSpec, entropy_grad: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(log-probs, entropies, values), each [B, C] float32 and zero off the answer tokens."""
        with self.autocast():
            position_ids = (batch.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            hidden = self.body(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               position_ids=position_ids, use_cache=False).last_hidden_state
            p, c = batch.prompt_len, batch.completion_mask.shape[1]
            hidden = hidden[:, p - 1:p + c - 1]  # the positions that predict answer tokens
            where = batch.completion_mask.bool()
            h, tokens = hidden[where], batch.input_ids[:, p:p + c][where]
            chunk = max(1, CHUNK_ELEMENTS // self.head.weight.shape[0])
            logps, ents = [], []
            for start in range(0, len(tokens), chunk):
                args = (self.head, h[start:start + chunk], tokens[start:start + chunk], spec, entropy_grad)
                if torch.is_grad_enabled():
                    lp, ent = checkpoint(_token_scores, *args, use_reentrant=False)
                else:
                    lp, ent = _token_scores(*args)
                logps.append(lp)
                ents.append(ent)
            values = None
            if self.value_head is not None:
                values = self.value_head(hidden).squeeze(-1).float() * batch.completion_mask
        logp = torch.zeros_like(batch.completion_mask).masked_scatter(where, torch.cat(logps))
        ent = torch.zeros_like(batch.completion_mask).masked_scatter(where, torch.cat(ents))
        return logp, ent, values

    @contextlib.contextmanager
    def reference(self):
        """The frozen starting policy for the KL penalty (build with ``reference=True``): LoRA's base
        model with the adapters off, no copy; otherwise the deep copy made at construction."""
        if hasattr(self.lm, "disable_adapter"):
            with self.lm.disable_adapter():
                yield self
        elif self._frozen is None:
            raise RuntimeError("this Policy was built without reference=True")
        else:
            yield self._frozen

    @torch.no_grad()
    def score(self, batch: PPOBatch, spec: SamplingSpec, chunk: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Answer-token log-probs [B, C] (and values) in no-grad passes of ``chunk`` sequences."""
        n = batch.input_ids.shape[0]
        chunk = chunk or n
        logps, values = [], []
        for start in range(0, n, chunk):
            logp, _, v = self(batch.rows(torch.arange(start, min(n, start + chunk))), spec)
            logps.append(logp)
            values.append(v)
        return torch.cat(logps), (torch.cat(values) if values[0] is not None else None)
