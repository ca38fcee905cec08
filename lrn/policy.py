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

from lrn import sharding
from lrn.batch import PPOBatch
from lrn.engines import SamplingSpec
from lrn.validation import ConfigError

CHUNK_ELEMENTS = 2**25  # logits per chunk of the output layer: 128 MB in float32
TOP_P_CANDIDATES = 256  # top-p looks for the nucleus among this many most likely tokens before sorting a row
TOP_P_MARGIN = 1e-5  # a cumulative mass this close to top_p is left to the sort (float sums may differ there)


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
        remove |= nucleus_mask(logits.masked_fill(remove, -torch.inf), spec.top_p)
    if keep is not None:
        remove[torch.arange(len(keep), device=keep.device), keep] = False
    return logits.masked_fill(remove, -torch.inf)


def nucleus_mask_by_sort(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """True where top-p removes a token [N, V], by the engines' own rule (Hugging Face's and vLLM's): sort
    ascending, drop every token whose cumulative probability is <= 1 - top_p, never the most likely."""
    sorted_logits, order = torch.sort(logits, dim=-1)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop = cumulative <= 1.0 - top_p
    drop[..., -1] = False
    return torch.zeros_like(drop).scatter(-1, order, drop)


def nucleus_candidates(logits: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-p mask [N, V], decided [N]) from the TOP_P_CANDIDATES most likely tokens, without a sort.

    Read descending, the rule keeps a token iff the probability of the tokens ranked above it is below
    top_p: a head of the ranking. A row is *decided* when that head ends inside the candidates (their
    mass reaches top_p), no candidate's mass-above lies within TOP_P_MARGIN of top_p (where the engines'
    ascending float sum could round the other way) and the last kept candidate is not tied with the next
    one (the sort's tie order would decide). The mask of an undecided row is not meaningful.
    """
    k = min(TOP_P_CANDIDATES, logits.shape[-1])
    top, order = logits.topk(k, dim=-1)  # descending
    probs = (top - logits.logsumexp(-1, keepdim=True)).exp()
    above = probs.cumsum(-1) - probs  # the mass ranked strictly above each candidate
    kept = above < top_p  # a head of the ranking
    n_kept = kept.sum(-1)
    decided = (n_kept < k) & ((above - top_p).abs() > TOP_P_MARGIN).all(-1)
    if k > 1:  # the last kept candidate tied with the first dropped one: the sort's order would decide
        last = (n_kept - 1).clamp(0, k - 2)[..., None]
        decided &= top.gather(-1, last).squeeze(-1) != top.gather(-1, last + 1).squeeze(-1)
    remove = torch.ones_like(logits, dtype=torch.bool).scatter(-1, order, ~kept)
    return remove, decided


def nucleus_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """True where top-p removes a token [N, V]: exactly :func:`nucleus_mask_by_sort`, but a row is sorted
    only when its candidates cannot decide it (:func:`nucleus_candidates`). Sorting every answer token's
    151,936 logits cost 22x the temperature-only scoring; a trained model's nucleus at top-p 0.9 is
    usually a few tokens, well inside 256 candidates."""
    remove, decided = nucleus_candidates(logits, top_p)
    if not bool(decided.all()):
        rows = (~decided).nonzero().squeeze(-1)
        remove[rows] = nucleus_mask_by_sort(logits[rows], top_p)
    return remove


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
    """A causal LM (fp32 master weights) with an optional scalar value head on its last hidden state.

    Only trained weights are float32 masters. Frozen ones, the KL reference (``reference=True``) and a
    LoRA model's base, are kept in the compute dtype ``dtype``: autocast would otherwise re-cast them on
    every forward, and they would take twice the memory for no update.
    """

    def __init__(self, lm: nn.Module, with_value: bool, dtype: torch.dtype = torch.float32,
                 reference: bool = False, frozen: bool = False):
        super().__init__()
        self.lm = lm.to(dtype) if frozen else lm.float()
        for param in self.lm.parameters():
            if not param.requires_grad:  # a LoRA base
                param.data = param.data.to(dtype)
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
            frozen = Policy(copy.deepcopy(lm).requires_grad_(False), with_value=False, dtype=dtype, frozen=True)
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
    def score(self, batch: PPOBatch, spec: SamplingSpec, max_rows: int | None = None, max_tokens: int | None = None,
              rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Answer-token log-probs [B, C] (and values) from no-grad passes over micro-batches of at most
        ``max_rows`` rows and ``max_tokens`` tokens, each as wide as its own rows (:meth:`PPOBatch.micro_batches`).

        ``rows``: score only these rows; the others stay 0 (a rank's share, see ``lrn.update.prepare``).
        """
        n, c = batch.completion_mask.shape
        rows = torch.arange(n) if rows is None else rows
        logp = torch.zeros_like(batch.completion_mask)
        values = torch.zeros_like(batch.completion_mask) if self.value_head is not None else None
        micros = batch.micro_batches(rows, max_rows, max_tokens)
        if sharding.is_sharded(self):  # every rank runs as many forward passes (each all-gathers the blocks)
            micros = sharding.pad(micros, (None, batch.rows(torch.arange(1)).trimmed()))
        for idx, micro in micros:
            lp, _, v = self(micro, spec)
            if idx is None:  # a pass for the collectives' sake
                continue
            idx = idx.to(logp.device)
            logp[idx, :lp.shape[1]] = lp
            if values is not None:
                values[idx, :v.shape[1]] = v
        if sharding.is_sharded(self):  # FSDP keeps the root unit gathered after a forward, for the backward that
            self.reshard()  # follows in training; none follows here (never, for the KL reference)
        return logp, values
