"""The vLLM rollout engine: same answers as Hugging Face, weight sync, seeds, log-probs, LoRA, sleep mode,
context length, one engine per rank under torchrun, engines freed between sweep jobs, real runs.

vLLM's CPU attention needs head_dim in {32, 64, 80, ...}: these models are width 64 with 2 heads
(TINY's width 32 / 2 heads = 16 is not supported).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY
from test_distributed import TORCHRUN, launch
from test_train_e2e import read_metrics, without_timings

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process (lrn sets it too)
pytest.importorskip("vllm")

from lrn.batch import collate  # noqa: E402
from lrn.config import ArithmeticConfig, ConfigError, TinyModelConfig, VLLMConfig, compose, to_config  # noqa: E402
from lrn.engines import HFEngine, SamplingSpec  # noqa: E402
from lrn.engines.vllm import VLLMEngine, sleep_enabled  # noqa: E402
from lrn.grading import GradePool  # noqa: E402
from lrn.models import build_char_tokenizer, build_tiny_model  # noqa: E402
from lrn.policy import Policy  # noqa: E402
from lrn.rollout import Rollout  # noqa: E402
from lrn.tasks import Problem, build_task  # noqa: E402
from lrn.trainer import build_rollouts  # noqa: E402

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
    # max_model_len=auto (the default) takes the caller's length: the trainer's longest prompt + answer budget
    engine = VLLMEngine(model, tok, VLLMConfig(), torch.float32, seed=0, max_model_len=CONTEXT)
    prompts = [tok(q, add_special_tokens=False)["input_ids"] for q in QUESTIONS]
    yield engine, model, tok, prompts
    engine.close()
    torch.set_num_threads = set_threads
    set_threads(threads)


CONTEXT = 40  # the fixture engine's max_model_len: >= the longest question (9) + 24 new tokens


def greedy(tok, max_new=24, **kw):
    return SamplingSpec(**{"max_new_tokens": max_new, "greedy": True, "eos_ids": (tok.eos_token_id,), **kw})


def same(a, b):
    return [(g.completion_ids, g.truncated) for g in a] == [(g.completion_ids, g.truncated) for g in b]


def test_the_trainers_engine_takes_a_rollout_phase_in_one_call_and_log_probs_only_when_asked():
    """The engine as train() builds it (build_rollouts), with rollout.batch_size=2: vLLM is given the whole
    phase at once and schedules its own batches; its context is the longest prompt + the answer budget.
    (First in this file, so its engine is closed before the module's shared one starts.)"""
    model, tok = varied_model()
    task = build_task(ArithmeticConfig(train_size=20, test_per_level=2))
    cfg = to_config(compose(["rollout.engine=vllm", "rollout.batch_size=2"]))
    calls = []
    rollouts = build_rollouts(cfg, Policy(model, with_value=False), tok, task, cfg.rollout.batch_size,
                              GradePool("integer"), on_batch=calls.append)
    try:
        rollouts.start_step(1)
        plain = [r for g in rollouts.rollout(task.train[:3], 4) for r in g]
        assert calls == [12]  # one generate call, not 3 (one question of 4 answers per batch of 2)
        assert all(r.engine_logprobs is None for r in plain)
        rollouts.start_step(2, logprobs=True)  # ppo.tis_cap, or rollout/logprob_diff is due
        scored = [r for g in rollouts.rollout(task.train[:3], 4) for r in g]
        assert calls == [12, 12]
        assert all(len(r.engine_logprobs) == len(r.completion_ids) for r in scored)
        longest = max(len(task.prompt(p)) for p in task.train + task.test)  # one token per character
        assert rollouts.engine.llm.llm_engine.model_config.max_model_len == longest + task.max_new_tokens
    finally:
        rollouts.engine.close()


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
    # vLLM detokenises only to find stop strings (lrn's finish() reads token ids)
    assert engine._params(spec, 1, False).detokenize and not engine._params(greedy(tok), 1, False).detokenize
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
    a = engine.generate(flat, spec, logprobs=True)
    engine.generate(flat[3:], SamplingSpec(**{**spec.__dict__, "seed": 9}))  # another call in between
    b = engine.generate(flat, spec)
    assert same(a, b)  # one seed per call, and every call starts from the same engine state
    assert all(g.logprobs is not None for g in a) and all(g.logprobs is None for g in b)  # only when asked
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


def test_context_length_is_the_callers_auto_value_capped_at_the_models_limit(setup):
    engine, model, _, _ = setup
    assert engine.llm.llm_engine.model_config.max_model_len == CONTEXT
    limit = model.config.max_position_embeddings  # 64
    assert VLLMEngine._context_length("auto", limit + 36, model.config) == limit
    assert VLLMEngine._context_length("auto", None, model.config) is None  # no length given: the model's own
    assert VLLMEngine._context_length(50, CONTEXT, model.config) == 50  # a number is taken as it is
    assert VLLMEngine._context_length(None, CONTEXT, model.config) is None


def test_sleep_is_off_on_the_cpu_build_and_asking_for_it_there_is_a_one_line_error(run_lrn):
    """The decision only: sleep mode exists on CUDA / ROCm builds, which this machine cannot run."""
    assert sleep_enabled("auto") is False and sleep_enabled(False) is False
    message = "rollout.vllm.sleep=true: this vLLM build (cpu) has no sleep mode (CUDA and ROCm builds do)"
    with pytest.raises(ConfigError, match=None) as err:
        to_config(compose(["rollout.engine=vllm", "rollout.vllm.sleep=true"]))
    assert str(err.value).startswith(message)
    proc = run_lrn("train", "rollout.engine=vllm", "rollout.vllm.sleep=true", check=False)  # before any model
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr


def test_sleep_then_sync_wakes_the_engine_with_the_updated_weights(setup):
    """The trainer's hand-off (sleep before the update; the next sync wakes the weights, pushes, wakes the
    KV cache) through vLLM's own sleep / wake API. The CPU build's worker keeps its memory when asked to
    sleep, so this proves the protocol and the answers after it, not the release of memory (CUDA only)."""
    engine, model, tok, prompts = setup
    hf, spec = HFEngine(model, tok), greedy(tok)
    engine.sleeps = True  # what rollout.vllm.sleep=auto resolves to on a CUDA build
    try:
        engine.sync_weights()
        engine.sleep()
        assert engine.asleep and engine.llm.llm_engine.is_sleeping()
        before = hf.generate(prompts, spec)
        with torch.no_grad():  # "the update", while the engine sleeps
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.3)
        after = hf.generate(prompts, spec)
        assert not same(after, before)
        engine.sync_weights()
        assert not engine.asleep and not engine.llm.llm_engine.is_sleeping()
        assert same(engine.generate(prompts, spec), after)
        engine.sleep()  # generating while asleep first wakes the engine with the current weights
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight.mul_(-1.0)
        assert same(engine.generate(prompts, spec), hf.generate(prompts, spec)) and not engine.asleep
    finally:
        engine.sleeps = False


