"""Supervised warm start of the embedded tiny model, shipped for the default settings, cached for others.

RL needs a partly competent policy: a random one never earns a reward. The warm start trains the
tiny model on fresh arithmetic problems (never a held-out one) with the loss on answer tokens only,
then saves model and tokenizer with ``save_pretrained`` into ``<cache_dir>/warmstart/<hash>/``.
Runs with the same model, task and warm-start settings reuse it, whatever their RL seed.

The default settings' warm start ships with lrn (``lrn/assets/warmstart/<hash>/``, 4 MB): the first
``lrn train`` skips two minutes of supervised training, and every machine starts RL from the same
weights (floating point differs across CPU models, so a warm start trained elsewhere would differ in
its last digits). ``python -m lrn.warmstart`` retrains and replaces it after a recipe change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from lrn.config import ArithmeticConfig, ConfigError, ModelConfig
from lrn.tasks.arithmetic import build_splits, make_problem
from lrn.tasks.base import Problem, question_hash

log = logging.getLogger(__name__)
SHIPPED = Path(__file__).resolve().parent / "assets" / "warmstart"
RECIPE_VERSION = 4  # bump when the warm-start code changes what it produces


def cache_key(cfg: ModelConfig, task_cfg: ArithmeticConfig) -> str:
    payload = {
        "version": RECIPE_VERSION,
        "tiny": dataclasses.asdict(cfg.tiny),
        "warm_start": {k: v for k, v in dataclasses.asdict(cfg.warm_start).items() if k != "cache_dir"},
        # which held-out split is evaluated does not change the warm start (both are excluded from it), nor
        # what happens to prompts too long for the model (the warm start makes its own)
        "task": {k: v for k, v in dataclasses.asdict(task_cfg).items() if k not in ("eval_split", "long_prompts")},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def training_problems(ws, task_cfg: ArithmeticConfig) -> Iterator[list[Problem]]:
    """The warm start's batches of fresh problems, none of them in the task's validation or test split.

    The held-out splits are rebuilt exactly as :func:`lrn.tasks.build_task` builds them (the real
    ``train_size``: the validation split skips training-pool questions as it is drawn, so a rebuild
    without the pool would be a different list).
    """
    _, validation, test = build_splits(task_cfg.levels, task_cfg.train_size, task_cfg.test_per_level,
                                       task_cfg.train_seed, task_cfg.test_seed, task_cfg.width,
                                       task_cfg.val_per_level, task_cfg.val_seed)
    held_out = {question_hash(p.question) for p in test + validation}
    rng = random.Random(ws.seed)
    levels = list(range(1, task_cfg.levels + 1))
    while True:
        problems: list[Problem] = []
        while len(problems) < ws.batch_size:
            p = make_problem(rng, rng.choices(levels, weights=ws.level_mix)[0], task_cfg.width)
            if question_hash(p.question) not in held_out:
                problems.append(p)
        yield problems


def sft_batch(tokenizer, prompts: list[str], answers: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded prompt+answer+EOS sequences with labels on the answer and EOS only."""
    rows, labels = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def warm_start(cfg: ModelConfig, task_cfg, device: torch.device) -> Path:
    """The directory of the warm-started tiny model: shipped, cached, or trained now (then cached)."""
    if not isinstance(task_cfg, ArithmeticConfig):
        raise ConfigError(
            f"the embedded tiny model warm-starts on the arithmetic task only (dataset={task_cfg.name}); "
            "set model.name_or_path to a pretrained model"
        )
    key = cache_key(cfg, task_cfg)
    if (SHIPPED / key / "config.json").exists():
        return SHIPPED / key
    root = Path(cfg.warm_start.cache_dir).expanduser() / "warmstart"
    out = root / key
    if (out / "config.json").exists():
        return out
    model, tokenizer = train_warm_start(cfg, task_cfg, device, out)
    return save_atomically(model, tokenizer, out)


def train_warm_start(cfg: ModelConfig, task_cfg: ArithmeticConfig, device: torch.device, out: Path):
    """Supervised training of a freshly initialised tiny model; returns (model, tokenizer)."""
    from lrn.models import build_char_tokenizer, build_tiny_model

    ws = cfg.warm_start
    if len(ws.level_mix) != task_cfg.levels:
        raise ConfigError(f"model.warm_start.level_mix has {len(ws.level_mix)} weights but "
                         f"dataset.levels={task_cfg.levels}; give one weight per level")
    log.info("warm start: %d steps of supervised training -> %s", ws.steps, out)
    torch.manual_seed(ws.seed)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(cfg.tiny, tokenizer).to(device)
    draws = training_problems(ws, task_cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=ws.lr, betas=(0.9, 0.98))
    # linear warm-up over the first 10% of steps, then constant: no decay, so the model is left on the
    # steep part of its learning curve, where RL's gradients still carry signal (docs/how-it-works.md)
    warmup = max(1, ws.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    model.train()
    start = time.perf_counter()
    for step in range(ws.steps):
        problems = next(draws)
        batch = sft_batch(tokenizer, [task_cfg.prompt_template.format(question=p.question) for p in problems],
                          [p.answer for p in problems])
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            log.info("warm start step %d/%d loss %.4f (%.0fs)", step + 1, ws.steps, loss.item(),
                     time.perf_counter() - start)
    model.eval()
    return model, tokenizer


def save_atomically(model, tokenizer, out: Path) -> Path:
    """``save_pretrained`` into a temporary sibling, renamed to ``out`` (a concurrent run that finished
    first wins, ours is discarded)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    tmp.chmod(0o755)  # mkdtemp makes it private
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def ship() -> Path:
    """Train the default settings' warm start on this machine into ``lrn/assets/warmstart/<hash>/``,
    replacing any other shipped one (``python -m lrn.warmstart``, after a recipe change)."""
    from lrn.config import compose, to_config

    config = to_config(compose([]))
    out = SHIPPED / cache_key(config.model, config.dataset)
    model, tokenizer = train_warm_start(config.model, config.dataset, torch.device("cpu"), out)
    for old in SHIPPED.glob("*"):
        shutil.rmtree(old)
    return save_atomically(model, tokenizer, out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(ship())
