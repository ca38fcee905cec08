"""Question samplers: which questions each PPO step trains on."""

from __future__ import annotations

from lrn.samplers.base import Sampler, Selection
from lrn.samplers.learnability import LearnabilitySampler
from lrn.samplers.uniform import UniformSampler
from lrn.tasks import Problem

__all__ = ["Sampler", "Selection", "build_sampler"]


def build_sampler(cfg, pool: list[Problem], batch_size: int, k: int, seed: int) -> Sampler:
    """Instantiate the sampler a sampler config dataclass names."""
    if cfg.name == "uniform":
        return UniformSampler(pool, batch_size, k, seed)
    if cfg.name == "learnability":
        return LearnabilitySampler(pool, batch_size, k, seed, cfg.pool_factor, cfg.bessel)
    raise ValueError(f"unknown sampler {cfg.name!r}")  # pragma: no cover - the schema admits known names
