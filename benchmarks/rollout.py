"""Generated tokens per second of each rollout engine (hf, vllm) at the same shapes, side by side.

K answers to each of N questions, every answer exactly ``--new-tokens`` long (no EOS ids, so nothing
ends early), sampled at temperature 1. Each engine is warmed up once (untimed), then timed over
``--repeats`` calls. Models have random weights: speed only. vLLM engines get the policy's weights
the way training does (dummy load, then the whole state dict pushed).

    OMP_NUM_THREADS=1 python benchmarks/rollout.py --models tiny,qwen2.5-0.5b --layers 2 --questions 8 --k 4
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from archs import build  # noqa: E402

from lrn.config import TinyModelConfig, VLLMConfig  # noqa: E402
from lrn.engines import HFEngine, SamplingSpec  # noqa: E402
from lrn.models import build_char_tokenizer, build_tiny_model  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_model(name: str, layers: int | None, max_len: int):
    tok = build_char_tokenizer()
    if name == "tiny":  # the embedded default's shape (head_dim 32)
        torch.manual_seed(0)
        model = build_tiny_model(TinyModelConfig(layers=layers or 4, max_len=max_len), tok)
    else:
        model = build(name, layers, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    return model.to(DEVICE).eval(), tok


def tokens_per_s(engine, prompts: list[list[int]], spec: SamplingSpec, repeats: int) -> float:
    engine.generate(prompts[: max(1, len(prompts) // 4)], spec)  # warm-up: first-call costs
    t = time.perf_counter()
    tokens = 0
    for _ in range(repeats):
        tokens += sum(len(g.completion_ids) for g in engine.generate(prompts, spec))
    return tokens / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,qwen2.5-0.5b", help="tiny and/or archs.py names, comma-separated")
    ap.add_argument("--layers", type=int, default=None, help="depth of each model (default: its own)")
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--engines", default="hf,vllm")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    questions = [torch.randint(3, 100, (args.prompt_tokens,), generator=g).tolist() for _ in range(args.questions)]
    prompts = [q for q in questions for _ in range(args.k)]
    spec = SamplingSpec(max_new_tokens=args.new_tokens, temperature=1.0, eos_ids=(), seed=0)
    rows = []
    for name in args.models.split(","):
        model, tok = make_model(name, args.layers, args.prompt_tokens + args.new_tokens + 8)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        speeds = {}
        for engine_name in args.engines.split(","):
            if engine_name == "hf":
                engine = HFEngine(model, tok, batch_size=len(prompts))
            else:
                from lrn.engines.vllm import VLLMEngine

                engine = VLLMEngine(model, tok, VLLMConfig(max_model_len=args.prompt_tokens + args.new_tokens + 8),
                                    torch.float32)
            speeds[engine_name] = tokens_per_s(engine, prompts, spec, args.repeats)
            engine.close()
            del engine
            gc.collect()
        rows.append((name, params, speeds))
    engines = args.engines.split(",")
    shape = f"{args.questions}x{args.k}, {args.prompt_tokens}+{args.new_tokens} tokens"
    print(f"\ngenerated tokens/s, {DEVICE.type} ({torch.get_num_threads()} threads), fp32, {shape}")
    header = f"{'model':<16}{'params(M)':>10}" + "".join(f"{e + ' tok/s':>14}" for e in engines)
    if "hf" in engines and len(engines) > 1:
        header += "".join(f"{e + '/hf':>10}" for e in engines if e != "hf")
    print(header)
    for name, params, speeds in rows:
        line = f"{name:<16}{params:>10.1f}" + "".join(f"{speeds[e]:>14.0f}" for e in engines)
        if "hf" in engines and len(engines) > 1:
            line += "".join(f"{speeds[e] / speeds['hf']:>10.2f}" for e in engines if e != "hf")
        print(line)


if __name__ == "__main__":
    main()
