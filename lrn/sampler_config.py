"""Config schemas of the ``sampler`` group, one per option, picked by ``name`` (see ``lrn.config``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lrn.validation import _check


@dataclass
class UniformSamplerConfig:
    """Baseline: batch_size questions drawn uniformly (without replacement) from the pool each step."""

    name: str = "uniform"

    def validate(self, key: str) -> None:
        pass


def _check_pool_factor(key: str, pool_factor: float) -> None:
    _check(pool_factor >= 1, f"{key}.pool_factor", pool_factor,
           "the candidate pool must be at least the batch: use >= 1")


def _check_mix(key: str, mix: float) -> None:
    _check(0 <= mix <= 1, f"{key}.mix", mix, "the uniformly drawn fraction of each batch must be in [0, 1]")


@dataclass
class LearnabilitySamplerConfig:
    """LILO: screen pool_factor x batch candidates with K rollouts, keep the top p(1-p)."""

    name: str = "learnability"
    pool_factor: float = 4.0
    bessel: bool = True
    mix: float = 0.0

    def validate(self, key: str) -> None:
        _check_pool_factor(key, self.pool_factor)
        _check_mix(key, self.mix)


@dataclass
class DynamicFilterSamplerConfig:
    """DAPO dynamic sampling: draw uniformly, drop all-equal groups, redraw until full or max_draws."""

    name: str = "dynamic_filter"
    max_draws: int = 8
    draw_factor: float = 1.0
    mix: float = 0.0

    def validate(self, key: str) -> None:
        _check(self.max_draws >= 1, f"{key}.max_draws", self.max_draws, "must be >= 1")
        _check(self.draw_factor > 0, f"{key}.draw_factor", self.draw_factor, "must be > 0 (questions per draw / batch)")
        _check_mix(key, self.mix)


@dataclass
class AdaptiveSamplerConfig:
    """LILO Algorithm 3: a cheap first screen, then more rollouts for the most learnable candidates."""

    name: str = "learnability_adaptive"
    pool_factor: float = 4.0
    initial_rollouts: int = 2
    chunk_rollouts: int = 2
    budget_factor: float = 1.5
    mix: float = 0.0

    def validate(self, key: str) -> None:
        _check_pool_factor(key, self.pool_factor)
        _check(self.initial_rollouts >= 2, f"{key}.initial_rollouts", self.initial_rollouts,
               "must be >= 2: one answer cannot show a mixed result")
        _check(self.chunk_rollouts >= 1, f"{key}.chunk_rollouts", self.chunk_rollouts, "must be >= 1")
        _check(self.budget_factor > 0, f"{key}.budget_factor", self.budget_factor,
               "must be > 0 (screening rollouts per step / (batch x K))")
        _check_mix(key, self.mix)


@dataclass
class HistorySamplerConfig:
    """Per-question Beta posterior over every rollout made, decayed with age; optional small screen."""

    name: str = "learnability_history"
    pool_factor: float = 4.0
    prior: list[float] = field(default_factory=lambda: [1.0, 1.0])
    decay: float = 0.95
    score: str = "expected"
    screen_factor: float = 0.0
    screen_rollouts: int = 2
    mix: float = 0.0

    def validate(self, key: str) -> None:
        _check_pool_factor(key, self.pool_factor)
        _check(len(self.prior) == 2 and min(self.prior) > 0, f"{key}.prior", self.prior,
               "must be [alpha, beta], both > 0")
        _check(0 < self.decay <= 1, f"{key}.decay", self.decay, "must be in (0, 1] (1: never forget)")
        _check(self.score in ("thompson", "expected"), f"{key}.score", self.score, "allowed: thompson, expected")
        _check(self.screen_factor >= 0, f"{key}.screen_factor", self.screen_factor, "must be >= 0 (0: no screen)")
        _check(self.screen_rollouts >= 1, f"{key}.screen_rollouts", self.screen_rollouts, "must be >= 1")
        _check_mix(key, self.mix)


@dataclass
class FrontierSamplerConfig:
    """Level-shared posterior ranks a uniform draw, few-rollout screen, train on every mixed group."""

    name: str = "frontier"
    pool_factor: float = 4.0
    screen_factor: float = 4.0
    screen_rollouts: int = 2
    continue_threshold: float = 0.5
    max_train_factor: float | None = None
    prior_strength: float = 2.0
    decay: float = 0.95
    mix: float = 0.0

    def validate(self, key: str) -> None:
        _check_pool_factor(key, self.pool_factor)
        _check(0 < self.screen_factor <= self.pool_factor, f"{key}.screen_factor", self.screen_factor,
               "must be in (0, pool_factor]: the screened candidates are the best-ranked of the pool")
        _check(self.screen_rollouts >= 1, f"{key}.screen_rollouts", self.screen_rollouts,
               "must be >= 1 (trainer.rollouts_per_question or more: whole groups, no second stage)")
        _check(0 <= self.continue_threshold <= 1, f"{key}.continue_threshold", self.continue_threshold,
               "must be in [0, 1] (0: every screened candidate gets K answers)")
        _check(self.max_train_factor is None or self.max_train_factor > 0, f"{key}.max_train_factor",
               self.max_train_factor, "must be > 0, or null (train on every mixed group)")
        _check(self.prior_strength > 0, f"{key}.prior_strength", self.prior_strength, "must be > 0")
        _check(0 < self.decay <= 1, f"{key}.decay", self.decay, "must be in (0, 1] (1: never forget)")
        _check_mix(key, self.mix)


@dataclass
class PredictiveSamplerConfig:
    """Predict p from a probe on the policy's prompt features (+ per-question counts), Thompson on P(mixed)."""

    name: str = "predictive"
    pool_factor: float = 4.0
    mix: float = 0.1
    prior_strength: int | float | str = "auto"
    decay: float = 0.95
    replay_decay: float = 0.9
    replay_size: int = 4096
    l2: float = 1.0
    features_dim: int = 256
    fit_steps: int = 4

    def validate(self, key: str) -> None:
        _check_pool_factor(key, self.pool_factor)
        _check_mix(key, self.mix)
        strength = self.prior_strength
        _check(strength == "auto" or (isinstance(strength, int | float) and not isinstance(strength, bool)
                                      and strength > 0), f"{key}.prior_strength", strength,
               "allowed: auto (estimated from how well the probe predicts) or a number > 0")
        _check(0 < self.decay <= 1, f"{key}.decay", self.decay, "must be in (0, 1] (1: never forget)")
        _check(0 < self.replay_decay <= 1, f"{key}.replay_decay", self.replay_decay,
               "must be in (0, 1] (1: every generated group weighs the same in the probe's fit)")
        _check(self.replay_size >= 1, f"{key}.replay_size", self.replay_size,
               "must be >= 1 (generated groups kept for the probe)")
        _check(self.l2 >= 0, f"{key}.l2", self.l2, "must be >= 0 (the probe's L2 penalty)")
        _check(self.features_dim >= 0, f"{key}.features_dim", self.features_dim,
               "must be >= 0 (0: the model's hidden size, no projection)")
        _check(self.fit_steps >= 1, f"{key}.fit_steps", self.fit_steps, "must be >= 1 (Newton steps per training step)")
