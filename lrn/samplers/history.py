"""Learnability from history: rank questions by a per-question posterior, at uniform's cost per step.

Every rollout the run makes (screening and training) updates a Beta posterior of that question's
success rate. Evidence decays by ``decay`` per step of age, so the posterior tracks the improving
policy rather than its past. Each step draws ``pool_factor`` x n candidates uniformly (as LILO does,
but without rolling them out), ranks them by p(1-p), either its posterior expectation or a Thompson
draw p ~ Beta (``score``), and trains on the top ``n``. Unseen questions keep the prior, ``prior`` =
(alpha, beta); Beta(1, 1) scores 1/6, above any question seen failing or passing all of its 8
answers, so unseen questions are tried before known-flat ones, known-mixed ones before both.

The uniform candidate draw matters: ranking the whole pool (``pool_factor`` >= pool / batch) re-trains
the same few known-mixed questions step after step; on the embedded task that saw 381 distinct
questions in 100 steps and held-out accuracy fell (docs/samplers.md).

``screen_factor`` > 0 adds an optional screen: the top (1 + screen_factor) x n candidates get
``screen_rollouts`` answers each, the posterior is updated, and the top ``n`` are topped up to K.
With 0 (the default) a step costs exactly K rollouts per trained question, as uniform does.
"""

from __future__ import annotations

import numpy as np

from lrn.rollout import Rollout, RolloutFn
from lrn.samplers.base import DecayedCounts, Pick, Sampler, beta_learnability, top_n


class HistorySampler(Sampler):
    def __init__(self, pool, batch_size: int, k: int, seed: int, prior: tuple[float, float] = (1.0, 1.0),
                 decay: float = 0.95, score: str = "expected", screen_factor: float = 0.0, screen_rollouts: int = 2,
                 mix: float = 0.0, pool_factor: float = 4.0):
        super().__init__(pool, batch_size, k, seed, mix)
        self.pool_size = max(batch_size, round(pool_factor * batch_size))
        self.prior, self.decay, self.score = (float(prior[0]), float(prior[1])), decay, score
        self.screen_factor, self.screen_rollouts = screen_factor, min(screen_rollouts, k)
        self.counts = DecayedCounts(len(pool), decay)

    # -- the posterior ------------------------------------------------------------------------------

    def record(self, step: int, groups: list[list[Rollout]]) -> None:
        for g in groups:
            self.counts.add(self.index[g[0].problem.id], step, sum(r.reward for r in g), len(g))

    def posterior(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(alpha, beta) of every pool question's Beta posterior at ``step``."""
        c = self.counts
        w = c.weights(step)
        return self.prior[0] + c.right * w, self.prior[1] + c.wrong * w

    def scores(self, step: int, idx: list[int] | None = None) -> np.ndarray:
        """p(1-p) per question (of ``idx``, default the whole pool): expected, or of a Thompson draw."""
        a, b = self.posterior(step)
        if idx is not None:
            a, b = a[idx], b[idx]
        if self.score == "thompson":
            p = self.rng.beta(a, b)
            return p * (1 - p)
        return beta_learnability(a, b)

    # -- selection --------------------------------------------------------------------------------

    def select(self, step: int, rollout_fn: RolloutFn, n: int) -> Pick:
        seen = float((self.counts.right + self.counts.wrong > 0).sum())
        if self.pool_size >= len(self.pool):
            drawn = list(range(len(self.pool)))
        else:
            drawn = [int(i) for i in self.draw_indices(self.pool_size)]
        m = round(self.screen_factor * n)
        ranked = [drawn[j] for j in top_n(self.scores(step, drawn), n + m, self.rng)]
        if m == 0:
            problems = [self.pool[i] for i in ranked]
            groups = rollout_fn(problems, self.k)
            return Pick(problems, groups, screened=groups, stats={"sampler/history_seen": seen})
        cand = ranked
        first = rollout_fn([self.pool[i] for i in cand], self.screen_rollouts)  # recorded: posterior updated
        keep = [cand[j] for j in top_n(self.scores(step, cand), n, self.rng)]
        groups = {cand[j]: list(first[j]) for j in range(len(cand))}
        if self.k > self.screen_rollouts:
            for i, g in zip(keep, rollout_fn([self.pool[i] for i in keep], self.k - self.screen_rollouts), strict=True):
                groups[i].extend(g)
        return Pick([self.pool[i] for i in keep], [groups[i] for i in keep], screened=list(groups.values()),
                    screening_rollouts=(len(cand) - len(keep)) * self.screen_rollouts,
                    stats={"sampler/history_seen": seen})

    # -- checkpoint state ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {**super().state_dict(), **self.counts.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.counts.load_state_dict(state)
