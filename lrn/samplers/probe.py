"""A logistic probe of a question's success rate on prompt features, fit online to a decayed replay buffer.

Every group the run generates leaves one row in the buffer: the features its prompt had when it was
generated (the policy changes, so features are never recomputed), its right answers of ``made``, the
step, and what was predicted for it before its rollouts (for calibration). The probe predicts
p = sigmoid(theta . (x - mu) / sd + bias), fit by a few Newton (IRLS) steps per training step, warm
started from the last fit, to the binomial likelihood of the buffer, each row weighted by
``decay`` ** (its age in steps), with an L2 penalty ``l2`` on theta (not on the bias). mu and sd are
the weighted mean and standard deviation of the buffer's features, recomputed at each fit.

The buffer is a ring of ``capacity`` rows: when full, the oldest row is overwritten. Everything it
holds is checkpoint state (:meth:`ReplayProbe.state_dict`).
"""

from __future__ import annotations

import numpy as np
import torch

MAX_HALVINGS = 20  # backtracking line search of one Newton step


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class ReplayProbe:
    def __init__(self, dim: int, capacity: int, decay: float, l2: float, fit_steps: int):
        self.dim, self.capacity, self.decay, self.l2, self.fit_steps = dim, capacity, decay, l2, fit_steps
        self.x = np.zeros((capacity, dim), np.float32)
        self.right, self.made = np.zeros(capacity), np.zeros(capacity)
        self.step = np.zeros(capacity, np.int64)
        self.pred, self.pred_probe = np.zeros(capacity), np.zeros(capacity)  # predicted before the rollouts
        self.size = self.head = 0
        self.theta, self.bias = np.zeros(dim), 0.0
        self.mu, self.sd = np.zeros(dim), np.ones(dim)

    # -- the buffer ---------------------------------------------------------------------------------

    def add(self, x: np.ndarray, right: float, made: int, step: int, pred: float, pred_probe: float) -> None:
        i = self.head
        self.x[i], self.right[i], self.made[i], self.step[i] = x, right, made, step
        self.pred[i], self.pred_probe[i] = pred, pred_probe
        self.head = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def rows(self, since: int | None = None) -> np.ndarray:
        """Indices of the filled rows, oldest first (those from step ``since`` on, if given)."""
        idx = (np.arange(self.size) + (self.head if self.size == self.capacity else 0)) % self.capacity
        return idx if since is None else idx[self.step[idx] >= since]

    def weights(self, step: int, idx: np.ndarray) -> np.ndarray:
        return self.decay ** (step - self.step[idx]).astype(float)

    # -- the fit ------------------------------------------------------------------------------------

    def predict(self, x: np.ndarray) -> np.ndarray:
        """p for feature rows ``x`` [n, dim]."""
        return sigmoid(((np.asarray(x, float) - self.mu) / self.sd) @ self.theta + self.bias)

    def fit(self, step: int) -> None:
        """Re-standardise and take up to ``fit_steps`` damped Newton steps on the buffer as of ``step``."""
        idx = self.rows()
        if len(idx) == 0:
            return
        w = self.weights(step, idx)
        x = self.x[idx].astype(float)
        self.mu = np.average(x, axis=0, weights=w)
        self.sd = np.sqrt(np.average((x - self.mu) ** 2, axis=0, weights=w)) + 1e-6
        design = np.hstack([(x - self.mu) / self.sd, np.ones((len(idx), 1))])
        right, wrong = w * self.right[idx], w * (self.made[idx] - self.right[idx])
        penalty = np.full(self.dim + 1, self.l2)
        penalty[-1] = 1e-6  # the bias is not shrunk; the tiny ridge keeps the Hessian invertible

        def loss(params: np.ndarray) -> float:
            z = design @ params
            return float(right @ np.logaddexp(0, -z) + wrong @ np.logaddexp(0, z) + 0.5 * penalty @ params ** 2)

        params = np.append(self.theta, self.bias)
        current = loss(params)
        for _ in range(self.fit_steps):
            p = sigmoid(design @ params)
            grad = design.T @ ((right + wrong) * p - right) + penalty * params
            hess = (design * ((right + wrong) * p * (1 - p))[:, None]).T @ design + np.diag(penalty)
            delta = np.linalg.solve(hess, grad)
            t = 1.0
            for _ in range(MAX_HALVINGS):
                trial = loss(params - t * delta)
                if trial <= current:
                    break
                t /= 2
            else:
                break  # no descent along the Newton direction: converged to rounding
            params, current = params - t * delta, trial
            if np.max(np.abs(t * delta)) < 1e-6:
                break
        self.theta, self.bias = params[:-1], float(params[-1])

    def params(self) -> tuple:
        return self.theta, self.bias, self.mu, self.sd

    def set_params(self, params: tuple) -> None:
        self.theta, self.bias, self.mu, self.sd = params

    # -- checkpoint state ---------------------------------------------------------------------------

    def state_dict(self, prefix: str = "probe_") -> dict:
        return {f"{prefix}x": torch.from_numpy(self.x.copy()), f"{prefix}right": self.right.copy(),
                f"{prefix}made": self.made.copy(), f"{prefix}step": self.step.copy(), f"{prefix}pred": self.pred.copy(),
                f"{prefix}pred_probe": self.pred_probe.copy(), f"{prefix}size": self.size, f"{prefix}head": self.head,
                f"{prefix}theta": self.theta.copy(), f"{prefix}bias": self.bias, f"{prefix}mu": self.mu.copy(),
                f"{prefix}sd": self.sd.copy()}

    def load_state_dict(self, state: dict, prefix: str = "probe_") -> None:
        x = np.asarray(state[f"{prefix}x"], np.float32)
        if x.shape != self.x.shape:
            raise ValueError(f"the probe's replay buffer holds {x.shape[0]} rows of {x.shape[1]} features, "
                             f"this run's {self.capacity} of {self.dim}")
        self.x = x.copy()
        for name in ("right", "made", "pred", "pred_probe", "theta", "mu", "sd"):
            setattr(self, name, np.asarray(state[f"{prefix}{name}"], float))
        self.step = np.asarray(state[f"{prefix}step"], np.int64)
        self.size, self.head, self.bias = int(state[f"{prefix}size"]), int(state[f"{prefix}head"]), float(
            state[f"{prefix}bias"])