# Each rank of a torchrun launch builds its engine through lrn, generates greedy answers to its own share
# of QUESTIONS, gathers what it saw through the launcher's process group, then closes its engine.
ENGINE_PER_RANK = """
import json, sys
sys.path.insert(0, sys.argv[2])
import torch
from lrn import distributed
distributed.init()
from lrn.config import VLLMConfig
from lrn.engines.vllm import VLLMEngine
from test_vllm import QUESTIONS, greedy, varied_model
model, tok = varied_model()
engine = VLLMEngine(model, tok, VLLMConfig(kv_cache_memory=64 << 20), torch.float32)
executor = engine.llm.llm_engine.model_executor
worker = executor.driver_worker.worker
mine = list(distributed.shard(QUESTIONS))
answers = engine.generate([tok(q, add_special_tokens=False)["input_ids"] for q in mine], greedy(tok))
record = {"rank": distributed.rank(), "executor": type(executor).__name__, "worker_rank": worker.rank,
          "local_rank": worker.local_rank, "device": str(worker.device), "questions": mine,
          "answers": [g.completion_ids for g in answers]}
records = distributed.all_gather_object(record)  # the launcher's group still works next to the engines
engine.close()
if record["rank"] == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(records, f)
distributed.shutdown()
"""


def torchrun_records(tmp_path: Path, script: str) -> list:
    """Run ``script`` on 2 torchrun ranks (argv: the records file, this tests folder); the ranks' records."""
    path, out = tmp_path / "rank.py", tmp_path / "records.json"
    path.write_text(script)
    proc = subprocess.run([*TORCHRUN, str(path), str(out), str(Path(__file__).parent)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), **ENV})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_under_torchrun_each_rank_has_its_own_engine_on_its_own_device(tmp_path):
    """vLLM's external_launcher executor: worker rank and local rank (the CUDA device index on a GPU; the
    CPU build runs on "cpu") are the launcher's, and each rank's engine answers its own prompts. vLLM's
    default executor gives every rank local rank 0: on GPUs, every engine on GPU 0."""
    records = torchrun_records(tmp_path, ENGINE_PER_RANK)
    assert [r["executor"] for r in records] == ["ExecutorWithExternalLauncher"] * 2
    assert [(r["rank"], r["worker_rank"], r["local_rank"], r["device"]) for r in records] == [
        (0, 0, 0, "cpu"), (1, 1, 1, "cpu")]
    assert records[0]["questions"] + records[1]["questions"] == list(QUESTIONS)
    model, tok = varied_model()
    hf = HFEngine(model, tok)
    for r in records:  # each rank's own questions, answered as Hugging Face answers them
        expected = hf.generate([tok(q, add_special_tokens=False)["input_ids"] for q in r["questions"]], greedy(tok))
        assert r["answers"] == [g.completion_ids for g in expected]


