"""Replay a predictive run's probe buffer to compare probe settings without training again.

``sampler=predictive`` keeps, in its checkpoint, every group it generated (up to ``replay_size``): the
prompt features the policy had when the group was generated, its right answers of K, and the step. This
script replays those groups in order, as the sampler saw them: before step t it fits a probe with the
given settings to the groups of the steps before t (warm started, ``fit_steps`` Newton steps, as the
sampler does), predicts the groups of step t, then adds them. It reports, per setting, over steps 2..T:

- ``brier``: mean over answers of (p - y)^2 (what the run logs as ``sampler/brier_probe``);
- ``logloss``: binomial log-loss per answer (the probe's own objective, out of sample);
- ``bb_nll``: beta-binomial negative log-likelihood per group of the right-answer counts under the
  prior Beta(s p, s (1 - p)), s the prior strength (auto: the sampler's estimate, or a number); the
  prior the Thompson draws come from, so this judges the strength too;
- ``mixed_brier``: Brier score of P(K answers mixed) under that prior against whether the group was mixed
  (the quantity the sampler ranks by).

The groups were chosen by the run's own probe (and 10% uniformly), so this measures prediction on the
groups such a sampler generates, not on the pool at large.

    python benchmarks/predictive_probe.py <run dir>/checkpoints/step_60 --l2 0.1,1,10,100 --replay-decay 0.8,0.9,0.97
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from lrn.checkpoint import read_tree
from lrn.samplers.frontier import p_mixed
from lrn.samplers.predictive import DEFAULT_STRENGTH, P_CLIP, STRENGTH_RANGE, beta_binomial_strength
from lrn.samplers.probe import ReplayProbe


def gammaln(x: np.ndarray) -> np.ndarray:
    return torch.special.gammaln(torch.as_tensor(x, dtype=torch.float64)).numpy()


def betaln(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return gammaln(a) + gammaln(b) - gammaln(a + b)


def load(ckpt: Path) -> dict[str, np.ndarray]:
    state = read_tree(ckpt, "state")["sampler"]
    probe = ReplayProbe(int(np.asarray(state["probe_x"]).shape[1]), len(state["probe_right"]), 1.0, 1.0, 1)
    probe.load_state_dict(state)
    idx = probe.rows()
    return {"x": probe.x[idx], "right": probe.right[idx], "made": probe.made[idx], "step": probe.step[idx]}


def replay(data: dict[str, np.ndarray], l2: float, decay: float, strength: str | float, fit_steps: int
           ) -> dict[str, float]:
    probe = ReplayProbe(data["x"].shape[1], len(data["step"]), decay, l2, fit_steps)
    steps = np.unique(data["step"])
    out = {"brier": [], "logloss": [], "bb_nll": [], "mixed_brier": [], "answers": 0, "groups": 0}
    for t in steps:
        now = np.flatnonzero(data["step"] == t)
        probe.fit(int(t))
        p = np.clip(probe.predict(data["x"][now]), P_CLIP, 1 - P_CLIP)
        if t > steps[0]:  # the first step's predictions come from an unfitted probe
            s = strength
            if strength == "auto":
                seen = probe.rows()
                seen = seen[probe.step[seen] > steps[0]]
                est = None
                if len(seen):
                    est = beta_binomial_strength(probe.right[seen], probe.made[seen], probe.pred_probe[seen],
                                                 probe.weights(int(t), seen))
                s = DEFAULT_STRENGTH if est is None else float(np.clip(est, *STRENGTH_RANGE))
            r, n = data["right"][now], data["made"][now]
            out["brier"].append(np.sum(n * p ** 2 - 2 * p * r + r))
            out["logloss"].append(-np.sum(r * np.log(p) + (n - r) * np.log(1 - p)))
            a, b = s * p, s * (1 - p)
            log_choose = gammaln(n + 1) - gammaln(r + 1) - gammaln(n - r + 1)
            out["bb_nll"].append(-np.sum(log_choose + betaln(r + a, n - r + b) - betaln(a, b)))
            mixed = ((r > 0) & (r < n)).astype(float)
            out["mixed_brier"].append(np.sum((p_mixed(a, b, int(n[0])) - mixed) ** 2))
            out["answers"] += n.sum()
            out["groups"] += len(now)
        for j, pj in zip(now, p, strict=True):
            probe.add(data["x"][j], data["right"][j], int(data["made"][j]), int(t), float(pj), float(pj))
    return {"brier": sum(out["brier"]) / out["answers"], "logloss": sum(out["logloss"]) / out["answers"],
            "bb_nll": sum(out["bb_nll"]) / out["groups"], "mixed_brier": sum(out["mixed_brier"]) / out["groups"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint directories (step_N) of predictive runs")
    parser.add_argument("--l2", default="1")
    parser.add_argument("--replay-decay", default="0.9")
    parser.add_argument("--strength", default="auto", help="comma list: auto and/or numbers")
    parser.add_argument("--fit-steps", type=int, default=4)
    args = parser.parse_args()
    runs = [load(c) for c in args.checkpoints]
    strengths = [s if s == "auto" else float(s) for s in args.strength.split(",")]
    print("| l2 | replay_decay | prior strength | brier | logloss | bb_nll | mixed_brier |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for l2, decay, s in itertools.product(map(float, args.l2.split(",")), map(float, args.replay_decay.split(",")),
                                          strengths):
        scores = [replay(data, l2, decay, s, args.fit_steps) for data in runs]
        mean = {k: np.mean([sc[k] for sc in scores]) for k in scores[0]}
        print(f"| {l2:g} | {decay:g} | {s} | {mean['brier']:.4f} | {mean['logloss']:.4f} | {mean['bb_nll']:.4f} | "
              f"{mean['mixed_brier']:.4f} |")


if __name__ == "__main__":
    main()
