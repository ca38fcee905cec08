"""Peak memory of one PPO update (scoring pass + one optimizer step) on a random-weight Hub architecture.

    python benchmarks/memory.py --arch qwen2.5-0.5b --layers 2 --cells lean:4:264,lean:16:520,naive:4:520
    python benchmarks/memory.py --arch qwen2.5-0.5b --layers 2 --cells lean:16:508:500,bare:16:508:500  # long prompts

Each cell runs in a fresh process, so its peak is its own: peak RSS on CPU (the kernel's high-water
mark of the child), ``torch.cuda.max_memory_allocated`` on a GPU. A cell is ``path:micro:seq[:prompt]``:
``micro`` sequences of ``seq`` tokens (``prompt`` tokens, 128 by default, then the answer) in one
micro-batch; ``path`` is ``lean`` (lrn's policy: answer-token logits only, chunked, recomputed in
backward), ``ckpt`` (lean + gradient checkpointing), ``naive`` (the full [B, T, V] float32 logits,
log-softmax and entropy with a graph, as lrn did before) or ``bare`` (the transformer body alone: a
forward and backward of a scalar of its last hidden state, then the same Adam step: model state plus
the body's own activations, the floor lrn's update is measured against). The table gives the peak
and what remains after the model state (weights, gradients and Adam's two moments: 16 bytes a
parameter in fp32), and fits that remainder per token of the micro-batch (prompt and answer: the
transformer body runs on both): the formula the memory guidance in docs/gpu.md uses.

The same model through the whole of ``lrn train`` (one step, 16 sequences of ~540 tokens, one micro-batch):

    python benchmarks/archs.py --arch qwen2.5-0.5b --layers 2 --out /tmp/qwen-2l
    /usr/bin/time -v lrn train model.name_or_path=/tmp/qwen-2l model.chat_template=never dataset=gsm8k \
        dataset.path=../shared/data/gsm8k/train.jsonl dataset.test_path=../shared/data/gsm8k/test.jsonl \
        dataset.max_new_tokens=180 dataset.train_limit=200 sampler=uniform trainer.steps=1 trainer.batch_size=2 \
        trainer.rollouts_per_question=8 ppo.minibatches=1 ppo.micro_batch_size=16 eval.limit=2 \
        [model.gradient_checkpointing=true]     # "Maximum resident set size"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = 128


def parse_cell(cell: str) -> tuple[str, int, int, int]:
    """``path:micro:seq[:prompt]`` -> (path, micro, seq, prompt)."""
    path, micro, seq, *prompt = cell.split(":")
    return path, int(micro), int(seq), int(prompt[0]) if prompt else PROMPT


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def naive_logprobs(lm, batch):
    """What lrn did before: the whole vocabulary's float32 logits at every position."""
    import torch

    logits = lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits.float()
    p, c = batch.prompt_len, batch.completion_mask.shape[1]
    logits = logits[:, p - 1:p + c - 1]
    logp_all = torch.log_softmax(logits, -1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp_all.gather(-1, batch.input_ids[:, p:p + c, None]).squeeze(-1), entropy


def run_cell(args) -> dict:
    """One update in this process; returns the memory readings."""
    import torch

    sys.path.insert(0, str(HERE))
    from archs import build

    from lrn import ppo
    from lrn.batch import PPOBatch
    from lrn.config import PPOConfig
    from lrn.engines import SamplingSpec
    from lrn.policy import Policy
    from lrn.update import ppo_update, prepare

    path, micro, seq, prompt = parse_cell(args.cell)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = rss_bytes()
    lm = build(args.arch, args.layers).to(device)
    if path == "ckpt":
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = sum(p.numel() for p in lm.parameters())
    dtype = getattr(torch, args.dtype)
    policy = Policy(lm, with_value=False, dtype=dtype)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-6)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, lm.config.vocab_size, (micro, seq), generator=g).to(device)
    batch = PPOBatch(ids, torch.ones_like(ids), torch.ones(micro, seq - prompt, device=device),
                     torch.rand(micro, generator=g).round().to(device), prompt_len=prompt)
    spec = SamplingSpec(max_new_tokens=seq - prompt, temperature=0.6, top_p=0.9)
    cfg = PPOConfig(epochs=1, minibatches=1, micro_batch_size=micro, lr=1e-6)
    model_rss = rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if path == "bare":
        with policy.autocast():
            hidden = policy.body(input_ids=ids, attention_mask=batch.attention_mask, use_cache=False).last_hidden_state
            hidden.float().pow(2).mean().backward()
        optimizer.step()
    elif path == "naive":
        with torch.no_grad(), policy.autocast():
            batch.old_logp = naive_logprobs(lm, batch)[0]
        batch.advantages = ppo.group_advantages(batch.rewards, micro)[:, None] * batch.completion_mask
        with policy.autocast():
            logp, _ = naive_logprobs(lm, batch)
        ppo.policy_loss(logp, batch.old_logp, batch.advantages, batch.completion_mask, 0.2)[0].backward()
        optimizer.step()
    else:
        prepare(policy, cfg, batch, spec, k=micro)
        ppo_update(policy, optimizer, cfg, batch, spec)
    cuda_peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {"cell": args.cell, "params": params, "start": start, "model": model_rss, "cuda_peak": cuda_peak,
            "vocab": lm.config.vocab_size, "hidden": lm.config.hidden_size, "layers": lm.config.num_hidden_layers}


