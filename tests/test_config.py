"""Config composition and validation: every group option composes; mistakes give one line, exit 2."""

import pytest

from lrn.config import CONF_DIR, Config, ConfigError, compose, to_config


@pytest.mark.parametrize("group", ["model", "dataset", "sampler", "ppo"])
def test_every_group_option_composes_and_validates(group):
    options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    assert options
    # real datasets need a real model, and jsonl a file (validation does not open it)
    real = ["model=qwen2.5-0.5b-instruct", "dataset.path=data.jsonl"]
    for option in options:
        extra = real if group == "dataset" and option != "arithmetic" else []
        cfg = to_config(compose([f"{group}={option}", *extra]))
        assert isinstance(cfg, Config)


def test_real_datasets_refuse_the_embedded_model_and_jsonl_needs_a_file():
    with pytest.raises(ConfigError, match=r"model.name_or_path=null builds the embedded arithmetic model, which "
                                          r"cannot learn dataset=gsm8k; set model.name_or_path="):
        to_config(compose(["dataset=gsm8k"]))
    with pytest.raises(ConfigError, match=r"dataset.path=None is invalid: set dataset.path to a local .jsonl"):
        to_config(compose(["dataset=jsonl", "model=qwen2.5-0.5b-instruct"]))
    cfg = to_config(compose(["dataset=math500", "model=rho-1b-sft-math"]))
    assert cfg.dataset.grader == "math" and cfg.dataset.train_split is None
    assert cfg.model.prompt_template.startswith("[MATH_TASK] Problem:\n{question}")
    assert cfg.model.chat_template == "never"


def test_default_config_values():
    cfg = to_config(compose())
    assert cfg.sampler.name == "learnability" and cfg.sampler.pool_factor == 4
    assert cfg.trainer.batch_size == 32 and cfg.trainer.rollouts_per_question == 8
    assert cfg.model.name_or_path is None and cfg.dataset.name == "arithmetic"
    assert cfg.run_name == "learnability-arithmetic-s0"


@pytest.mark.parametrize("overrides, message", [
    (["trainer.batch_size=0"], "trainer.batch_size=0 is invalid: must be >= 1"),
    (["trainer.rollouts_per_question=1"], "sampler=learnability needs K >= 2"),
    (["sampler.pool_factor=0.5"], "sampler.pool_factor=0.5 is invalid"),
    (["ppo.advantage=vtrace"], "ppo.advantage='vtrace' is invalid: allowed: gae, group"),
    (["ppo.epochs=two"], "ppo.epochs: Value 'two' of type 'str' could not be converted to Integer"),
    (["+ppo.typo=1"], "ppo.typo: Key 'typo' not in 'PPOConfig'"),
    (["+nonsense=1"], "nonsense: Key 'nonsense' not in 'Config'"),
    (["sampler=uniform", "+sampler.pool_factor=2"], "sampler.pool_factor: Key 'pool_factor' not in"),
    (["logger.wandb.mode=maybe"], "allowed: auto, online, offline, disabled"),
    (["dataset.grader=vibes"], "dataset.grader='vibes' is invalid: allowed:"),
    (["rollout.engine=sglang"], "rollout.engine='sglang' is invalid: allowed: hf, vllm"),
    (["rollout.vllm.gpu_memory_utilization=1.5"], "rollout.vllm.gpu_memory_utilization=1.5 is invalid"),
    (["rollout.vllm.dtype=int8"], "rollout.vllm.dtype='int8' is invalid"),
    (["ppo.tis_cap=0"], "ppo.tis_cap=0.0 is invalid: must be > 0 or null (off)"),
    (["rollout.vllm.max_model_len=longest"], "rollout.vllm.max_model_len='longest' is invalid: allowed: auto"),
    (["rollout.vllm.max_model_len=0"], "rollout.vllm.max_model_len=0 is invalid: allowed: auto"),
    (["rollout.vllm.sleep=sometimes"], "rollout.vllm.sleep='sometimes' is invalid: allowed: auto"),
    (["run_name=../../elsewhere"], "run_name='../../elsewhere' is invalid: it names the run directory inside outputs/"),
    (["dataset.long_prompts=truncate"], "dataset.long_prompts='truncate' is invalid: allowed: refuse"),
    (["trainer.strategy=zero3"], "trainer.strategy='zero3' is invalid: allowed: ddp (every process holds"),
    (["trainer.strategy=fsdp", "model.device=mps"], "trainer.strategy=fsdp with model.device=mps: FSDP shards over"),
])
def test_invalid_configs_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=None) as err:
        to_config(compose(overrides))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("args, message", [
    (["trainer.batch_size=0"], "trainer.batch_size=0 is invalid: must be >= 1"),
    (["sampler=nope"], "sampler=nope: no such option; available: dynamic_filter, frontier, learnability, "
                       "learnability_adaptive, learnability_history, predictive, uniform"),
    (["ppo.lrr=1"], "Could not override 'ppo.lrr'"),
    (["-m", "sampler=uniform,learnability", "trainer.rollouts_per_question=1"], "sampler=learnability needs K >= 2"),
    (["seed=[1"], "no viable alternative"),
])
def test_cli_config_errors_are_one_line_with_exit_code_2(run_lrn, args, message):
    proc = run_lrn("train", *args, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrn: error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_help_and_cfg(run_lrn):
    help_text = run_lrn("train", "--help").stdout
    groups = ("sampler: dynamic_filter, frontier, learnability, learnability_adaptive, learnability_history, "
              "predictive, uniform")
    assert groups in help_text and "== Config ==" in help_text
    cfg_text = run_lrn("train", "--cfg", "sampler=uniform", "seed=5").stdout
    assert "name: uniform" in cfg_text and "seed: 5" in cfg_text


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_preset_composes_and_validates(name):
    """Each preset carries the paper's settings and leaves the sampler to the command line."""
    config = to_config(compose([f"experiment={name}", "sampler=uniform"]))
    assert (config.trainer.batch_size, config.trainer.rollouts_per_question) == (64, 8)
    assert (config.rollout.temperature, config.rollout.top_p, config.ppo.clip, config.ppo.epochs) == (0.6, 0.9, 0.2, 2)
    assert config.model.dtype == "bfloat16" and config.model.name_or_path and config.sampler.name == "uniform"
    assert config.ppo.micro_batch_size and config.eval.limit and config.trainer.eval_every == 25
    # generation on vLLM, with a context as long as the longest prompt + the answer budget (computed at start)
    assert config.rollout.engine == "vllm" and config.rollout.vllm.max_model_len == "auto"


def test_hf_stays_the_default_engine_and_vllm_settings_default_to_auto():
    vllm = to_config(compose()).rollout
    assert vllm.engine == "hf" and (vllm.vllm.max_model_len, vllm.vllm.sleep) == ("auto", "auto")
    explicit = to_config(compose(["rollout.vllm.max_model_len=2048", "rollout.vllm.sleep=false"])).rollout.vllm
    assert (explicit.max_model_len, explicit.sleep) == (2048, False)
    assert to_config(compose(["rollout.vllm.max_model_len=null"])).rollout.vllm.max_model_len is None


def test_evaluation_steps_every_n_and_dense_at_the_start():
    trainer = to_config({"trainer": {"steps": 23, "eval_every": 10, "eval_dense_until": 3}}).trainer
    assert [s for s in range(24) if trainer.eval_due(s)] == [0, 1, 2, 3, 10, 20, 23]
    with pytest.raises(ConfigError, match="trainer.eval_dense_until"):
        to_config({"trainer": {"eval_dense_until": -1}})
