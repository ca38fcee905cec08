"""Frontier sampling: find informative questions for fewer rollouts, and train on all of them.

LILO (``learnability``) screens 4 x batch candidates with K answers each, trains on the top batch and
throws the rest away, although every group whose K answers are not all equal has a gradient, and
most of its screening answers go to questions that are all wrong (or all right). This sampler spends
its rollouts where a mixed group is likely, with three mechanisms, each a config knob:

1. **Evidence shared across a level** (empirical Bayes): every rollout the run makes updates decayed
   success counts per question and per level (``decay`` per step of age, as ``learnability_history``).
   A question's prior is Beta(s mu, s (1 - mu)), mu its level's pooled success rate (with a Beta(1, 1)
   hyperprior) and s = ``prior_strength``; its own counts update it. Questions without a level share
   one. Each step draws ``pool_factor`` x batch candidates uniformly (variety: ranking the whole pool
   re-trains a few questions, see ``history.py``), ranks them by the posterior probability that K
   answers are mixed, P(mixed) = 1 - E[p^K] - E[(1-p)^K], and screens the top ``screen_factor`` x batch.
2. **Few-rollout screening** (after SPEED-RL, arXiv 2506.09016): each screened candidate first gets
   ``screen_rollouts`` answers; only those whose P(mixed), given them, is at least ``continue_threshold``
   get the other K - screen_rollouts (a screen that is already mixed always continues). Every answer is
   reused: a trained group has exactly K. ``screen_rollouts`` = K screens with whole groups.
3. **Every informative group is trained on**, not only the top batch: the trained groups are the
   mixed ones among those with K answers, at most ``max_train_factor`` x batch (null: no cap) by
   p(1-p). The number of trained questions therefore varies (``sampler/trained_questions``); a step
   that finds no mixed group trains on the best-ranked screened group, topped up to K.

Rollouts per step: screen_factor x batch x screen_rollouts, plus K - screen_rollouts per continued
candidate. ``pool_factor=4 screen_factor=4 screen_rollouts=8 max_train_factor=1`` is LILO, but for
filling a short batch with zero-signal groups (which have no gradient under group advantages).
"""

from __future__ import annotations

import math

import numpy as np

from lrn.rollout import Rollout, RolloutFn
from lrn.samplers.base import DecayedCounts, Pick, Sampler, is_zero_signal, learnability, top_n


def beta_moment(a: np.ndarray, b: np.ndarray, j: int) -> np.ndarray:
    """E[p^j] for p ~ Beta(a, b): prod_{i<j} (a + i) / (a + b + i).

    >>> float(beta_moment(np.array(1.0), np.array(1.0), 2))  # uniform p: E[p^2] = 1/3
    0.3333333333333333
    """
    out = np.ones_like(np.asarray(a, dtype=float))
    for i in range(j):
        out = out * (a + i) / (a + b + i)
    return out


