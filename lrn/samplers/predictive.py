"""Predictive sampling: predict each candidate's success rate before any rollout, generate only for the chosen.

Every rollout spent on a question whose K answers turn out all right or all wrong teaches nothing
(its group advantages are 0). Screening samplers (LILO, frontier) find mixed questions by spending
rollouts on candidates they then discard; this one spends none. Each step:

1. **Candidates.** ``pool_factor`` x batch questions drawn uniformly from the pool (no rollouts).
2. **Features.** One prompt-only, no-grad forward of the policy's transformer over the candidates: the
   final hidden state at the last prompt token (``lrn/features.py``; projected to ``features_dim`` by a
   fixed random matrix when the model is wider).
3. **Prediction.** A logistic probe on those features (``lrn/samplers/probe.py``), refit every step to
   the success counts of every group the run has generated (a replay buffer of their features as they
   were when generated, weighted ``replay_decay`` per step of age), predicts p for each candidate. It is
   the mean of a Beta prior of strength s, Beta(s p, s (1 - p)), which the question's own decayed counts
   (``decay`` per step, every answer the run made for it) update. s = ``prior_strength``, or with
   ``auto`` the strength the probe has earned: from the groups of the buffer, the spread of their right
   answers around the probe's predictions made *before* their rollouts (a beta-binomial moment
   estimate: Var(right) = n p (1 - p) (1 + (n - 1) / (s + 1))). A probe that predicts well gets a
   narrow prior; one that does not, a wide one and more exploration.
4. **Choice.** Thompson sampling on the probability that K answers are mixed: one draw p ~ Beta per
   candidate, score 1 - p^K - (1 - p)^K, the top batch x (1 - ``mix``) are chosen. The other
   batch x ``mix`` are the first candidates of the uniform draw: an unbiased sample that keeps the
   probe calibrated where the choice never looks (and measures uniform's mixed fraction in the run).
5. **Rollouts.** K answers for each chosen question, all of them trained on: a step costs uniform's
   rollouts plus the candidates' prompt-only forward.

Calibration is logged every step: the Brier score of the predictions against the answers of the
groups just generated, predicted vs observed success rate by decile of the prediction over the last
``CALIBRATION_STEPS`` steps, and the mixed fraction of the generated groups.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from lrn import distributed
from lrn.rollout import Rollout, RolloutFn
from lrn.samplers.base import DecayedCounts, Pick, Sampler, is_zero_signal, top_n
from lrn.samplers.frontier import p_mixed
from lrn.samplers.probe import ReplayProbe
from lrn.tasks import Problem

FeatureFn = Callable[[list[Problem]], np.ndarray]
CALIBRATION_STEPS = 10  # the deciles are read over the groups of this many last steps
DECILES = 10
P_CLIP = 1e-3  # the probe's p is kept in [P_CLIP, 1 - P_CLIP] as a Beta mean
STRENGTH_RANGE = (0.5, 100.0)  # auto prior strength is clipped to this range
DEFAULT_STRENGTH = 2.0  # auto's strength until the buffer holds groups predicted by a fitted probe


def thompson_mixed(a: np.ndarray, b: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """1 - p^k - (1 - p)^k for one draw p ~ Beta(a, b) per candidate: P(k answers are mixed | p)."""
    p = rng.beta(a, b)
    return 1.0 - p ** k - (1.0 - p) ** k


def beta_binomial_strength(right: np.ndarray, made: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> float | None:
    """s of a Beta(s p, s (1 - p)) spread of success rates around the predictions ``pred``, by moments.

    Under it, ``right`` of ``made`` has variance n p (1 - p) (1 + (n - 1) rho) with rho = 1 / (s + 1);
    rho is the weighted excess of the squared residuals over the binomial variance, relative to
    n (n - 1) p (1 - p). None when nothing informs it (no group of two answers or more).

    >>> beta_binomial_strength(np.array([0., 8.]), np.array([8., 8.]), np.array([.5, .5]), np.ones(2))
    0.0
    """
    v = pred * (1 - pred)
    excess = weights @ ((right - made * pred) ** 2 - made * v)
    scale = weights @ (made * (made - 1) * v)
    if scale <= 0:
        return None
    rho = excess / scale
    return float(1 / rho - 1) if rho > 0 else float("inf")


class PredictiveSampler(Sampler):
    def __init__(self, pool, batch_size: int, k: int, seed: int, features: FeatureFn, pool_factor: float = 4.0,
                 mix: float = 0.1, prior_strength: float | str = "auto", decay: float = 0.95,
                 replay_decay: float = 0.9, replay_size: int = 4096, l2: float = 1.0, features_dim: int = 256,
                 fit_steps: int = 4):
        super().__init__(pool, batch_size, k, seed, mix=0.0)  # the uniform share is drawn here, from the candidates
        self.features, self.share = features, mix
        self.n_candidates = max(batch_size, round(pool_factor * batch_size))
        self.prior_strength, self.features_dim, self.seed = prior_strength, features_dim, seed
        self.replay = (replay_size, replay_decay, l2, fit_steps)
        self.counts = DecayedCounts(len(pool), decay)
        self.probe: ReplayProbe | None = None  # built when the feature width is known
        self.projection: np.ndarray | None = None
        self.pending: dict[int, tuple[np.ndarray, float, float]] = {}  # this step's chosen: features, predictions

    # -- features and the probe ---------------------------------------------------------------------

    def _features(self, problems: list[Problem]) -> np.ndarray:
        """The candidates' features, projected to ``features_dim`` by a fixed random matrix (drawn from the
        seed, not from the sampler's RNG) when wider; the probe is built on the first call."""
        x = np.asarray(self.features(problems), np.float32)
        width = x.shape[1]
        if self.projection is None and width > self.features_dim > 0:
            gen = np.random.default_rng([self.seed, width, self.features_dim])
            self.projection = (gen.standard_normal((width, self.features_dim)) / np.sqrt(self.features_dim)
                               ).astype(np.float32)
        if self.projection is not None:
            x = x @ self.projection
        if self.probe is None:
            self.probe = ReplayProbe(x.shape[1], *self.replay)
        elif x.shape[1] != self.probe.dim:
            raise ValueError(f"the features have {x.shape[1]} columns, the probe was built for {self.probe.dim}")
        return x

    def strength(self, step: int) -> float:
        """The prior strength s: the configured one, or the beta-binomial estimate from the buffer (auto)."""
        if self.prior_strength != "auto":
            return float(self.prior_strength)
        probe = self.probe
        idx = probe.rows() if probe is not None else np.array([], int)
        idx = idx[probe.step[idx] > 1] if len(idx) else idx  # step 1's predictions came from an unfitted probe
        if len(idx) == 0:
            return DEFAULT_STRENGTH
        pred = np.clip(probe.pred_probe[idx], P_CLIP, 1 - P_CLIP)
        s = beta_binomial_strength(probe.right[idx], probe.made[idx], pred, probe.weights(step, idx))
        return DEFAULT_STRENGTH if s is None else float(np.clip(s, *STRENGTH_RANGE))

    def posterior(self, step: int, idx: np.ndarray, p_probe: np.ndarray, strength: float
                  ) -> tuple[np.ndarray, np.ndarray]:
        """(alpha, beta) of questions ``idx``: the prior Beta(s p, s (1 - p)) around the probe's p, plus
        each question's own decayed counts."""
        c = self.counts
        w = c.weights(step, idx)
        return strength * p_probe + c.right[idx] * w, strength * (1 - p_probe) + c.wrong[idx] * w

    # -- selection --------------------------------------------------------------------------------

    def select(self, step: int, rollout_fn: RolloutFn, n: int) -> Pick:
        t0 = time.perf_counter()
        drawn = self.draw_indices(self.n_candidates)  # a uniform draw, in random order
        x = self._features([self.pool[i] for i in drawn])
        t1 = time.perf_counter()
        self.probe.fit(step)
        # every rank holds the same features (lrn/features.py gathers them); rank 0's fit is every rank's,
        # so floating-point differences between machines cannot split the choice
        fit = distributed.broadcast_object((self.probe.params(), self.strength(step)))
        self.probe.set_params(fit[0])
        s = fit[1]
        p_probe = np.clip(self.probe.predict(x), P_CLIP, 1 - P_CLIP)
        a, b = self.posterior(step, drawn, p_probe, s)
        n_mix = round(self.share * n)
        rest = np.arange(n_mix, len(drawn))
        chosen = rest[top_n(thompson_mixed(a[rest], b[rest], self.k, self.rng), n - n_mix, self.rng)]
        picked = np.concatenate([np.arange(n_mix), chosen]).astype(int)
        mean = a / (a + b)
        self.pending = {int(drawn[j]): (x[j], float(mean[j]), float(p_probe[j])) for j in picked}
        t2 = time.perf_counter()
        problems = [self.pool[drawn[j]] for j in picked]
        groups = rollout_fn(problems, self.k)  # recorded: counts and replay buffer updated
        self.pending = {}
        stats = self._stats(step, groups, mean[picked], p_probe[picked], n_mix)
        stats.update({"sampler/candidates": float(len(drawn)), "sampler/prior_strength": s,
                      "sampler/pred_mixed_frac": float(np.mean(p_mixed(a[picked], b[picked], self.k))),
                      "perf/features_s": t1 - t0, "perf/probe_s": t2 - t1})
        if n_mix:
            stats["sampler/mix_questions"] = float(n_mix)
        return Pick(problems, groups, screened=groups, stats=stats)

    def record(self, step: int, groups: list[list[Rollout]]) -> None:
        for g in groups:
            i, right = self.index[g[0].problem.id], sum(r.reward for r in g)
            self.counts.add(i, step, right, len(g))
            if i in self.pending:
                x, pred, pred_probe = self.pending[i]
                self.probe.add(x, right, len(g), step, pred, pred_probe)

    # -- calibration ------------------------------------------------------------------------------

    def _stats(self, step: int, groups: list[list[Rollout]], pred: np.ndarray, pred_probe: np.ndarray,
               n_mix: int) -> dict[str, float]:
        rate = np.array([np.mean([r.reward for r in g]) for g in groups])
        mixed = np.array([not is_zero_signal(g) for g in groups], float)

        def brier(p: np.ndarray) -> float:  # mean over answers of (p - y)^2 = p^2 - 2 p rate + rate (y^2 = y)
            return float(np.mean(p ** 2 - 2 * p * rate + rate))

        stats = {"sampler/brier": brier(pred), "sampler/brier_probe": brier(pred_probe),
                 "sampler/mixed_frac": float(mixed.mean())}
        if n_mix:
            stats["sampler/mixed_frac_uniform"] = float(mixed[:n_mix].mean())
        probe = self.probe
        idx = probe.rows(since=step - CALIBRATION_STEPS + 1)
        if len(idx) >= DECILES:
            idx = idx[np.argsort(probe.pred[idx], kind="stable")]
            ece = 0.0
            for d, part in enumerate(np.array_split(idx, DECILES)):
                made = probe.made[part].sum()
                p, obs = float(probe.pred[part].mean()), float(probe.right[part].sum() / made)
                stats[f"sampler/calibration/d{d}_pred"], stats[f"sampler/calibration/d{d}_obs"] = p, obs
                ece += len(part) / len(idx) * abs(p - obs)
            stats["sampler/calibration/ece"] = ece
        return stats

    # -- checkpoint state -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        state = {**super().state_dict(), **self.counts.state_dict()}
        if self.probe is not None:
            state.update(self.probe.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.counts.load_state_dict(state)
        if "probe_x" in state:
            self.probe = ReplayProbe(int(np.asarray(state["probe_x"]).shape[1]), *self.replay)
            self.probe.load_state_dict(state)
