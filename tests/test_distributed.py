"""Several processes, one experiment: the sharded update equals the single-process one; torchrun and
accelerate runs write one run directory with global counters; SIGTERM + resume; submitit sweeps."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import ROOT, TINY

from lrn import distributed, sharding
from lrn.batch import PPOBatch
from lrn.config import PPOConfig, TinyModelConfig
from lrn.engines import SamplingSpec
from lrn.models import build_char_tokenizer, build_tiny_model, enable_gradient_checkpointing
from lrn.policy import Policy
from lrn.update import ppo_update, prepare

# group: whole mini-batches; gae (+ value head, KL reference): micro-batches of 2 rows; gae+checkpointing:
# the same with Hugging Face's gradient checkpointing of each block (the same maths, recomputed)
GAE = PPOConfig(advantage="gae", ent_coef=0.01, kl_coef=0.1, micro_batch_size=2)
CASES = {"group": PPOConfig(advantage="group", ent_coef=0.01), "gae": GAE, "gae+checkpointing": GAE,
         "lora": PPOConfig(advantage="group", ent_coef=0.01, kl_coef=0.1)}  # reference: the adapters off


def test_shard_splits_contiguously_and_gather_inverts_it():
    items = list(range(7))
    parts = [list(distributed.shard(items, r, 3)) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert list(distributed.shard(items)) == items  # a single process: everything, no process group


def one_update(cfg: PPOConfig, strategy: str = "ddp", state: dict | None = None, variant: str = ""
               ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One PPO step (2 epochs x 2 mini-batches of 5 rows: uneven shards) on fixed rollouts; the parameter change.

    ``strategy="fsdp"``: the policy sharded first (2 blocks); ``state`` receives this rank's share of the
    parameter and Adam elements and the whole model's count."""
    checkpointing, lora = variant.endswith("checkpointing"), variant == "lora"
    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    lm = build_tiny_model(TinyModelConfig(layers=2, width=16, heads=2, ffn=32), tokenizer)
    if checkpointing:
        enable_gradient_checkpointing(lm)
    if lora:
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(lm, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    policy = Policy(lm, with_value=cfg.advantage == "gae", reference=cfg.kl_coef > 0)
    if strategy == "fsdp":
        sharding.shard(policy)
    before = {n: sharding.full(p).detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    g = torch.Generator().manual_seed(1)
    rows, p_len, c_len, k = 10, 4, 6, 5
    lengths = torch.randint(1, c_len + 1, (rows,), generator=g)
    cmask = (torch.arange(c_len)[None] < lengths[:, None]).float()
    batch = PPOBatch(torch.randint(3, 40, (rows, p_len + c_len), generator=g),
                     torch.cat([torch.ones(rows, p_len), cmask], 1).long(), cmask,
                     torch.tensor([1.0, 0, 1, 1, 0, 0, 0, 1, 0, 0]), prompt_len=p_len)
    spec = SamplingSpec(max_new_tokens=c_len)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3, eps=1e-5)
    prepare(policy, cfg, batch, spec, k)
    torch.manual_seed(2)  # the mini-batch order
    stats = ppo_update(policy, optimizer, cfg, batch, spec)
    if state is not None and strategy == "fsdp":
        state["whole"] = sum(p.numel() for p in policy.parameters())  # a DTensor's numel is the whole's
        state["params"] = sum(p.to_local().numel() for p in policy.parameters())
        state["trained"] = sum(p.to_local().numel() for p in policy.parameters() if p.requires_grad)
        state["adam"] = sum(v.to_local().numel() for s in optimizer.state.values() for v in s.values() if v.dim())
        state["rows"] = sum(p.numel() // p.shape[0] for p in policy.parameters())  # one dim-0 row of each
    return {n: sharding.full(p).detach() - before[n] for n, p in policy.named_parameters() if p.requires_grad}, stats


def _update_worker(rank: int, world: int, port: int, out: str, strategies: tuple[str, ...] = ("ddp",)) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.init()
    results, states = {}, {}
    for strategy in strategies:
        for name, cfg in CASES.items():
            states[strategy, name] = {}
            results[strategy, name] = one_update(cfg, strategy, states[strategy, name], name)
    if rank == 0:
        torch.save(results, out)
    torch.save(states, f"{out}.state{rank}")
    distributed.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_update(delta, stats, single_delta, single_stats, name):
    assert any(d.abs().max() > 0 for d in single_delta.values()), name
    assert delta.keys() == single_delta.keys()
    for key in single_delta:
        torch.testing.assert_close(delta[key], single_delta[key], rtol=1e-4, atol=1e-7, msg=f"{name} {key}")
    assert stats.keys() == single_stats.keys()
    for key in stats:
        assert stats[key] == pytest.approx(single_stats[key], rel=1e-4, abs=1e-7), (name, key)


@pytest.mark.parametrize("world", [1, 2])
def test_sharded_update_equals_the_single_process_update_and_each_rank_holds_its_share(tmp_path, world):
    """trainer.strategy=fsdp on 1 and 2 processes (FSDP2 on gloo): the update equals the unsharded
    single-process one (value head and KL reference included; gradients summed, not averaged, and
    clipped by the global norm), and each rank holds 1/N of the parameters and of Adam's two moments,
    within one dim-0 row per parameter (FSDP2 shards every tensor on dim 0, the last rank's share padded)."""
    out = tmp_path / "fsdp.pt"
    mp.spawn(_update_worker, args=(world, free_port(), str(out), ("fsdp",)), nprocs=world)
    sharded = torch.load(out)
    for name, cfg in CASES.items():
        assert_same_update(*sharded["fsdp", name], *one_update(cfg, variant=name), name)
        states = [torch.load(f"{out}.state{r}")["fsdp", name] for r in range(world)]
        whole = states[0]["whole"]
        assert sum(s["params"] for s in states) == whole  # the shards partition every parameter
        for s in states:
            assert abs(s["params"] - whole / world) <= s["rows"], (name, s)
            assert s["adam"] == 2 * s["trained"], (name, s)  # exp_avg and exp_avg_sq, sharded alike


def test_two_process_update_equals_the_single_process_update(tmp_path):
    out = tmp_path / "two.pt"
    mp.spawn(_update_worker, args=(2, free_port(), str(out)), nprocs=2)
    two = torch.load(out)
    for name, cfg in CASES.items():
        single_delta, single_stats = one_update(cfg, variant=name)
        assert_same_update(*two["ddp", name], single_delta, single_stats, name)


def predictive_run() -> dict:
    """Prompt features of 7 questions from a tiny random policy (each rank computes its share), then 3 steps of
    the predictive sampler on them: the features, the choices and the probe."""
    from fakes import FakeRollouts, pool_with

    from lrn.config import ArithmeticConfig
    from lrn.features import prompt_features
    from lrn.samplers.predictive import PredictiveSampler
    from lrn.tasks import build_task

    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    policy = Policy(build_tiny_model(TinyModelConfig(layers=1, width=16, heads=2, ffn=32), tokenizer), with_value=False)
    task = build_task(ArithmeticConfig(train_size=50, test_per_level=2, val_per_level=2))
    features = prompt_features(policy, tokenizer, task, batch_size=2)
    problems, rates = pool_with([0.5, 0.0, 1.0, 0.25, 0.5, 0.0, 0.75, 0.5] * 5)
    sampler = PredictiveSampler(problems, batch_size=4, k=4, seed=0, features=features)
    chosen = [[p.id for p in sampler.next_batch(step, FakeRollouts(rates)).problems] for step in range(1, 4)]
    return {"features": torch.from_numpy(features(task.train[:7])), "chosen": chosen,
            "theta": torch.from_numpy(sampler.probe.theta)}


def _predictive_worker(rank: int, world: int, port: int, out: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))  # fakes.py, in a spawned process
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.init()
    torch.save(predictive_run(), Path(out, f"rank{rank}.pt"))
    distributed.shutdown()


@pytest.mark.slow
def test_predictive_features_are_sharded_and_every_rank_chooses_the_same_questions(tmp_path):
    mp.spawn(_predictive_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = predictive_run()
    assert ranks[0]["chosen"] == ranks[1]["chosen"]
    assert torch.equal(ranks[0]["features"], ranks[1]["features"]) and torch.equal(ranks[0]["theta"], ranks[1]["theta"])
    # each rank computed its share (4 + 3 prompts): the same numbers as one process computing all 7
    torch.testing.assert_close(ranks[0]["features"], single["features"], rtol=1e-5, atol=1e-6)
    assert ranks[0]["features"].shape == (7, 16)


def _instrumented_worker(rank: int, world: int, port: int, out: str) -> None:
    """One GAE update (value head, KL reference) on 2 ranks, counting the rows each rank scores without
    gradients and the all-reduce calls of the update itself."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.init()
    scored, calls = [], []
    forward = Policy.forward

    def counting_forward(self, batch, *args, **kwargs):
        if not torch.is_grad_enabled():
            scored.append(len(batch))
        return forward(self, batch, *args, **kwargs)

    all_reduce = torch.distributed.all_reduce

    def counting_all_reduce(*args, **kwargs):
        calls.append(1)
        return all_reduce(*args, **kwargs)

    Policy.forward = counting_forward
    update = ppo_update

    def counted_update(*args, **kwargs):
        torch.distributed.all_reduce = counting_all_reduce
        try:
            return update(*args, **kwargs)
        finally:
            torch.distributed.all_reduce = all_reduce

    globals()["ppo_update"] = counted_update
    one_update(CASES["gae"])
    Path(out, f"rank{rank}.json").write_text(json.dumps({"scored": scored, "all_reduce": len(calls)}))
    distributed.shutdown()


def test_each_rank_scores_its_share_and_gradients_sync_in_buckets(tmp_path):
    """No-grad scoring (old policy with values, KL reference) is sharded, not repeated on every rank; the
    gradient sync is DDP's bucketed all-reduce (one bucket for this small model) once per optimizer step,
    not one all-reduce per parameter tensor."""
    mp.spawn(_instrumented_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # 10 rows, scored by the policy and by the reference: 5 + 5 rows on each rank (whole micro-batches of 2)
    assert [sum(r["scored"]) for r in ranks] == [10, 10]
    # 2 epochs x 2 mini-batches = 4 optimizer steps, one bucket each
    assert [r["all_reduce"] for r in ranks] == [4, 4]


# -- end to end (slow) -------------------------------------------------------------------------------

EIGHT = [*TINY, "sampler=learnability", "trainer.batch_size=8", "trainer.rollouts_per_question=8"]
TORCHRUN = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node=2"]
# accelerate's --cpu flag picks its single-process launcher (accelerate 1.15); --multi_gpu goes through
# torchrun, and without CUDA lrn joins a gloo group, so this is how two CPU processes are had from it
ACCELERATE = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes=2",
              "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no"]


def env(cache_dir: Path) -> dict[str, str]:
    # torchrun (and accelerate, through it) SIGKILLs the ranks 30 s after passing a SIGTERM on, by default: on
    # a loaded machine, before they have finished their step and checkpoint. The tests give them 10 minutes.
    return {**os.environ, "LRN_CACHE": str(cache_dir), "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "600"}


def launch(cache_dir: Path, cwd: Path, *args: str, launcher: list[str] = TORCHRUN) -> subprocess.CompletedProcess:
    proc = subprocess.run([*launcher, "-m", "lrn", "train", *args], cwd=cwd, env=env(cache_dir),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(("perf/", "time/"))} for r in rows]


# What a rank of `lrn train` does around its process group: join it, import the trainer lazily (as
# lrn.commands.train's train_job does, so after the join), communicate, leave; then list its native threads.
RANK_EXIT = """
import json, os, sys
from lrn import distributed, sharding
distributed.init()
import lrn.trainer  # noqa: F401  (imports transformers -> torch.distributed.fsdp -> torch.distributed.nn)
distributed.barrier()
distributed.shutdown()
threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
with open(os.path.join(sys.argv[1], f"threads_{os.environ['RANK']}.json"), "w") as f:
    json.dump(threads, f)
"""


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads thread names from Linux's /proc")
def test_leaving_the_process_group_stops_its_threads_before_the_interpreter_exits(tmp_path):
    # torch.distributed.nn binds group.WORLD as a default argument when it is imported: imported after
    # init_process_group, it holds the group past destroy_process_group, gloo's worker threads outlive
    # the interpreter, and one that drops a finished collective during finalisation aborts the rank
    # (SIGABRT, "terminate called without an active exception": a flaky end-to-end launch in CI)
    script = tmp_path / "rank.py"
    script.write_text(RANK_EXIT)
    proc = subprocess.run([*TORCHRUN, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    per_rank = [json.loads((tmp_path / f"threads_{r}.json").read_text()) for r in range(2)]
    assert all(per_rank)  # each lists its main thread at least
    for threads in per_rank:
        assert not [t for t in threads if "gloo" in t], threads


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [TORCHRUN, ACCELERATE], ids=["torchrun", "accelerate"])
def test_two_processes_write_one_run_with_global_counts(cache_dir, tmp_path, launcher):
    if launcher is ACCELERATE:  # its default port 29500 can still be held by the previous launch: take a free one
        launcher = [*ACCELERATE, f"--main_process_port={free_port()}"]
    proc = launch(cache_dir, tmp_path, *EIGHT, launcher=launcher)  # no hydra.run.dir: ranks agree on ${now:...}
    assert "(processes: 2, process group: gloo)" in proc.stderr + proc.stdout
    (metrics,) = list((tmp_path / "outputs").glob("*/*/metrics.jsonl"))
    rows = read_metrics(metrics.parent)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["counts/rollouts_total"] == 3 * 8 * 4 * 8  # steps x questions x pool factor x K
    assert (metrics.parent / "model" / "config.json").exists()
    assert len(list((metrics.parent / ".hydra").iterdir())) == 3  # written once, by rank 0


@pytest.mark.slow
def test_a_launch_of_one_process_joins_a_group_of_one(cache_dir, tmp_path):
    """torchrun --nproc-per-node=1 joins a process group of one (NCCL on a GPU: the device check's path),
    and trains as a single process does."""
    launcher = [TORCHRUN[0], "--standalone", "--nproc-per-node=1"]
    proc = launch(cache_dir, tmp_path, *TINY, "trainer.steps=1", f"hydra.run.dir={tmp_path / 'run'}", launcher=launcher)
    assert "(processes: 1, process group: gloo)" in proc.stderr + proc.stdout
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [0, 1]


@pytest.mark.slow
def test_sigterm_then_resume_under_torchrun_equals_an_uninterrupted_run(cache_dir, tmp_path):
    run = [*EIGHT, "trainer.checkpoint_every=100"]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    # 1000 steps: the run cannot finish before the signal reaches its ranks, however late that is
    proc = subprocess.Popen([*TORCHRUN, "-m", "lrn", "train", *run, "trainer.steps=1000", f"hydra.run.dir={stopped}"],
                            cwd=tmp_path, env=env(cache_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    metrics = stopped / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # to torchrun, which passes it on to every rank
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode != 0
    checkpoints = sorted(p.name for p in (stopped / "checkpoints").glob("step_*"))
    assert len(checkpoints) == 1, stderr[-3000:]
    step = int(checkpoints[0].split("_")[1])
    assert step >= 1 and read_metrics(stopped)[-1]["step"] == step
    # the uninterrupted run, and the resumed one, end one step after the stop (trainer.steps may change on resume)
    launch(cache_dir, tmp_path, *run, f"trainer.steps={step + 1}", f"hydra.run.dir={full}")
    launch(cache_dir, tmp_path, f"resume={stopped}", f"trainer.steps={step + 1}")
    assert without_timings(read_metrics(stopped)) == without_timings(read_metrics(full))


@pytest.mark.slow
def test_submitit_local_sweep_validates_every_job_first_then_runs_each(run_lrn, tmp_path):
    bad = run_lrn("train", "-m", "hydra/launcher=submitit_local", *TINY, "trainer.steps=2", "ppo.lr=1e-4,-1",
                  f"hydra.sweep.dir={tmp_path / 'bad'}", check=False)
    assert bad.returncode == 2 and not (tmp_path / "bad").exists()  # refused before any job was submitted
    run_lrn("train", "-m", "hydra/launcher=submitit_local", *TINY, "sampler=uniform,learnability", "trainer.steps=2",
            f"hydra.sweep.dir={tmp_path}")
    runs = sorted(p.parent.name for p in tmp_path.glob("*/metrics.jsonl"))
    assert runs == ["0_uniform-arithmetic-s0", "1_learnability-arithmetic-s0"]
    assert all([r["step"] for r in read_metrics(tmp_path / run)] == [0, 1, 2] for run in runs)
    proc = run_lrn("compare", str(tmp_path), "--target", "0.0")
    assert "sampler.name=learnability" in proc.stdout and "sampler.name=uniform" in proc.stdout
