"""Question samplers: which questions each PPO step trains on."""

from __future__ import annotations

from lrn.samplers.adaptive import AdaptiveLearnabilitySampler
from lrn.samplers.base import Sampler, Selection
from lrn.samplers.dynamic_filter import DynamicFilterSampler
from lrn.samplers.frontier import FrontierSampler
from lrn.samplers.history import HistorySampler
from lrn.samplers.learnability import LearnabilitySampler
from lrn.samplers.predictive import FeatureFn, PredictiveSampler
from lrn.samplers.uniform import UniformSampler
from lrn.tasks import Problem

__all__ = ["Sampler", "Selection", "build_sampler"]


def build_sampler(cfg, pool: list[Problem], batch_size: int, k: int, seed: int,
                  features: FeatureFn | None = None) -> Sampler:
    """Instantiate the sampler a sampler config dataclass names.

    ``features(problems)``: prompt features from the policy (``lrn/features.py``), for samplers that
    predict before they generate; the others ignore it.
    """
    args = (pool, batch_size, k, seed)
    if cfg.name == "uniform":
        return UniformSampler(*args)
    if cfg.name == "learnability":
        return LearnabilitySampler(*args, cfg.pool_factor, cfg.bessel, cfg.mix)
    if cfg.name == "dynamic_filter":
        return DynamicFilterSampler(*args, cfg.max_draws, cfg.draw_factor, cfg.mix)
    if cfg.name == "learnability_adaptive":
        return AdaptiveLearnabilitySampler(*args, cfg.pool_factor, cfg.initial_rollouts, cfg.chunk_rollouts,
                                           cfg.budget_factor, cfg.mix)
    if cfg.name == "learnability_history":
        return HistorySampler(*args, tuple(cfg.prior), cfg.decay, cfg.score, cfg.screen_factor, cfg.screen_rollouts,
                              cfg.mix, cfg.pool_factor)
    if cfg.name == "frontier":
        return FrontierSampler(*args, cfg.pool_factor, cfg.screen_factor, cfg.screen_rollouts, cfg.continue_threshold,
                               cfg.max_train_factor, cfg.prior_strength, cfg.decay, cfg.mix)
    if cfg.name == "predictive":
        if features is None:
            raise ValueError("sampler=predictive needs a features function (lrn.features.prompt_features)")
        return PredictiveSampler(*args, features, cfg.pool_factor, cfg.mix, cfg.prior_strength, cfg.decay,
                                 cfg.replay_decay, cfg.replay_size, cfg.l2, cfg.features_dim, cfg.fit_steps)
    raise ValueError(f"unknown sampler {cfg.name!r}")  # pragma: no cover - the schema admits known names