# Each rank of a torchrun launch pushes the same updated weights into its engine twice, from an unsharded
# model (ddp) and from one sharded across the ranks (fsdp, gathered a tensor at a time as vLLM reads them),
# with a push of other weights in between, and reads back what the engine holds; plain and LoRA models.
FSDP_PUSH = """
import json, sys
sys.path.insert(0, sys.argv[2])
import torch
from peft import LoraConfig, get_peft_model
from lrn import distributed, sharding
distributed.init()
from lrn.config import VLLMConfig
from lrn.engines import HFEngine
from lrn.engines.vllm import VLLMEngine
from lrn.policy import Policy
from test_vllm import QUESTIONS, greedy, varied_model


def lora(seed):
    torch.manual_seed(seed)
    return get_peft_model(varied_model(1)[0], LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"],
                                                         init_lora_weights=False))


start, tok = varied_model(0)
engine = VLLMEngine(start, tok, VLLMConfig(kv_cache_memory=64 << 20), torch.float32)
held = engine.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
prompts = [tok(q, add_special_tokens=False)["input_ids"] for q in QUESTIONS]
record = {"rank": distributed.rank()}
for kind, build in (("plain", lambda: varied_model(1)[0]), ("lora", lambda: lora(5))):
    pushed = {}
    for strategy in ("ddp", "start", "fsdp"):
        policy = Policy(start if strategy == "start" else build(), with_value=False)
        if strategy == "fsdp":
            sharding.shard(policy)
        engine.model = policy.lm
        engine.sync_weights()
        pushed[strategy] = {k: v.detach().clone() for k, v in held.state_dict().items()}
    ddp, fsdp = pushed["ddp"], pushed["fsdp"]
    record[kind] = {"same": ddp.keys() == fsdp.keys() and all(torch.equal(ddp[k], fsdp[k]) for k in ddp),
                    "changed": any(not torch.equal(ddp[k], pushed["start"][k]) for k in ddp),
                    "answers": [g.completion_ids for g in engine.generate(prompts, greedy(tok))],
                    "hf": [g.completion_ids for g in HFEngine(build().eval(), tok).generate(prompts, greedy(tok))]}
records = distributed.all_gather_object(record)
engine.close()
if record["rank"] == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(records, f)
"""