def p_mixed(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Probability that k fresh answers are not all equal when the success rate is p ~ Beta(a, b).

    >>> round(float(p_mixed(np.array(1.0), np.array(1.0), 2)), 4)  # 1 - 1/3 - 1/3
    0.3333
    """
    return 1.0 - beta_moment(a, b, k) - beta_moment(b, a, k)


def p_mixed_after(a: float, b: float, right: int, made: int, k: int) -> float:
    """P(all k answers are not equal | ``right`` of the first ``made`` were right), prior Beta(a, b).

    The first ``made`` answers are mixed already (1), or all wrong (then the k - made others must not
    all be wrong: 1 - E[(1-p)^(k-made)] under the posterior), or all right (symmetrically).

    >>> p_mixed_after(1.0, 1.0, 1, 2, 8)  # already mixed
    1.0
    >>> round(p_mixed_after(1.0, 1.0, 0, 2, 8), 4)  # posterior Beta(1, 3): 1 - E[(1-p)^6] = 1 - 3/9
    0.6667
    """
    if 0 < right < made:
        return 1.0
    a2, b2 = a + right, b + made - right
    rest = k - made
    if rest <= 0:
        return 0.0
    if right == 0:  # the others must not all be wrong: E[(1-p)^rest]
        a2, b2 = b2, a2
    return float(1.0 - beta_moment(np.array(a2), np.array(b2), rest))


class FrontierSampler(Sampler):
    def __init__(self, pool, batch_size: int, k: int, seed: int, pool_factor: float = 4.0, screen_factor: float = 4.0,
                 screen_rollouts: int = 2, continue_threshold: float = 0.5, max_train_factor: float | None = None,
                 prior_strength: float = 2.0, decay: float = 0.95, mix: float = 0.0):
        super().__init__(pool, batch_size, k, seed, mix)
        self.pool_factor, self.screen_factor = pool_factor, screen_factor
        self.m = min(screen_rollouts, k)
        self.threshold, self.max_train_factor = continue_threshold, max_train_factor
        self.strength = prior_strength
        self.questions = DecayedCounts(len(pool), decay)
        levels = sorted({p.level for p in pool if p.level is not None})
        self.level_of = np.array([levels.index(p.level) if p.level is not None else len(levels) for p in pool])
        self.levels = DecayedCounts(len(levels) + 1, decay, "levels", spare=1)  # the last: questions without one

    # -- evidence ---------------------------------------------------------------------------------

    def record(self, step: int, groups: list[list[Rollout]]) -> None:
        for g in groups:
            i, right = self.index[g[0].problem.id], sum(r.reward for r in g)
            self.questions.add(i, step, right, len(g))
            self.levels.add(self.level_of[i], step, right, len(g))

    def posterior(self, step: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(alpha, beta) of the questions ``idx``: their level's prior plus their own decayed counts."""
        lv, q = self.levels, self.questions
        lw = lv.weights(step)
        mu = ((1.0 + lv.right * lw) / (2.0 + (lv.right + lv.wrong) * lw))[self.level_of[idx]]
        w = q.weights(step, idx)
        return self.strength * mu + q.right[idx] * w, self.strength * (1 - mu) + q.wrong[idx] * w

    # -- selection --------------------------------------------------------------------------------

    def select(self, step: int, rollout_fn: RolloutFn, n: int) -> Pick:
        k, m = self.k, self.m
        drawn = self.draw_indices(max(n, round(self.pool_factor * n)))
        a, b = self.posterior(step, drawn)
        order = top_n(p_mixed(a, b, k), max(1, round(self.screen_factor * n)), self.rng)
        cand, a, b = drawn[order], a[order], b[order]
        groups = [list(g) for g in rollout_fn([self.pool[i] for i in cand], m)]
        go = [j for j, g in enumerate(groups) if m < k and
              p_mixed_after(a[j], b[j], int(sum(r.reward for r in g)), m, k) >= self.threshold]
        self._top_up(rollout_fn, cand, groups, go)
        full = [j for j, g in enumerate(groups) if len(g) == k]
        mixed = [j for j in full if not is_zero_signal(groups[j])]
        if self.max_train_factor is not None:
            cap = max(1, math.floor(self.max_train_factor * n))
            mixed = [mixed[j] for j in top_n([learnability(groups[j]) for j in mixed], cap)] if mixed else []
        keep = mixed
        if not keep:  # nothing informative found: train on the best-ranked screened group (no gradient)
            keep = full[:1] or [0]
            self._top_up(rollout_fn, cand, groups, [j for j in keep if len(groups[j]) < k])
        made = sum(len(g) for g in groups)
        return Pick([self.pool[cand[j]] for j in keep], [groups[j] for j in keep], screened=groups,
                    screening_rollouts=made - k * len(keep),
                    stats={"sampler/screened": float(len(cand)),
                           "sampler/continued": float(len(go)), "sampler/rollouts": float(made)})

    def _top_up(self, rollout_fn: RolloutFn, cand: np.ndarray, groups: list[list[Rollout]], js: list[int]) -> None:
        """Give each candidate ``js`` the answers it lacks to K (one call: they all lack the same number)."""
        if js:
            more = rollout_fn([self.pool[cand[j]] for j in js], self.k - len(groups[js[0]]))
            for j, g in zip(js, more, strict=True):
                groups[j].extend(g)

    # -- checkpoint state -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {**super().state_dict(), **self.questions.state_dict(), **self.levels.state_dict("level_")}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.questions.load_state_dict(state)
        self.levels.load_state_dict(state, "level_")
