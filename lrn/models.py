"""Policy, value head and frozen reference.

Every policy is a Hugging Face causal LM loaded with ``from_pretrained``: a Hub name, a local
directory, or the embedded tiny model, which is built from a config, warm-started once and saved
with ``save_pretrained`` so that it takes exactly the same loading path as a Hub model.
"""

from __future__ import annotations

import logging
import string
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lrn.config import ConfigError, ModelConfig, TinyModelConfig

log = logging.getLogger(__name__)
SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]


def resolve_device(device: str) -> torch.device:
    """``auto`` means CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_char_tokenizer() -> PreTrainedTokenizerBase:
    """A character-level tokenizer over printable ASCII, built with ``tokenizers`` (no download)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left")


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A small Llama-architecture causal LM with randomly initialised weights (seed before calling)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.width, intermediate_size=cfg.ffn,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_len, tie_word_embeddings=cfg.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    return LlamaForCausalLM(config)


def load_pretrained(path: str | Path, device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (float32 weights: the master copy) and its tokenizer from a Hub name or a directory.

    A directory holding a LoRA adapter (adapter_config.json) loads its base model with the adapter
    merged in, so a LoRA run's saved policy evaluates like any other.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if (Path(path) / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError) as e:
        first = " ".join(str(e).split())[:300]
        raise ConfigError(f"model.name_or_path={str(path)!r}: cannot load a causal LM and tokenizer ({first}); "
                          "give a Hub name or a directory saved with save_pretrained") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Hugging Face's activation checkpointing of each block, non-reentrant (what composes with FSDP)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def load_policy(cfg: ModelConfig, task_cfg, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The starting policy: a Hub/local model, or the warm-started embedded tiny model.

    Applies the training-only options: gradient checkpointing and LoRA adapters. LoRA's random A
    matrices are drawn from ``seed`` (the run's), in a forked RNG: the global RNG's state at this point
    depends on what was imported and loaded before, so same-config runs would start from different
    adapters (and ranks of one run too, which DDP's broadcast hid and FSDP's sharding would not).
    """
    device = resolve_device(cfg.device)
    path = cfg.name_or_path
    if path is None:
        from lrn.warmstart import warm_start

        path = warm_start(cfg, task_cfg, device)
    model, tokenizer = load_pretrained(path, device)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
                          target_modules=("all-linear" if cfg.lora.target_modules == ["all-linear"]
                                          else list(cfg.lora.target_modules)), task_type="CAUSAL_LM")
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []  # init on the model's device
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            model = get_peft_model(model, lora)
    return model, tokenizer


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token id that ends an answer: the tokenizer's EOS and the generation config's (chat models
    often end a turn with a token other than the tokenizer's EOS, e.g. Qwen's ``<|im_end|>``)."""
    ids = [tokenizer.eos_token_id]
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    ids += extra if isinstance(extra, list) else [extra]
    return list(dict.fromkeys(i for i in ids if i is not None))


def prepare_task(task, tokenizer: PreTrainedTokenizerBase, cfg: ModelConfig):
    """Give ``task`` the model's prompt format: its own template if it has one, and the tokenizer's chat
    template (the filled-in template as the user turn) unless it has none or ``chat_template=never``.
    Chat-rendered text carries its own special tokens, so the tokenizer must not add any."""
    if cfg.prompt_template is not None:
        task.prompt_template = cfg.prompt_template
    chat = cfg.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))
    if chat:
        def render(text: str) -> str:
            return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        task.render = render
    task.special_tokens = not chat
    return task


def context_length(lm: PreTrainedModel, rollout_cfg=None) -> int | None:
    """Positions the policy attends over (prompt and answer): ``max_position_embeddings``, or vLLM's
    ``rollout.vllm.max_model_len`` when that is set lower (``auto`` sizes vLLM to the prompts, so it bounds
    nothing here); None when the model does not say."""
    n = getattr(lm.config, "max_position_embeddings", None)
    limit = rollout_cfg.vllm.max_model_len if rollout_cfg is not None and rollout_cfg.engine == "vllm" else None
    if isinstance(limit, int):
        n = min(n, limit) if n else limit
    return n


def fit_prompts(task, tokenizer: PreTrainedTokenizerBase, context: int | None, long_prompts: str = "refuse",
                eval_limit: int | None = None) -> None:
    """Refuse, or drop (``dataset.long_prompts=drop``), the questions whose prompt leaves the model fewer than
    ``task.max_new_tokens`` of its ``context`` positions for the answer.

    Beyond its positions a model does not fail, it degrades silently, so a run must not start on such
    prompts. Each prompt is tokenized as the rollout engine will (after :func:`prepare_task`). Refusing
    checks the training pool and the held-out questions evaluated (the first ``eval_limit``); dropping
    drops from both whole sets, before the limit picks.
    """
    if context is None:
        return
    room = context - task.max_new_tokens
    if room < 1:
        raise ConfigError(f"dataset.max_new_tokens={task.max_new_tokens} leaves no room for a prompt in the model's "
                          f"{context} positions; lower it")

    def too_long(problems) -> list[tuple[object, int]]:
        if not problems:
            return []
        ids = tokenizer([task.prompt(p) for p in problems], add_special_tokens=task.special_tokens)["input_ids"]
        return [(p, len(i)) for p, i in zip(problems, ids, strict=True) if len(i) > room]

    limit = f" (the model's {context} positions - dataset.max_new_tokens {task.max_new_tokens})"
    if long_prompts == "drop":
        dropped = {name: {p.id for p, _ in too_long(getattr(task, name))} for name in ("train", "test")}
        for name, ids in dropped.items():
            kept = [p for p in getattr(task, name) if p.id not in ids]
            if getattr(task, name) and not kept:
                raise ConfigError(f"dataset.long_prompts=drop: every {name} question's prompt is longer than "
                                  f"{room} tokens{limit}; lower dataset.max_new_tokens or use a longer-context model")
            setattr(task, name, kept)
        if dropped["train"] or dropped["test"]:
            log.warning("dataset.long_prompts=drop: left out %d training and %d held-out questions whose prompt is "
                        "longer than %d tokens%s", len(dropped["train"]), len(dropped["test"]), room, limit)
        return
    held_out = task.test[:eval_limit] if eval_limit else task.test
    for which, problems in (("training", task.train), ("held-out", held_out)):
        found = too_long(problems)
        if found:
            problem, n = found[0]
            where = problem.meta.get("where")
            more = f" ({len(found) - 1} more in the {which} set)" if len(found) > 1 else ""
            raise ConfigError(f"{where + ': ' if where else ''}question {problem.id} is {n} tokens as a prompt, the "
                              f"model allows {room}{limit}{more}; shorten it, or set dataset.long_prompts=drop to "
                              "leave such questions out")
