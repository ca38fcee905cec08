"""Real maths through the real CLI: a tiny Hub-format model (saved with save_pretrained, real BPE
tokenizer) trained and evaluated on the GSM8K / MATH-500 files in ../shared/data."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from hub_model import build
from transformers import AutoTokenizer

from lrn.config import ModelConfig, compose
from lrn.engines import SamplingSpec, finish
from lrn.models import eos_ids, load_pretrained, prepare_task
from lrn.tasks import Problem, Task

DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="real data not at ../shared/data")
QUIET = ["logger.wandb.mode=disabled", "logger.progress=false"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("tiny-qwen2"), chat=True)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("tiny-llama"), chat=False)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def task_of(template: str) -> Task:
    return Task("t", [], [], template, 16, lambda text, gold: float(text.strip() == gold))


def test_prompts_use_the_chat_template_or_plain_text(qwen_dir, llama_dir):
    problem = Problem("p", "What is 2+3?", "5")
    _, qwen_tok = load_pretrained(qwen_dir, torch.device("cpu"))
    chat = prepare_task(task_of("{question}\nAnswer after ####."), qwen_tok, ModelConfig())
    assert chat.prompt(problem) == ("<|im_start|>user\nWhat is 2+3?\nAnswer after ####.<|im_end|>\n"
                                    "<|im_start|>assistant\n")
    assert not chat.special_tokens  # the template's text carries its own special tokens
    plain = prepare_task(task_of("{question}\nAnswer after ####."), qwen_tok, ModelConfig(chat_template="never"))
    assert plain.prompt(problem) == "What is 2+3?\nAnswer after ####." and plain.special_tokens
    _, llama_tok = load_pretrained(llama_dir, torch.device("cpu"))
    rho = prepare_task(task_of("{question} \\boxed{}"), llama_tok,
                       ModelConfig(prompt_template="[MATH_TASK] Problem:\n{question}\n\nSolution:"))
    assert rho.prompt(problem) == "[MATH_TASK] Problem:\nWhat is 2+3?\n\nSolution:"  # no chat template: plain


def test_answers_end_at_any_eos_or_a_stop_string_else_are_truncated(qwen_dir):
    model, tok = load_pretrained(qwen_dir, torch.device("cpu"))
    im_end, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    assert eos_ids(model, tok) == [im_end, pad]  # the tokenizer's EOS and the generation config's
    spec = SamplingSpec(max_new_tokens=16, stop=("\n\n\nProblem:",), eos_ids=(im_end, pad))
    words = tok("#### 5", add_special_tokens=False)["input_ids"]
    assert finish(words + [im_end, 7, 8], spec, tok.decode) == (words + [im_end], False)
    assert finish(words + [pad, pad], spec, tok.decode) == (words + [pad], False)  # pad = EOS, sampled first
    stopped = tok("#### 5\n\n\nProblem: next", add_special_tokens=False)["input_ids"]
    ids, truncated = finish(stopped, spec, tok.decode)
    assert not truncated and tok.decode(ids).endswith("Problem:") and tok.decode(ids).startswith("#### 5")
    assert "Problem:" not in tok.decode(ids[:-1])  # the shortest prefix holding the stop string
    # stopped by the string, then padded with pad = EOS: that pad was never sampled and is not kept
    assert finish(ids + [pad, pad], spec, tok.decode) == (ids, False)
    assert finish(words, spec, tok.decode) == (words, True)


@needs_data
@pytest.mark.slow
def test_lrn_eval_gsm8k_and_math500_files_write_records_that_lrn_grade_reproduces(run_lrn, qwen_dir, llama_dir,
                                                                                 tmp_path):
    for model, name, path in ((qwen_dir, "gsm8k", "gsm8k/test.jsonl"), (llama_dir, "math500", "math500/test.jsonl")):
        out = tmp_path / name
        run_lrn("eval", f"model.name_or_path={model}", f"dataset={name}", f"dataset.path={DATA / path}",
                "eval.limit=50", "dataset.max_new_tokens=48", f"eval.output_dir={out}", *QUIET, env=OFFLINE)
        records, source = rows(out / "records.jsonl"), rows(DATA / path)[:50]
        assert len(records) == 50
        summary = json.loads((out / "summary.json").read_text())
        assert summary["metrics"][f"eval/{name}/accuracy"] == sum(r["reward"] for r in records) / 50
        if name == "gsm8k":
            assert [r["answer"] for r in records] == [s["answer"].split("####")[-1].strip().replace(",", "")
                                                      for s in source]
            assert records[0]["prompt"].startswith("<|im_start|>user\n" + source[0]["question"])
            assert "'#### '" in records[0]["prompt"]
        else:
            assert [r["answer"] for r in records] == [s["answer"] for s in source]
            assert records[0]["prompt"].endswith("put your final answer within \\boxed{}.")
            assert {r["subject"] for r in records} <= {s["subject"] for s in source}
        assert all(r["completion_tokens"] == 48 and r["reward"] == 0 for r in records if r["truncated"])
        graded = tmp_path / f"{name}.graded.jsonl"
        proc = run_lrn("grade", str(out / "records.jsonl"), f"dataset={name}", "--out", str(graded))
        assert [g["reward"] for g in rows(graded)] == [r["reward"] for r in records]
        assert proc.stdout.startswith(f"accuracy {summary['metrics'][f'eval/{name}/accuracy']:.4f} over 50 rows")


@needs_data
@pytest.mark.slow
def test_lrn_train_gsm8k_three_steps_with_lora_resumes_and_evaluates(run_lrn, qwen_dir, tmp_path):
    run = tmp_path / "run"
    args = [f"model.name_or_path={qwen_dir}", "dataset=gsm8k", f"dataset.path={DATA / 'gsm8k/train.jsonl'}",
            f"dataset.test_path={DATA / 'gsm8k/test.jsonl'}", "dataset.max_new_tokens=24", "dataset.train_limit=200",
            "trainer.steps=3", "trainer.batch_size=4", "trainer.rollouts_per_question=4", "trainer.eval_every=3",
            "trainer.checkpoint_every=2", "eval.limit=8", "model.lora.enabled=true", "model.lora.r=4",
            "model.gradient_checkpointing=true", "ppo.ent_coef=0.01", *QUIET]
    run_lrn("train", *args, f"hydra.run.dir={run}", env=OFFLINE)
    metrics = rows(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert metrics[-1]["counts/rollouts_total"] >= 3 * 4 * 4 and "eval/gsm8k/accuracy" in metrics[-1]
    assert all(m["ppo/grad_norm"] > 0 for m in metrics[1:])  # the entropy bonus moves the adapters
    assert (run / "model" / "adapter_config.json").exists() and not (run / "model" / "config.json").exists()
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_3")
    shutil.rmtree(resumed / "model")
    run_lrn("train", f"resume={resumed}", env=OFFLINE)
    timing = ("perf/", "time/")
    assert [{k: v for k, v in m.items() if not k.startswith(timing)} for m in rows(resumed / "metrics.jsonl")] == \
        [{k: v for k, v in m.items() if not k.startswith(timing)} for m in metrics]
    run_lrn("eval", str(run), "eval.limit=4", *QUIET, env=OFFLINE)  # the adapter loads merged onto its base
    assert len(rows(run / "eval" / "gsm8k" / "records.jsonl")) == 4


@pytest.mark.slow
@needs_data
def test_overlapping_splits_and_offline_hub_fail_in_one_line(run_lrn, qwen_dir):
    test = DATA / "gsm8k" / "test.jsonl"
    proc = run_lrn("train", f"model.name_or_path={qwen_dir}", "dataset=gsm8k", f"dataset.path={test}",
                   f"dataset.test_path={test}", *QUIET, check=False, env=OFFLINE)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "dataset=gsm8k: 1319 held-out question(s) also appear in the training pool" in proc.stderr
    proc = run_lrn("eval", f"model.name_or_path={qwen_dir}", "dataset=gsm8k", *QUIET, check=False, env=OFFLINE)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "cannot load dataset 'openai/gsm8k'" in proc.stderr and "dataset.path=<file.jsonl>" in proc.stderr
    proc = run_lrn("eval", "model.name_or_path=/nonexistent/model", "dataset=gsm8k", f"dataset.path={test}",
                   *QUIET, check=False, env=OFFLINE)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "model.name_or_path='/nonexistent/model': cannot load a causal LM" in proc.stderr
    proc = run_lrn("train", "dataset=math500", f"model.name_or_path={qwen_dir}", *QUIET, check=False, env=OFFLINE)
    assert proc.returncode == 2 and "dataset=math500 has no training split" in proc.stderr


@pytest.mark.slow
def test_prompts_longer_than_the_model_reads_are_refused_at_load_time_or_dropped(run_lrn, tmp_path):
    model = build(tmp_path / "model", chat=False, positions=128)
    long = [{"question": f"Tom has {'many ' * 120}{fruit}, how many?", "answer": "3"} for fruit in ("apples", "pears")]
    short = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(6)]
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in [*short[:2], long[0], *short[2:4]]))  # line 3
    test.write_text("".join(json.dumps(r) + "\n" for r in [*short[4:], long[1]]))
    template = compose(["dataset=jsonl"]).dataset.prompt_template
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokens = [len(tokenizer(template.replace("{question}", r["question"]))["input_ids"]) for r in long]
    assert min(tokens) > 128 - 16
    args = [f"model.name_or_path={model}", "dataset=jsonl", f"dataset.path={train}", f"dataset.test_path={test}",
            "dataset.max_new_tokens=16", "sampler=uniform", "trainer.steps=1", "trainer.batch_size=2",
            "trainer.rollouts_per_question=2", *QUIET]
    proc = run_lrn("train", *args, f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"lrn: error: {train}:3: question jsonl/train/2 is {tokens[0]} tokens as a prompt, the model allows 112 (the "
        "model's 128 positions - dataset.max_new_tokens 16); shorten it, or set dataset.long_prompts=drop to leave "
        "such questions out"]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    evaluate = [f"model.name_or_path={model}", "dataset=jsonl", f"dataset.path={test}", "dataset.max_new_tokens=16",
                f"eval.output_dir={tmp_path / 'eval'}", *QUIET]
    proc = run_lrn("eval", *evaluate, check=False)
    assert proc.returncode == 2 and f"{test}:3: question jsonl/test/2 is {tokens[1]} tokens" in proc.stderr
    proc = run_lrn("eval", *evaluate, "dataset.long_prompts=drop")
    assert "left out 0 training and 1 held-out questions whose prompt is longer than 112 tokens" in proc.stderr
    assert [r["id"] for r in rows(tmp_path / "eval" / "records.jsonl")] == ["jsonl/test/0", "jsonl/test/1"]
