"""One full training step (select + roll out, score, update) on a random-weight Hub architecture.

    python benchmarks/step.py --arch qwen2.5-0.5b --layers 2 --questions 4 --k 4 --new-tokens 32
    python benchmarks/step.py --arch qwen2.5-0.5b --questions 64 --k 8 --new-tokens 512 --sampler learnability  # GPU
    python benchmarks/step.py --arch qwen2.5-0.5b --layers 2 --questions 32 --k 8 --sampler predictive --steps 4

``--sampler predictive`` adds its prompt-only forward of the candidates and its probe fit to the select
phase (also reported alone: features s, probe s).

Answers have a fixed length (no end-of-sequence id: a random model would stop at random), so every
run of a shape generates the same number of tokens. Reports seconds per phase, generated tokens per
second and peak memory (RSS on CPU, ``torch.cuda.max_memory_allocated`` on a GPU). The model is
random: the numbers are about speed and memory only.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from archs import build  # noqa: E402

from lrn.batch import collate  # noqa: E402
from lrn.config import (  # noqa: E402
    ArithmeticConfig,
    LearnabilitySamplerConfig,
    PPOConfig,
    PredictiveSamplerConfig,
    UniformSamplerConfig,
)
from lrn.engines import HFEngine, SamplingSpec  # noqa: E402
from lrn.features import prompt_features  # noqa: E402
from lrn.grading import GradePool  # noqa: E402
from lrn.models import build_char_tokenizer  # noqa: E402
from lrn.policy import Policy  # noqa: E402
from lrn.rollout import RolloutEngine  # noqa: E402
from lrn.samplers import build_sampler  # noqa: E402
from lrn.tasks import build_task  # noqa: E402
from lrn.update import ppo_update, prepare  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="qwen2.5-0.5b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    ap.add_argument("--sampler", default="uniform", choices=["uniform", "learnability", "predictive"])
    ap.add_argument("--questions", type=int, default=4, help="questions trained on per step")
    ap.add_argument("--k", type=int, default=4, help="answers per question")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--micro", type=int, default=8, help="ppo.micro_batch_size")
    ap.add_argument("--rollout-batch", type=int, default=512, help="rollout.batch_size")
    ap.add_argument("--steps", type=int, default=2, help="steps to run; the first is warm-up and not reported")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = build_char_tokenizer()
    lm = build(args.arch, args.layers, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id).to(device)
    policy = Policy(lm, with_value=False, dtype=getattr(torch, args.dtype))
    task = build_task(ArithmeticConfig())
    spec = SamplingSpec(max_new_tokens=args.new_tokens, temperature=0.6, top_p=0.9)  # no EOS: fixed lengths
    engine = RolloutEngine(HFEngine(lm, tok, args.rollout_batch, policy.autocast), tok, task, spec,
                           GradePool("integer"))
    sampler_cfg = {"uniform": UniformSamplerConfig, "learnability": LearnabilitySamplerConfig,
                   "predictive": PredictiveSamplerConfig}[args.sampler]()
    sampler = build_sampler(sampler_cfg, task.train, args.questions, args.k, seed=0,
                            features=prompt_features(policy, tok, task, args.rollout_batch))
    cfg = PPOConfig(lr=1e-6, epochs=2, minibatches=max(1, args.questions * args.k // 64), micro_batch_size=args.micro)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for step in range(1, args.steps + 1):
        engine.reset_counters()
        t0 = time.perf_counter()
        selection = sampler.next_batch(step, engine.rollout)
        extra = {k: v for k, v in selection.stats.items() if k in ("perf/features_s", "perf/probe_s")}
        sync()
        t1 = time.perf_counter()
        batch = collate([r for g in selection.rollouts for r in g], tok.pad_token_id, device)
        prepare(policy, cfg, batch, spec, args.k)
        sync()
        t2 = time.perf_counter()
        ppo_update(policy, optimizer, cfg, batch, spec)
        sync()
        t3 = time.perf_counter()
    spent = engine.reset_counters()
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{args.arch} ({args.layers or 'all'} layers), {name}, compute {args.dtype}, sampler {args.sampler}: "
          f"{args.questions} questions x {args.k} answers x {args.new_tokens} new tokens")
    print("| rollouts | generated tokens | select+rollout s | score s | update s | step s | tokens/s | peak GB "
          "| features s | probe s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {spent.rollouts} | {spent.tokens} | {t1 - t0:.2f} | {t2 - t1:.2f} | {t3 - t2:.2f} | {t3 - t0:.2f} | "
          f"{spent.tokens / spent.generate_s:.0f} | {peak / 1024**3:.2f} | "
          f"{extra.get('perf/features_s', 0):.3f} | {extra.get('perf/probe_s', 0):.3f} |")


if __name__ == "__main__":
    main()
