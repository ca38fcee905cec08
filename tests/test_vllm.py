"""The vLLM rollout engine: same answers as Hugging Face, weight sync, seeds, log-probs, LoRA, real runs.

vLLM's CPU attention needs head_dim in {32, 64, 80, ...}: these models are width 64 with 2 heads
(TINY's width 32 / 2 heads = 16 is not supported).
"""

import json
import os
import shutil

import pytest
import torch
from conftest import TINY
from test_train_e2e import read_metrics, without_timings

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process (lrn sets it too)
pytest.importorskip("vllm")

from lrn.batch import collate  # noqa: E402
from lrn.config import TinyModelConfig, VLLMConfig  # noqa: E402
from lrn.engines import HFEngine, SamplingSpec  # noqa: E402
from lrn.engines.vllm import VLLMEngine  # noqa: E402
from lrn.models import build_char_tokenizer, build_tiny_model  # noqa: E402
from lrn.policy import Policy  # noqa: E402
from lrn.rollout import Rollout  # noqa: E402
from lrn.tasks import Problem  # noqa: E402

QUESTIONS = ("12+3=", "7-45=", "100+2000=", "9+9=", "Q: 31-4?")


def varied_model(seed=0):
    """A 2-layer width-64 model with large random weights, so greedy answers vary from token to token."""
    torch.manual_seed(seed)
    tok = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(layers=2, width=64, heads=2, ffn=128, max_len=64), tok)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval(), tok


@pytest.fixture(scope="module")
def setup():
    # vLLM's CPU kernels crawl when threads outnumber free cores, and its worker replaces
    # torch.set_num_threads with a no-op: one thread while these tests run, then both restored
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    set_threads(1)
    model, tok = varied_model()
    engine = VLLMEngine(model, tok, VLLMConfig(), torch.float32, seed=0)
    prompts = [tok(q, add_special_tokens=False)["input_ids"] for q in QUESTIONS]
    yield engine, model, tok, prompts
    torch.set_num_threads = set_threads
    set_threads(threads)


def greedy(tok, max_new=24, **kw):
    return SamplingSpec(**{"max_new_tokens": max_new, "greedy": True, "eos_ids": (tok.eos_token_id,), **kw})


def same(a, b):
    return [(g.completion_ids, g.truncated) for g in a] == [(g.completion_ids, g.truncated) for g in b]


def test_pushed_weights_give_exactly_the_updated_policys_greedy_answers(setup):
    engine, model, tok, prompts = setup
    hf = HFEngine(model, tok)
    spec = greedy(tok)
    before = hf.generate(prompts, spec)
    assert same(engine.generate(prompts, spec), before)
    # an optimizer update changes the policy; the engine follows only after sync_weights
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    ids = torch.tensor([prompts[0] * 3])
    model.train()
    model(ids, labels=ids).loss.backward()
    opt.step()
    model.eval()
    after = hf.generate(prompts, spec)
    assert not same(after, before)
    assert same(engine.generate(prompts, spec), before)
    engine.sync_weights()
    assert same(engine.generate(prompts, spec), after)


def test_stop_strings_and_several_eos_ids_end_answers_as_with_hf(setup):
    engine, model, tok, prompts = setup
    hf = HFEngine(model, tok)
    engine.sync_weights()
    free = [g.completion_ids for g in hf.generate(prompts, greedy(tok))]
    stop = tok.decode(free[0][3:5])  # a two-token stop string inside answer 0
    extra_eos = free[1][4]  # a second EOS id that answer 1 reaches
    spec = greedy(tok, stop=(stop,), eos_ids=(tok.eos_token_id, extra_eos))
    ours, theirs = engine.generate(prompts, spec), hf.generate(prompts, spec)
    assert same(ours, theirs)
    assert stop in tok.decode(ours[0].completion_ids) and not ours[0].truncated
    assert ours[1].completion_ids[-1] == extra_eos and not ours[1].truncated
    # and with the answers cut short by max_new_tokens: truncated alike
    short = greedy(tok, max_new=3, stop=(stop,), eos_ids=(tok.eos_token_id, extra_eos))
    assert same(engine.generate(prompts, short), hf.generate(prompts, short))


