"""Memory per rank of one PPO update under trainer.strategy=ddp and fsdp, on a random-weight Hub architecture.

    python benchmarks/sharded_memory.py --arch qwen2.5-0.5b --layers 2 --procs 2

Each strategy runs in N fresh processes (gloo on CPU, NCCL on GPUs) that build the policy (float32 master
weights, KL reference in the compute dtype), its Adam optimizer, score a synthetic batch and take one
update (lrn's own ``prepare`` and ``ppo_update``). Per rank it prints what the training state occupies,
counted from the tensors each rank holds (parameters, gradients, Adam's moments, the reference), and the
peak: RSS high-water mark on CPU (minus the process's RSS before the model was built),
``torch.cuda.max_memory_allocated`` on a GPU. The counted figures are exact; the peak adds activations,
the chunked output layer and, under fsdp, the units gathered while they run (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def local_bytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    return sum((t.to_local() if isinstance(t, DTensor) else t).nbytes for t in tensors)


def rank_main(rank: int, world: int, port: int, args, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    sys.path.insert(0, str(HERE))
    import torch

    from lrn import distributed, sharding
    from lrn.batch import PPOBatch
    from lrn.config import PPOConfig
    from lrn.engines import SamplingSpec
    from lrn.policy import Policy, compute_dtype
    from lrn.update import ppo_update, prepare

    torch.set_num_threads(1)
    distributed.init(alone=True)
    cuda = torch.cuda.is_available()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    from archs import build

    lm = build(args.arch, args.layers).to("cuda" if cuda else "cpu")
    dtype = compute_dtype("auto", lm.device)
    policy = Policy(lm, with_value=False, dtype=dtype, reference=True)
    if args.strategy == "fsdp":
        sharding.shard(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-6, eps=1e-5)
    g = torch.Generator().manual_seed(0)
    rows, p_len, c_len = args.rows, args.prompt, args.answer
    ids = torch.randint(3, 1000, (rows, p_len + c_len), generator=g).to(lm.device)
    batch = PPOBatch(ids, torch.ones_like(ids), torch.ones(rows, c_len, device=lm.device),
                     torch.tensor([1.0, 0.0] * (rows // 2), device=lm.device), prompt_len=p_len)
    cfg = PPOConfig(epochs=1, minibatches=1, kl_coef=0.1)
    spec = SamplingSpec(max_new_tokens=c_len)
    prepare(policy, cfg, batch, spec, k=2)
    ppo_update(policy, optimizer, cfg, batch, spec)
    counted = {
        "weights": local_bytes(policy.parameters()),
        "grads": local_bytes(p.grad for p in policy.parameters() if p.grad is not None),
        "adam": local_bytes(v for s in optimizer.state.values() for v in s.values() if v.dim()),
        "reference": local_bytes(policy._frozen.parameters()),
    }
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    params = sum(p.numel() for p in policy.parameters())  # a DTensor's numel is the whole tensor's
    result = {"rank": rank, "params": params, **counted, "peak": peak}
    results = distributed.all_gather_object(result) if distributed.active() else [result]
    if rank == 0:
        import json

        Path(out).write_text(json.dumps(results))
    distributed.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    import json
    import tempfile

    import torch.multiprocessing as mp

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="qwen2.5-0.5b")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--strategies", default="ddp,fsdp")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--answer", type=int, default=32)
    args = ap.parse_args()
    gb = 1e9
    print(f"{args.arch}, {args.layers} layers, {args.procs} processes, {args.rows} rows of "
          f"{args.prompt}+{args.answer} tokens; GB = 1e9 bytes, per rank")
    print("| strategy | rank | params | weights | grads | Adam | reference | counted | B/param | peak |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for strategy in args.strategies.split(","):
        args.strategy = strategy
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "out.json")
            mp.spawn(rank_main, args=(args.procs, free_port(), args, out), nprocs=args.procs)
            results = json.loads(Path(out).read_text())
        for r in results:
            counted = r["weights"] + r["grads"] + r["adam"] + r["reference"]
            print(f"| {strategy} | {r['rank']} | {r['params'] / 1e6:.1f}M | {r['weights'] / gb:.3f} | "
                  f"{r['grads'] / gb:.3f} | {r['adam'] / gb:.3f} | {r['reference'] / gb:.3f} | {counted / gb:.3f} | "
                  f"{counted / r['params']:.2f} | {r['peak'] / gb:.3f} |")


if __name__ == "__main__":
    main()
