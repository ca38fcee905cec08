"""Seed-mean curves and where they reach a target: pure functions behind `lrn compare`.

A curve is a metric at evaluation steps with the generated tokens and elapsed seconds there. Crossings
are linear between evaluations, so steps-to-target is not quantised to ``eval_every``; speed-up
intervals come from a percentile bootstrap over seeds.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

TOLERANCE = 1e-9  # accuracies are fractions k/n: absorb float noise in `value >= target`
KINDS = {"steps": "step", "tokens": "tokens", "seconds": "seconds"}  # reported kind -> Curve field
RESAMPLES, LEVEL, BOOTSTRAP_SEED = 1000, 0.95, 0  # bootstrap: resamples, interval coverage, RNG seed


@dataclass(frozen=True)
class Curve:
    """A metric at evaluation points in step order, with the generated tokens and seconds there."""

    step: tuple[float, ...]
    value: tuple[float, ...]
    tokens: tuple[float, ...]
    seconds: tuple[float, ...]


def mean_curve(curves: Sequence[Curve]) -> Curve:
    """The seed mean: value, tokens and seconds averaged over the curves at the steps all of them have."""
    index = [{s: i for i, s in enumerate(c.step)} for c in curves]
    common = sorted(set(index[0]).intersection(*index[1:]))

    def mean(field: str) -> tuple[float, ...]:
        return tuple(statistics.fmean(getattr(c, field)[ix[s]] for c, ix in zip(curves, index, strict=True))
                     for s in common)

    return Curve(tuple(common), mean("value"), mean("tokens"), mean("seconds"))


def default_target(curves: Sequence[Curve]) -> float:
    """The default target: the best value of the baseline's seed-mean curve."""
    return max(mean_curve(curves).value)


def to_target(curve: Curve, target: float) -> dict[str, float]:
    """Step, tokens and seconds (keyed by KINDS) where ``curve`` first reaches ``target``, linear between
    the evaluations before and at the crossing; the first evaluation's if it already does; inf if never.

    >>> c = Curve((0, 10, 20), (0.25, 0.5, 1.0), (0, 100, 300), (1, 2, 4))
    >>> to_target(c, 0.75), to_target(c, 0.25)["steps"], to_target(c, 1.5)["steps"]
    ({'steps': 15.0, 'tokens': 200.0, 'seconds': 3.0}, 0, inf)
    """
    for i, value in enumerate(curve.value):
        if value >= target - TOLERANCE:
            if i == 0:
                return {k: getattr(curve, f)[0] for k, f in KINDS.items()}
            before = curve.value[i - 1]
            frac = min(1.0, (target - before) / (value - before))
            return {k: getattr(curve, f)[i - 1] + frac * (getattr(curve, f)[i] - getattr(curve, f)[i - 1])
                    for k, f in KINDS.items()}
    return dict.fromkeys(KINDS, math.inf)


def ratio(base: float, mine: float) -> float:
    """``base / mine`` over [0, inf] (never reached = inf, so a group that never gets there scores 0);
    nan where undefined: both zero, both never, or either unknown."""
    if math.isnan(base) or math.isnan(mine) or (base == mine and base in (0.0, math.inf)):
        return math.nan
    return math.inf if mine == 0 or math.isinf(base) else base / mine


def percentile_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` interval of ``values`` by order statistics (no interpolation, so inf is fine).

    >>> percentile_interval(range(1000)), percentile_interval([2.0, 1.0, math.inf], 0.5)
    ((25, 974), (1.0, inf))
    """
    ordered = sorted(values)
    cut = int((1 - level) / 2 * len(ordered))
    return ordered[cut], ordered[len(ordered) - 1 - cut]


def bootstrap(base: Sequence[Curve], mine: Sequence[Curve], target: float | None,
              resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict[str, tuple[float, float] | None]:
    """A LEVEL percentile interval of each speed-up: seeds resampled with replacement within each group,
    seed-mean curves, the target (when it is the default, ``target`` None) and the ratio recomputed.
    Resamples where the ratio is undefined are left out; None if all are."""
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {k: [] for k in KINDS}
    for _ in range(resamples):
        b, m = rng.choices(base, k=len(base)), rng.choices(mine, k=len(mine))
        goal = default_target(b) if target is None else target
        hb, hm = to_target(mean_curve(b), goal), to_target(mean_curve(m), goal)
        for k in KINDS:
            if not math.isnan(r := ratio(hb[k], hm[k])):
                draws[k].append(r)
    return {k: percentile_interval(v) if v else None for k, v in draws.items()}
