"""A tiny random Qwen2 (chat template) or Llama (plain) causal LM with a real BPE tokenizer, trained
here on GSM8K / MATH text and saved with ``save_pretrained``: the Hub-loading path without a network."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# Qwen2.5's template, reduced to what lrn sends: user turns, an optional system turn, a generation prompt.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def corpus() -> list[str]:
    texts = []
    for path, fields in ((SHARED / "gsm8k" / "train.jsonl", ("question", "answer")),
                         (SHARED / "math500" / "test.jsonl", ("problem", "solution"))):
        if path.exists():
            for line in path.read_text().splitlines()[:2000]:
                row = json.loads(line)
                texts += [str(row[f]) for f in fields]
    return texts or ["Natalia sold 48 clips in April. #### 72", "\\boxed{\\frac{1}{2}}"] * 100


def build_tokenizer(chat: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=1200, special_tokens=special,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>" if chat else "<|endoftext|>",
                                  pad_token="<|endoftext|>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def build(directory: Path, chat: bool = True, seed: int = 0, positions: int = 2048) -> Path:
    """Save a ~0.1M-parameter model and its tokenizer into ``directory`` (Qwen2 if ``chat``, else Llama) that
    reads ``positions`` tokens at most."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    tok = build_tokenizer(chat)
    shape = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=positions,
                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(Qwen2Config(**shape)) if chat else LlamaForCausalLM(LlamaConfig(**shape))
    ends = [tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id] if chat else tok.eos_token_id
    model.generation_config = GenerationConfig(eos_token_id=ends, pad_token_id=tok.pad_token_id)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