@pytest.mark.slow
def test_under_fsdp_the_push_gives_the_engine_the_weights_it_gets_under_ddp(tmp_path):
    """trainer.strategy=fsdp: each rank's engine holds exactly what an unsharded push gives it (fused
    q/k/v and gate/up included), LoRA merged too, and answers as Hugging Face does on those weights."""
    records = torchrun_records(tmp_path, FSDP_PUSH)
    assert [r["rank"] for r in records] == [0, 1]
    for record in records:
        for kind in ("plain", "lora"):
            assert record[kind]["same"] and record[kind]["changed"], (record["rank"], kind)
            assert record[kind]["answers"] == record[kind]["hf"], (record["rank"], kind)


VLLM_TINY = [*TINY, "model.tiny.width=64", "model.tiny.ffn=128", "rollout.engine=vllm"]
ENV = {"OMP_NUM_THREADS": "1"}  # vLLM's CPU kernels crawl when threads outnumber free cores


def auto_context(overrides: list[str]) -> int:
    """rollout.vllm.max_model_len=auto by hand: the embedded model's tokenizer has one id per character."""
    from lrn.tasks import build_task

    task = build_task(to_config(compose(overrides)).dataset)
    return max(len(task.prompt(p)) for p in task.train + task.test) + task.max_new_tokens


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_vllm_run_trains_with_an_engine_per_rank(cache_dir, tmp_path, strategy):
    """fsdp: the engines are fed the sharded policy's gathered weights (rollout/logprob_diff stays at float
    rounding, as under ddp)."""
    run = tmp_path / "run"
    proc = launch(cache_dir, tmp_path, *VLLM_TINY, "trainer.steps=2", f"trainer.strategy={strategy}",
                  f"hydra.run.dir={run}")
    assert "(processes: 2, process group: gloo)" in proc.stderr + proc.stdout
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[-1]["counts/rollouts_total"] == 2 * 4 * 4 * 4  # steps x questions x pool factor x K
    # the engine's log-probs are asked for only when their metric is due: evaluation steps (no ppo.tis_cap)
    assert ["rollout/logprob_diff" in r for r in rows[1:]] == [False, True]
    assert rows[-1]["rollout/logprob_diff"] < 0.01
    log = (run / "train.log").read_text()
    assert f"vLLM engine: executor external_launcher, max_model_len {auto_context(VLLM_TINY)}, sleep mode off" in log


# Runs `lrn train -m ...` (Hydra's basic launcher: every job in this process) and records each job's peak
# resident memory (sampled every 10 ms) and its resident memory once the job has returned.
SWEEP_RSS = """
import json, os, sys, threading
import lrn.trainer as trainer
from lrn.cli import app

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


jobs, train, out = [], trainer.train, sys.argv[1]  # (Hydra replaces sys.argv)


def measured(cfg, run_dir, stop=None):
    peak, done = [rss()], threading.Event()

    def sample():
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        return train(cfg, run_dir, stop)
    finally:
        done.set()
        thread.join()
        jobs.append({"peak": max(peak[0], rss()), "after": rss()})


trainer.train = measured
try:
    app(["train", "-m", *sys.argv[2:]], standalone_mode=False)
finally:
    with open(out, "w") as f:
        json.dump(jobs, f)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from Linux's /proc")
def test_a_sweep_in_one_process_frees_each_jobs_engine(cache_dir, tmp_path):
    """Two jobs of one `lrn train -m` in one process, each with a 1 GiB KV cache: the second job's peak is
    within 10% of the first's (an engine left alive by the first would add its 1 GiB)."""
    script, out = tmp_path / "sweep.py", tmp_path / "jobs.json"
    script.write_text(SWEEP_RSS)
    args = [*VLLM_TINY, "trainer.steps=1", "seed=0,1", f"rollout.vllm.kv_cache_memory={1 << 30}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LRN_CACHE": str(cache_dir), "WANDB_SILENT": "true", **ENV}
    proc = subprocess.run([sys.executable, str(script), str(out), *args], capture_output=True, text=True,
                          timeout=900, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = json.loads(out.read_text())
    assert second["peak"] <= 1.10 * first["peak"], (first, second)
    assert second["after"] <= first["after"] + (256 << 20), (first, second)  # nothing of a 1 GiB cache kept
    assert len(list((tmp_path / "sweep").glob("*/metrics.jsonl"))) == 2


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
