"""Training steps (select + roll out, score, update) on a random-weight Hub architecture, variants side by side.

    python benchmarks/step.py --arch qwen2.5-0.5b --layers 2 --questions 4 --k 4 --new-tokens 32
    python benchmarks/step.py --arch qwen2.5-0.5b --layers 2 --compare top-p            # top-p 0.9 vs 1.0
    python benchmarks/step.py --arch qwen2.5-0.5b --layers 2 --compare padding          # one long answer
    python benchmarks/step.py --arch qwen2.5-0.5b --layers 2 --compare bare --questions 16 --k 1 \
        --prompt-tokens 500 --new-tokens 8 --top-p 1.0 --epochs 1                       # long prompts
    python benchmarks/step.py --arch qwen2.5-0.5b --questions 64 --k 8 --new-tokens 512  # GPU
    python benchmarks/step.py --arch qwen2.5-0.5b --layers 2 --questions 32 --k 8 --sampler predictive

``--sampler predictive`` adds its prompt-only forward of the candidates and its probe fit to the rollout
phase (also reported alone: features s, probe s).

Every variant runs on the same rollouts (generated once, the first step) and the same starting weights,
alternating, ``--repeats`` times each; the table gives each phase's median seconds and the ratio of
score + update to the first variant's. Comparisons (``--compare``):

- ``top-p``: scoring with top-p 0.9 (lrn's nucleus from 256 candidates, sorting only undecided rows)
  against top-p 1.0 (temperature only), and against the full sort lrn used before.
- ``padding``: a batch whose answers are ``--short`` tokens but one, ``--new-tokens`` long: micro-batches
  of ``ppo.micro_batch_tokens`` as wide as their own rows, against micro-batches of ``--micro`` rows all
  as wide as the whole batch (what lrn did before).
- ``bare``: lrn's scoring and update against the bare transformer body (no output layer, no PPO) on the
  same rows: a no-grad forward, and a forward + backward of a scalar of its last hidden state.

Answers have a fixed length (no end-of-sequence id: a random model would stop at random). A random
model's logits are nearly flat (a nucleus of ~100k tokens at top-p 0.9), unlike a trained model's;
``--logit-scale`` multiplies the final norm's weight, i.e. every logit, so that the answer tokens'
nuclei look like a trained model's (the table reports their median size and how many rows needed the
sort). The model is random: the numbers are about speed only. Peak memory per phase needs a process
per cell: ``benchmarks/memory.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from archs import build  # noqa: E402

import lrn.policy as policy_module  # noqa: E402
from lrn.batch import PPOBatch, collate  # noqa: E402
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, fn) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def nucleus_stats(policy: Policy, batch: PPOBatch, spec: SamplingSpec) -> str:
    """Median nucleus size of the answer tokens' distributions, and the share of rows the candidates decide."""
    if spec.top_p >= 1.0:
        return "-"
    with torch.no_grad(), policy.autocast():
        mb = batch.rows(torch.arange(min(len(batch), 4))).trimmed()
        p, c = mb.prompt_len, mb.completion_mask.shape[1]
        hidden = policy.body(input_ids=mb.input_ids, attention_mask=mb.attention_mask).last_hidden_state
        logits = policy.head(hidden[:, p - 1:p + c - 1][mb.completion_mask.bool()][:64]).float() / spec.temperature
    remove, decided = policy_module.nucleus_candidates(logits, spec.top_p)
    sizes = (~policy_module.nucleus_mask(logits, spec.top_p)).sum(-1).float()
    return f"nucleus median {sizes.median():.0f} tokens, {decided.float().mean():.0%} rows decided without a sort"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="qwen2.5-0.5b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    ap.add_argument("--sampler", default="uniform", choices=["uniform", "learnability", "predictive"])
    ap.add_argument("--questions", type=int, default=4, help="questions trained on per step")
    ap.add_argument("--k", type=int, default=4, help="answers per question")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=0, help="pad prompts to about this many tokens (0: short)")
    ap.add_argument("--short", type=int, default=16, help="--compare padding: the other answers' length")
    ap.add_argument("--micro", type=int, default=8, help="ppo.micro_batch_size")
    ap.add_argument("--micro-tokens", type=int, default=None, help="ppo.micro_batch_tokens")
    ap.add_argument("--epochs", type=int, default=2, help="ppo.epochs")
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--logit-scale", type=float, default=1.0, help="multiply every logit (see the docstring)")
    ap.add_argument("--rollout-batch", type=int, default=512, help="rollout.batch_size")
    ap.add_argument("--compare", choices=["none", "top-p", "padding", "bare"], default="none")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats of each variant (median reported)")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = build_char_tokenizer()
    lm = build(args.arch, args.layers, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id).to(device)
    with torch.no_grad():
        lm.model.norm.weight.mul_(args.logit_scale)
    policy = Policy(lm, with_value=False, dtype=getattr(torch, args.dtype))
    template = ("x" * max(0, args.prompt_tokens - 14)) + "{question}="
    task = build_task(ArithmeticConfig(prompt_template=template))
    spec = SamplingSpec(max_new_tokens=args.new_tokens, temperature=args.temperature, top_p=args.top_p)
    engine = RolloutEngine(HFEngine(lm, tok, args.rollout_batch, policy.autocast), tok, task, spec,
                           GradePool("integer"))
    sampler_cfg = {"uniform": UniformSamplerConfig, "learnability": LearnabilitySamplerConfig,
                   "predictive": PredictiveSamplerConfig}[args.sampler]()
    sampler = build_sampler(sampler_cfg, task.train, args.questions, args.k, seed=0,
                            features=prompt_features(policy, tok, task, args.rollout_batch))
    cfg = PPOConfig(lr=1e-6, epochs=args.epochs, minibatches=max(1, args.questions * args.k // 64),
                    micro_batch_size=args.micro, micro_batch_tokens=args.micro_tokens, kl_coef=0.0)

    selection = {}
    t_rollout = timed(device, lambda: selection.update(s=sampler.next_batch(1, engine.rollout)))
    spent = engine.reset_counters()
    rollouts = [r for g in selection["s"].rollouts for r in g]
    if args.compare == "padding":
        for r in rollouts[1:]:
            r.completion_ids = r.completion_ids[:args.short]
    prompt_len = collate(rollouts, tok.pad_token_id, device).prompt_len
    start = {k: v.clone() for k, v in policy.state_dict().items()}

    def step(variant: dict) -> dict[str, float]:
        policy.load_state_dict(start)
        optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
        batch = collate(rollouts, tok.pad_token_id, device)
        trimmed, nucleus = PPOBatch.trimmed, policy_module.nucleus_mask
        if variant.get("whole_width"):
            PPOBatch.trimmed = lambda self: self  # every micro-batch as wide as the whole batch
        if variant.get("sort"):
            policy_module.nucleus_mask = policy_module.nucleus_mask_by_sort
        try:
            if variant.get("bare"):
                body = policy.body
                with policy.autocast():
                    fwd = timed(device, lambda: _bare(body, batch, grad=False))
                    fwd_bwd = timed(device, lambda: _bare(body, batch, grad=True))
                return {"score": fwd, "update": fwd_bwd}
            ppo = dataclasses.replace(cfg, **variant.get("ppo", {}))
            run_spec = variant.get("spec", spec)
            score = timed(device, lambda: prepare(policy, ppo, batch, run_spec, args.k))
            update = timed(device, lambda: ppo_update(policy, optimizer, ppo, batch, run_spec))
            return {"score": score, "update": update}
        finally:
            PPOBatch.trimmed, policy_module.nucleus_mask = trimmed, nucleus

    variants: dict[str, dict] = {"lrn": {}}
    if args.compare == "top-p":
        variants = {f"top-p {args.top_p}": {}, "top-p 1.0": {"spec": SamplingSpec(
            max_new_tokens=args.new_tokens, temperature=args.temperature, top_p=1.0)},
            f"top-p {args.top_p}, full sort (before)": {"sort": True}}
    elif args.compare == "padding":
        budget = args.micro_tokens or args.micro * (prompt_len + args.short)
        variants = {f"micro_batch_tokens={budget}, own widths": {"ppo": {"micro_batch_size": None,
                                                                          "micro_batch_tokens": budget}},
                    f"micro_batch_size={args.micro}, whole-batch width (before)": {"whole_width": True}}
    elif args.compare == "bare":
        variants = {"lrn (score = no-grad scoring, update = PPO update)": {},
                    "bare body (score = forward, update = forward + backward)": {"bare": True}}
    times: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, variant in variants.items():
            times[name].append(step(variant))

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    batch = collate(rollouts, tok.pad_token_id, device)
    print(f"{args.arch} ({args.layers or 'all'} layers), {name}, compute {args.dtype}, sampler {args.sampler}: "
          f"{args.questions} questions x {args.k} answers, prompts ~{batch.prompt_len} tokens, answers up to "
          f"{batch.completion_mask.shape[1]} tokens; {args.epochs} epoch(s), logit scale {args.logit_scale}")
    print(f"rollout phase (first step): {t_rollout:.2f} s, {spent.tokens} tokens, "
          f"{spent.tokens / max(spent.generate_s, 1e-9):.0f} tokens/s; {nucleus_stats(policy, batch, spec)}")
    stats = selection["s"].stats
    if "perf/features_s" in stats:
        print(f"of which sampler=predictive's prompt features {stats['perf/features_s']:.3f} s, "
              f"probe fit {stats.get('perf/probe_s', 0.0):.3f} s")
    print("| variant | score s | update s | score + update s | ratio |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for name, runs in times.items():
        score = statistics.median(r["score"] for r in runs)
        update = statistics.median(r["update"] for r in runs)
        base = base or score + update
        print(f"| {name} | {score:.2f} | {update:.2f} | {score + update:.2f} | {(score + update) / base:.2f} |")


def _bare(body: torch.nn.Module, batch: PPOBatch, grad: bool) -> None:
    with torch.set_grad_enabled(grad):
        hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state
        if grad:
            hidden.float().pow(2).mean().backward()
            for p in body.parameters():
                p.grad = None


if __name__ == "__main__":
    main()
