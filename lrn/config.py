"""Typed config schemas, validation and Hydra composition.

Hydra composes YAML from ``conf/``; :func:`to_config` turns the result into plain dataclasses so that
library code never sees a ``DictConfig``. Every mistake a user can make in a config (unknown key,
wrong type, missing group option, invalid value) becomes a :class:`ConfigError` with one line that
names the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lrn.dataset_config import ArithmeticConfig, HubDatasetConfig
from lrn.sampler_config import (
    AdaptiveSamplerConfig,
    DynamicFilterSamplerConfig,
    FrontierSamplerConfig,
    HistorySamplerConfig,
    LearnabilitySamplerConfig,
    PredictiveSamplerConfig,
    UniformSamplerConfig,
)
from lrn.validation import ConfigError, _check

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class TinyModelConfig:
    """Shape of the embedded character-level transformer (a Llama-architecture HF model)."""

    layers: int = 4
    width: int = 128
    heads: int = 4
    ffn: int = 512
    max_len: int = 64
    tie_embeddings: bool = True

    def validate(self, key: str) -> None:
        for name in ("layers", "width", "heads", "ffn", "max_len"):
            _check(getattr(self, name) >= 1, f"{key}.{name}", getattr(self, name), "must be >= 1")
        _check(self.width % self.heads == 0, f"{key}.heads", self.heads, "must divide model.tiny.width")


@dataclass
class WarmStartConfig:
    """Supervised warm start (answers only in the loss), cached by its config hash."""

    steps: int = 300
    lr: float = 3e-3
    batch_size: int = 256
    level_mix: list[float] = field(default_factory=lambda: [0.3, 0.3, 0.3, 0.08, 0.02])
    seed: int = 0
    cache_dir: str = "~/.cache/lrn"

    def eval_due(self, step: int) -> bool:
        """Whether step ``step`` ends with a held-out evaluation (step 0 always has one)."""
        return step % self.eval_every == 0 or step <= self.eval_dense_until or step == self.steps

    def validate(self, key: str) -> None:
        _check(self.steps >= 0, f"{key}.steps", self.steps, "must be >= 0")
        _check(self.lr > 0, f"{key}.lr", self.lr, "must be > 0")
        _check(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, "must be >= 1")
        _check(
            all(w >= 0 for w in self.level_mix) and sum(self.level_mix) > 0,
            f"{key}.level_mix",
            self.level_mix,
            "must be non-negative weights with a positive sum",
        )


@dataclass
class LoraConfig:
    """Optional LoRA adapters through ``peft`` (only the adapters and the value head are trained).

    No dropout: PPO updates run with every dropout off, LoRA's included (see ``lrn/policy.py``).
    """

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])

    def validate(self, key: str) -> None:
        _check(self.r >= 1, f"{key}.r", self.r, "must be >= 1")
        _check(self.alpha >= 1, f"{key}.alpha", self.alpha, "must be >= 1")


@dataclass
class ModelConfig:
    """Policy model: the embedded tiny model (name_or_path null) or a Hub name / local directory."""

    name: str = "tiny"
    name_or_path: str | None = None
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    dtype: str = "auto"
    device: str = "auto"
    # prompts: a model-specific template overrides the dataset's (e.g. the Rho SFT format)
    prompt_template: str | None = None
    chat_template: str = "auto"
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self, key: str) -> None:
        self.tiny.validate(f"{key}.tiny")
        self.warm_start.validate(f"{key}.warm_start")
        self.lora.validate(f"{key}.lora")
        _check(self.chat_template in ("auto", "never"), f"{key}.chat_template", self.chat_template,
               "allowed: auto (the tokenizer's chat template when it has one), never")
        _check(self.prompt_template is None or "{question}" in self.prompt_template, f"{key}.prompt_template",
               self.prompt_template, "must contain '{question}' (or be null: the dataset's template)")
        _check(self.dtype in ("auto", "float32", "bfloat16"), f"{key}.dtype", self.dtype,
               "allowed: auto, float32, bfloat16 (float16 would need loss scaling, which lrn does not do)")
        _check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
               f"{key}.device", self.device, "allowed: auto, cpu, cuda, cuda:N, mps")


@dataclass
class PPOConfig:
    """Clipped-ratio PPO on answer tokens; see docs/how-it-works.md for each term."""

    advantage: str = "group"
    lr: float = 1e-4
    warmup_steps: int = 0
    epochs: int = 2
    minibatches: int = 2
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.5
    kl_coef: float = 0.0
    ent_coef: float = 0.0
    max_grad_norm: float = 1.0
    gamma: float = 1.0
    lam: float = 0.95
    whiten: bool = True
    skip_nonfinite: bool = False
    micro_batch_size: int | None = None
    micro_batch_tokens: int | None = None
    tis_cap: float | None = None

    def validate(self, key: str) -> None:
        _check(self.tis_cap is None or self.tis_cap > 0, f"{key}.tis_cap", self.tis_cap, "must be > 0 or null (off)")
        _check(self.advantage in ("gae", "group"), f"{key}.advantage", self.advantage, "allowed: gae, group")
        _check(self.lr > 0, f"{key}.lr", self.lr, "must be > 0")
        _check(self.warmup_steps >= 0, f"{key}.warmup_steps", self.warmup_steps, "must be >= 0")
        _check(self.epochs >= 1, f"{key}.epochs", self.epochs, "must be >= 1")
        _check(self.minibatches >= 1, f"{key}.minibatches", self.minibatches, "must be >= 1")
        _check(0 < self.clip < 1, f"{key}.clip", self.clip, "must be in (0, 1)")
        for name in ("value_clip", "vf_coef", "kl_coef", "ent_coef", "max_grad_norm"):
            _check(getattr(self, name) >= 0, f"{key}.{name}", getattr(self, name), "must be >= 0")
        _check(0 <= self.gamma <= 1, f"{key}.gamma", self.gamma, "must be in [0, 1]")
        _check(0 <= self.lam <= 1, f"{key}.lam", self.lam, "must be in [0, 1]")
        _check(self.micro_batch_size is None or self.micro_batch_size >= 1, f"{key}.micro_batch_size",
               self.micro_batch_size, "must be >= 1 or null (whole mini-batches)")
        _check(self.micro_batch_tokens is None or self.micro_batch_tokens >= 1, f"{key}.micro_batch_tokens",
               self.micro_batch_tokens, "must be >= 1 or null (no token budget)")


@dataclass
class TrainerConfig:
    """Loop sizes and cadences, and how several processes share the model (``strategy``)."""

    steps: int = 40
    batch_size: int = 32
    rollouts_per_question: int = 8
    eval_every: int = 10
    eval_dense_until: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    debug_nan_step: int | None = None
    strategy: str = "ddp"

    def eval_due(self, step: int) -> bool:
        """Whether step ``step`` ends with a held-out evaluation (step 0 always has one)."""
        return step % self.eval_every == 0 or step <= self.eval_dense_until or step == self.steps

    def validate(self, key: str) -> None:
        _check(self.strategy in ("ddp", "fsdp"), f"{key}.strategy", self.strategy,
               "allowed: ddp (every process holds the whole model), fsdp (weights, gradients and optimizer "
               "state sharded across processes; docs/distributed.md)")
        _check(self.steps >= 0, f"{key}.steps", self.steps, "must be >= 0")
        _check(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, "must be >= 1")
        _check(self.rollouts_per_question >= 1, f"{key}.rollouts_per_question", self.rollouts_per_question,
               "must be >= 1")
        _check(self.eval_every >= 1, f"{key}.eval_every", self.eval_every, "must be >= 1")
        _check(self.eval_dense_until >= 0, f"{key}.eval_dense_until", self.eval_dense_until, "must be >= 0 (0: off)")
        _check(self.checkpoint_every >= 1, f"{key}.checkpoint_every", self.checkpoint_every, "must be >= 1")
        _check(self.keep_checkpoints >= 1, f"{key}.keep_checkpoints", self.keep_checkpoints, "must be >= 1")
        _check(self.debug_nan_step is None or self.debug_nan_step >= 1, f"{key}.debug_nan_step",
               self.debug_nan_step, "must be >= 1 or null")


@dataclass
class VLLMConfig:
    """The colocated vLLM engine (``rollout.engine=vllm``): memory, context length, sleep mode, CUDA graphs, dtype."""

    gpu_memory_utilization: float = 0.3
    kv_cache_memory: int | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int | str | None = "auto"
    sleep: bool | str = "auto"
    enforce_eager: bool | None = None
    dtype: str = "auto"

    def validate(self, key: str) -> None:
        _check(0 < self.gpu_memory_utilization <= 1, f"{key}.gpu_memory_utilization", self.gpu_memory_utilization,
               "must be in (0, 1]")
        for name in ("kv_cache_memory", "max_num_batched_tokens"):
            _check(getattr(self, name) is None or getattr(self, name) >= 1, f"{key}.{name}", getattr(self, name),
                   "must be >= 1 or null")
        length = self.max_model_len
        _check(length is None or length == "auto" or (isinstance(length, int) and length >= 1),
               f"{key}.max_model_len", length, "allowed: auto (the longest prompt + dataset.max_new_tokens), "
               "an integer >= 1, or null (the model's max_position_embeddings)")
        _check(self.sleep in (True, False, "auto"), f"{key}.sleep", self.sleep,
               "allowed: auto (on where the vLLM build has sleep mode), true, false")
        _check(self.dtype in ("auto", "float32", "bfloat16", "float16"), f"{key}.dtype", self.dtype,
               "allowed: auto (the policy's compute dtype), float32, bfloat16, float16")


@dataclass
class RolloutConfig:
    """Sampling settings of the rollout engine."""

    engine: str = "hf"
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 1024
    stop: list[str] = field(default_factory=list)
    grade_workers: int = 4
    vllm: VLLMConfig = field(default_factory=VLLMConfig)

    def validate(self, key: str) -> None:
        _check(self.engine in ("hf", "vllm"), f"{key}.engine", self.engine, "allowed: hf, vllm")
        if self.engine == "vllm":
            import importlib.util

            _check(importlib.util.find_spec("vllm") is not None, f"{key}.engine", self.engine,
                   "vLLM is not installed: pip install -e '.[vllm]' (GPU, after your torch) or see docs/vllm.md "
                   "for the CPU build")
        self.vllm.validate(f"{key}.vllm")
        if self.engine == "vllm" and self.vllm.sleep is True:  # asks vLLM's platform (slow import): only then
            from lrn.engines.vllm import sleep_enabled

            sleep_enabled(True)
        _check(all(self.stop), f"{key}.stop", self.stop, "stop strings must not be empty")
        _check(self.temperature > 0, f"{key}.temperature", self.temperature, "must be > 0")
        _check(0 < self.top_p <= 1, f"{key}.top_p", self.top_p, "must be in (0, 1]")
        _check(self.top_k >= 0, f"{key}.top_k", self.top_k, "must be >= 0 (0: off)")
        _check(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, "must be >= 1")
        _check(self.grade_workers >= 0, f"{key}.grade_workers", self.grade_workers, "must be >= 0 (0: inline)")


@dataclass
class EvalConfig:
    """Held-out evaluation: greedy accuracy always; pass@k and maj@k from ``samples`` answers."""

    batch_size: int = 1024
    limit: int | None = None
    samples: int = 0
    pass_k: list[int] = field(default_factory=lambda: [1, 4, 8])
    output_dir: str | None = None

    def validate(self, key: str) -> None:
        _check(self.batch_size >= 1, f"{key}.batch_size", self.batch_size, "must be >= 1")
        _check(self.limit is None or self.limit >= 1, f"{key}.limit", self.limit, "must be >= 1 or null")
        _check(self.samples >= 0, f"{key}.samples", self.samples, "must be >= 0 (0: greedy only)")
        _check(all(1 <= k <= max(self.samples, 1) for k in self.pass_k) or self.samples == 0,
               f"{key}.pass_k", self.pass_k, f"each k must be in 1..eval.samples ({self.samples})")


@dataclass
class WandbConfig:
    """W&B: auto = online when an API key is configured, offline otherwise."""

    mode: str = "auto"
    project: str = "lrn"
    entity: str | None = None

    def validate(self, key: str) -> None:
        _check(self.mode in ("auto", "online", "offline", "disabled"), f"{key}.mode", self.mode,
               "allowed: auto, online, offline, disabled")


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    progress: bool = True

    def validate(self, key: str) -> None:
        self.wandb.validate(f"{key}.wandb")


DATASETS: dict[str, type] = {name: HubDatasetConfig for name in ("gsm8k", "math", "math500", "jsonl")}
DATASETS["arithmetic"] = ArithmeticConfig
SAMPLERS: dict[str, type] = {
    "uniform": UniformSamplerConfig, "learnability": LearnabilitySamplerConfig,
    "dynamic_filter": DynamicFilterSamplerConfig, "learnability_adaptive": AdaptiveSamplerConfig,
    "learnability_history": HistorySamplerConfig, "frontier": FrontierSamplerConfig,
    "predictive": PredictiveSamplerConfig,
}


@dataclass
class Config:
    """The whole experiment. Built by :func:`to_config`; tests may build it directly."""

    seed: int = 0
    run_name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: Any = field(default_factory=ArithmeticConfig)
    sampler: Any = field(default_factory=UniformSamplerConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    resume: str | None = None
    force_resume: bool = False

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "validate"):
                value.validate(f.name)
        _check(bool(self.run_name) and not any(bad in self.run_name for bad in ("/", "\\", "..", "\0")), "run_name",
               self.run_name, "it names the run directory inside outputs/: no '/', '\\' or '..'")
        if self.model.name_or_path is None and self.dataset.name != "arithmetic":
            raise ConfigError(f"model.name_or_path=null builds the embedded arithmetic model, which cannot learn "
                              f"dataset={self.dataset.name}; set model.name_or_path=<Hub name or local directory> "
                              "or model=qwen2.5-0.5b-instruct")
        if self.trainer.strategy == "fsdp" and self.model.device.startswith("mps"):
            raise ConfigError("trainer.strategy=fsdp with model.device=mps: FSDP shards over NCCL (CUDA) or gloo (CPU) "
                              "process groups; use trainer.strategy=ddp or model.device=cpu")
        if self.sampler.name != "uniform":
            _check(self.trainer.rollouts_per_question >= 2, "trainer.rollouts_per_question",
                   self.trainer.rollouts_per_question, f"sampler={self.sampler.name} needs K >= 2 rollouts "
                   "to see a mixed result")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _structured(section: str, schema: type, node: Any) -> Any:
    """Merge a config section onto its schema: unknown keys and wrong types fail here."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", "") or "")
        where = ".".join(k for k in (section, key) if k) or "config"
        raise ConfigError(f"{where}: {str(e).splitlines()[0].strip()}") from None


def _pick(section: str, registry: dict[str, type], node: Any) -> Any:
    """Validate a polymorphic group (dataset, sampler) against the schema its ``name`` selects."""
    name = node.get("name") if isinstance(node, DictConfig) else None
    if name not in registry:
        raise ConfigError(f"{section}.name={name!r} is unknown: allowed {', '.join(sorted(registry))}")
    return _structured(section, registry[name], node)


def to_config(cfg: DictConfig | dict) -> Config:
    """Validate a composed Hydra config and return the typed :class:`Config`."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    node = OmegaConf.masked_copy(node, [k for k in node.keys() if k != "hydra"])
    try:
        OmegaConf.resolve(node)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{getattr(e, 'full_key', '') or 'config'}: {str(e).splitlines()[0]}") from None
    groups = ("dataset", "sampler")  # polymorphic: validated below against the schema their name picks
    config = _structured("", Config, OmegaConf.masked_copy(node, [k for k in node if k not in groups]))
    if "dataset" in node:
        config.dataset = _pick("dataset", DATASETS, node.dataset)
    if "sampler" in node:
        config.sampler = _pick("sampler", SAMPLERS, node.sampler)
    config.validate()
    return config


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides (no run directory, no logging)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))