def measure(arch: str, layers: int | None, dtype: str, cell: str) -> dict:
    """Run one cell in a child process and read its peak RSS from the kernel (wait4)."""
    cmd = [sys.executable, __file__, "--arch", arch, "--dtype", dtype, "--cell", cell, "--child"]
    if layers:
        cmd += ["--layers", str(layers)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        return {"cell": cell, "failed": f"exit status {status >> 8 or status} (killed for memory?)"}
    reading = json.loads(out.strip().splitlines()[-1])
    reading["peak"] = reading["cuda_peak"] or usage.ru_maxrss * 1024
    return reading


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="qwen2.5-0.5b")
    ap.add_argument("--layers", type=int, default=None, help="shrink the depth (default: the real one)")
    ap.add_argument("--dtype", default="float32", help="compute dtype: float32 | bfloat16")
    ap.add_argument("--cells", default="lean:4:264,lean:4:520,lean:16:520,ckpt:16:520,naive:4:520")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_cell(args)))
        return
    gb = 1024**3
    print(f"{args.arch}, {args.layers or 'all'} layers, compute {args.dtype}; prompt {PROMPT} tokens unless a cell "
          "says otherwise (path:micro:seq:prompt)")
    print("| path | micro-batch | seq | tokens | peak GB | model state GB (16 B/param) | rest GB | rest / token |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    fits = []
    for cell in args.cells.split(","):
        r = measure(args.arch, args.layers, args.dtype, cell)
        path, micro, seq, prompt = parse_cell(cell)
        label = "" if prompt == PROMPT else f" ({prompt} prompt)"
        if "failed" in r:
            print(f"| {path} | {micro} | {seq}{label} | | {r['failed']} | | | |")
            continue
        tokens = micro * seq  # the transformer body runs on prompt and answer tokens alike
        state = 16 * r["params"]
        base = 0 if r["cuda_peak"] else r["start"]  # the Python/torch runtime before the model
        rest = r["peak"] - base - state
        fits.append((path, tokens, rest, r))
        print(f"| {path} | {micro} | {seq}{label} | {tokens} | {r['peak'] / gb:.2f} | {state / gb:.2f} | "
              f"{rest / gb:.2f} | {rest / tokens / 1024:.0f} kB |")
    for path in sorted({f[0] for f in fits}):
        pts = [(t, rest) for p, t, rest, _ in fits if p == path]
        if len(pts) >= 2:
            (t0, m0), (t1, m1) = min(pts), max(pts)
            slope = (m1 - m0) / (t1 - t0) if t1 != t0 else float("nan")
            r = fits[0][3]
            print(f"{path}: rest ~ {(m0 - slope * t0) / gb:.2f} GB + {slope / 1024:.1f} kB x tokens "
                  f"(= {slope / (r['layers'] * r['hidden']):.1f} B per token, layer and hidden unit; "
                  f"{slope / r['vocab']:.2f} B per token and vocabulary entry)")


if __name__ == "__main__":
    main()
