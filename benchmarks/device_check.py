"""The GPU check: real `lrn train` steps on random-weight Qwen2.5 shapes, one table of phases, tokens/s and memory.

    bash benchmarks/device_check.sh            # on a machine with one CUDA GPU (installs .whl/ if present)
    python benchmarks/device_check.py --smoke  # the same cells, tiny, on CPU (checks the script itself)

Each cell is one `lrn train` under `torchrun --standalone --nproc-per-node=1` (so NCCL's process group is
set up and used, as on several GPUs), on a random-weight model of a Hub architecture saved locally
(`benchmarks/archs.py`; nothing is downloaded), with the GPU presets' shapes (`conf/experiment/`): 64
questions x 8 answers per step, temperature 0.6 and top-p 0.9, answers of 512 tokens, prompts of ~200
tokens, 8 mini-batches x 2 epochs, KL 1e-4, bf16 compute on fp32 master weights, the `hf` engine (vLLM's
CUDA build is too large to carry to a machine that reaches no registry). A random model never emits EOS,
so every answer runs to 512 tokens: the heaviest case. Two steps run; the table reports the second (the
first includes CUDA's warm-up). Peak memory is `torch.cuda.max_memory_allocated` over that step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

# (name, arch, extra overrides): the presets' shapes, one cell per model size and strategy
CELLS = [
    ("qwen2.5-0.5b ddp", "qwen2.5-0.5b", ["ppo.micro_batch_size=8"]),
    ("qwen2.5-1.5b ddp", "qwen2.5-1.5b", ["ppo.micro_batch_size=4", "model.gradient_checkpointing=true"]),
    ("qwen2.5-0.5b fsdp", "qwen2.5-0.5b", ["ppo.micro_batch_size=8", "trainer.strategy=fsdp"]),
]
PRESET = ["trainer.batch_size=64", "trainer.rollouts_per_question=8", "rollout.temperature=0.6", "rollout.top_p=0.9",
          "dataset.max_new_tokens=512", "ppo.lr=1e-6", "ppo.epochs=2", "ppo.minibatches=8", "ppo.kl_coef=1e-4",
          "model.dtype=bfloat16", "rollout.batch_size=512"]
SMOKE = ["trainer.batch_size=2", "trainer.rollouts_per_question=2", "rollout.temperature=0.6", "rollout.top_p=0.9",
         "dataset.max_new_tokens=8", "ppo.epochs=1", "ppo.minibatches=1", "ppo.kl_coef=1e-4", "model.dtype=float32"]
COLUMNS = ["perf/rollout_s", "perf/advantage_s", "perf/update_s", "perf/weight_sync_s", "perf/step_s",
           "perf/tokens_per_s", "perf/peak_memory_gb"]


def supported(overrides: list[str]) -> bool:
    """A cell needs what this checkout has (trainer.strategy comes with FSDP support)."""
    from lrn.config import ConfigError, compose, to_config

    try:
        to_config(compose([o for o in overrides if o.startswith("trainer.strategy")]))
    except ConfigError:
        return False
    except Exception:  # noqa: BLE001 - an unknown key is Hydra's error
        return False
    return True


def run_cell(name: str, arch: str, extra: list[str], smoke: bool, work: Path) -> dict:
    from archs import save
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model_dir = work / arch
    if not (model_dir / "config.json").exists():
        save(arch, 1 if smoke else None, model_dir)
    run_dir = work / name.replace(" ", "_")
    prompt = ("x" * (16 if smoke else 190)) + "{question}="
    args = [f"model.name_or_path={model_dir}", "model.chat_template=never", "dataset=arithmetic",
            f"dataset.prompt_template='{prompt}'", "sampler=uniform", "rollout.engine=hf",
            "trainer.steps=2", "trainer.eval_every=1000", "trainer.checkpoint_every=1000", "eval.limit=16",
            "logger.wandb.mode=disabled", "logger.progress=false", f"hydra.run.dir={run_dir}",
            *(SMOKE if smoke else PRESET), *extra]
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node=1"]
    if not Path(torchrun[0]).exists():
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
           "LRN_CACHE": str(work / "cache"), "WANDB_MODE": "disabled"}
    t = time.perf_counter()
    proc = subprocess.run([*torchrun, "-m", "lrn", "train", *args], cwd=work, env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])[:300]
        return {"name": name, "error": f"exit {proc.returncode}: {tail}", "wall": wall}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"name": name, "row": rows[-1], "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the script, not the GPU")
    ap.add_argument("--cells", default=None, help="comma-separated cell names (default: all)")
    args = ap.parse_args()
    import torch

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("device_check: no CUDA GPU here; run with --smoke to check the script on CPU")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "CPU (smoke)"
    cells = [c for c in CELLS if args.cells is None or c[0] in args.cells.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="lrn-device-check-") as tmp:
        for name, arch, extra in cells:
            if not supported(extra):
                results.append({"name": name, "error": "not supported by this checkout", "wall": 0.0})
                continue
            results.append(run_cell(name, arch, extra, args.smoke, Path(tmp)))
            print(f"{name}: {results[-1]['wall']:.0f} s", file=sys.stderr, flush=True)
    print(f"lrn device check on {device}, torch {torch.__version__}; "
          f"{'smoke shapes' if args.smoke else '64 questions x 8 answers x 512 tokens, prompts ~200 tokens'}; "
          "the second of 2 steps")
    print("| cell | rollout s | score s | update s | sync s | step s | tokens/s | peak GB | cell wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['name']} | {r['error']} | | | | | | | {r['wall']:.0f} |")
            continue
        cells = " | ".join(f"{r['row'].get(k, float('nan')):.{0 if k == 'perf/tokens_per_s' else 2}f}"
                           for k in COLUMNS)
        print(f"| {r['name']} | {cells} | {r['wall']:.0f} |")


if __name__ == "__main__":
    main()
