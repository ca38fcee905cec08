"""Policy, value head and frozen reference.

Every policy is a Hugging Face causal LM loaded with ``from_pretrained``: a Hub name, a local
directory, or the embedded tiny model, which is built from a config, warm-started once and saved
with ``save_pretrained`` so that it takes exactly the same loading path as a Hub model.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lrn.config import ConfigError, ModelConfig, TinyModelConfig

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