def test_sampled_logprobs_are_the_trainers_and_seeds_reproduce(setup):
    engine, model, tok, prompts = setup
    engine.sync_weights()
    spec = SamplingSpec(max_new_tokens=16, temperature=0.8, top_p=0.9, top_k=12, eos_ids=(tok.eos_token_id,),
                        seed=3)
    k = 4
    flat = [p for p in prompts for _ in range(k)]
    a, b = engine.generate(flat, spec), engine.generate(flat, spec)
    assert same(a, b)
    assert not same(a, engine.generate(flat, SamplingSpec(**{**spec.__dict__, "seed": 4})))
    assert len({tuple(g.completion_ids) for g in a[:k]}) > 1  # the K answers to a question differ
    rollouts = [Rollout(Problem("q", "x", "0"), g.prompt_ids, g.completion_ids, "", 0.0, g.truncated, g.logprobs)
                for g in a]
    batch = collate(rollouts, tok.pad_token_id, torch.device("cpu"))
    trainer_logp, _ = Policy(model, with_value=False).score(batch, spec)
    gap = (batch.engine_logp - trainer_logp).abs() * batch.completion_mask
    assert gap.max().item() < 1e-4
    model.eval()


def test_generation_leaves_the_callers_random_streams_alone(setup):
    engine, _, tok, prompts = setup
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    engine.generate(prompts, SamplingSpec(max_new_tokens=4, eos_ids=(tok.eos_token_id,), seed=1))
    assert torch.equal(torch.rand(3), expected)


def test_lora_sync_pushes_the_merged_weights_and_keeps_the_adapters(setup):
    from peft import LoraConfig, get_peft_model

    engine, model, tok, prompts = setup
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    engine.model = lora  # same architecture as the engine's: a LoRA policy on that base model
    try:
        engine.sync_weights()
        hf = HFEngine(lora, tok)
        spec = greedy(tok)
        assert same(engine.generate(prompts, spec), hf.generate(prompts, spec))
        assert any("lora_B" in n for n, _ in lora.named_parameters())  # unmerged again, adapters intact
        with torch.no_grad():
            for n, p in lora.named_parameters():
                if "lora_B" in n:
                    p.add_(torch.randn_like(p) * 0.5)
        changed = hf.generate(prompts, spec)
        engine.sync_weights()
        assert same(engine.generate(prompts, spec), changed)
    finally:
        engine.model = lora.unload()


VLLM_TINY = [*TINY, "model.tiny.width=64", "model.tiny.ffn=128", "rollout.engine=vllm"]
ENV = {"OMP_NUM_THREADS": "1"}  # vLLM's CPU kernels crawl when threads outnumber free cores


@pytest.mark.slow
def test_vllm_run_logs_the_gap_resumes_exactly_and_evaluates_like_hf(run_lrn, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_lrn("train", *VLLM_TINY, "trainer.checkpoint_every=1", "ppo.tis_cap=2.0", f"hydra.run.dir={full}", env=ENV)
    rows = read_metrics(full)
    for r in rows[1:]:
        assert r["rollout/logprob_diff"] < 0.01 and r["perf/weight_sync_s"] >= 0.0
    # a run resumed from step 2 draws and learns exactly what the uninterrupted run did
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_3")
    shutil.rmtree(resumed / "model")
    run_lrn("train", f"resume={resumed}", env=ENV)
    assert without_timings(read_metrics(resumed)) == without_timings(read_metrics(full))
    # greedy evaluation through either engine: the same accuracy (and the run's last one)
    acc = "eval/arithmetic/accuracy"
    results = {}
    for name in ("vllm", "hf"):
        run_lrn("eval", str(full), f"rollout.engine={name}", f"eval.output_dir={tmp_path / name}", env=ENV)
        results[name] = json.loads((tmp_path / name / "summary.json").read_text())["metrics"][acc]
    assert abs(results["vllm"] - results["hf"]) <= 0.005
    assert results["vllm"] == rows[-1][acc]
