"""The GPU path's defects, through the real CLI on CPU: a hostile checkpoint generation_config, bf16
compute on fp32 master weights."""

import json
import shutil

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file


@pytest.mark.slow
def test_lrn_eval_answers_ignore_a_hostile_generation_config(run_lrn, tmp_path):
    """The same model evaluated with and without a generation_config.json carrying repetition_penalty 3,
    no_repeat_ngram_size 2 and do_sample true gives identical greedy answers."""
    run = tmp_path / "run"
    run_lrn("train", *TINY, "trainer.steps=1", f"hydra.run.dir={run}")
    hostile = tmp_path / "hostile"
    shutil.copytree(run / "model", hostile)
    (hostile / "generation_config.json").write_text(json.dumps(
        {"repetition_penalty": 3.0, "no_repeat_ngram_size": 2, "do_sample": True, "top_k": 3, "eos_token_id": 1}))
    answers = []
    for model in (run / "model", hostile):
        out = tmp_path / f"eval-{model.name}"
        run_lrn("eval", *TINY, f"model.name_or_path={model}", f"eval.output_dir={out}")
        answers.append([json.loads(line)["completion"] for line in (out / "records.jsonl").read_text().splitlines()])
    assert answers[0] == answers[1] and len(answers[0]) == 5 * 8
    # zero-padded answers repeat the bigram "00": no_repeat_ngram_size=2 would have changed them
    assert any("000" in a for a in answers[0])


@pytest.mark.slow
def test_bf16_two_steps_at_lr_1e_6_move_the_checkpointed_fp32_weights(run_lrn, cache_dir, tmp_path):
    run_lrn("train", *TINY, "model.dtype=bfloat16", "ppo.lr=1e-6", "trainer.steps=2", f"hydra.run.dir={tmp_path}")
    (start,) = list((cache_dir / "warmstart").glob("*/model.safetensors"))
    before = load_file(start)
    after = load_file(tmp_path / "checkpoints" / "step_2" / "model" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in after.values())
    moved = sum(int((after[k] != before[k]).sum()) for k in before)
    assert moved / sum(t.numel() for t in before.values()) >= 0.9
