"""Random-weight models of real Hub architectures, built locally from their config numbers.

Nothing is downloaded: the shapes below are copied from each model's ``config.json``. The weights
are random, so these models are for speed and memory, never accuracy. ``layers`` shrinks the depth
(memory per layer is linear, the vocabulary's share is not) to fit a small machine.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

ARCHS = {
    "qwen2.5-0.5b": (Qwen2Config, Qwen2ForCausalLM, dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6)),
    "qwen2.5-1.5b": (Qwen2Config, Qwen2ForCausalLM, dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6)),
    "rho-1b": (LlamaConfig, LlamaForCausalLM, dict(  # TinyLlama-1.1B's shape, which Rho-1B shares
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
        num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False, rms_norm_eps=1e-5)),
}


def build(arch: str, layers: int | None = None, seed: int = 0, pad_id: int = 0, eos_id: int = 1) -> PreTrainedModel:
    """A random-weight float32 model of ``arch`` (``layers`` replaces its depth when given)."""
    config_cls, model_cls, shape = ARCHS[arch]
    shape = {**shape, "num_hidden_layers": layers or shape["num_hidden_layers"]}
    torch.manual_seed(seed)
    config = config_cls(**shape, max_position_embeddings=4096, pad_token_id=pad_id, eos_token_id=eos_id)
    return model_cls(config).float()


def save(arch: str, layers: int | None, directory: Path) -> Path:
    """Save a random ``arch`` model with lrn's character tokenizer (ids past its 100 decode to nothing),
    so that ``lrn train model.name_or_path=<directory> model.chat_template=never`` runs on it."""
    from lrn.models import build_char_tokenizer

    tok = build_char_tokenizer()
    build(arch, layers, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Save a random-weight model of a Hub architecture.")
    ap.add_argument("--arch", default="qwen2.5-0.5b", choices=sorted(ARCHS))
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True)
    cli = ap.parse_args()
    print(save(cli.arch, cli.layers, cli.out))
