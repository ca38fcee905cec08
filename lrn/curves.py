"""Curves and the numbers read off them: pure functions behind `lrn compare`.

A curve is a metric at evaluation steps with the generated tokens and training seconds there. Every
reading is linear between evaluations, never beyond them: where a curve first reaches a target (so
steps-to-target is not quantised to ``eval_every``), its value at a budget of steps, tokens or seconds,
and its mean value over a range of tokens (the area under it, divided by the range).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-9  # accuracies are fractions k/n: absorb float noise in `value >= target`
KINDS = {"steps": "step", "tokens": "tokens", "seconds": "seconds"}  # reported kind -> Curve field
# The default target grid: these fractions of the way from the baseline's start to its plateau. The
# plateau itself (1.0) is left out on purpose: the curve is flat there, so where it crosses that level is
# decided by evaluation noise (docs/compare.md has the calibration that chose them).
FRACTIONS = (0.25, 0.5, 0.75, 0.9)
PLATEAU_SHARE = 0.25  # the plateau: the seed-mean of the last quarter of the baseline's evaluations
BUDGET_SHARES = (0.25, 0.5, 1.0)  # default budgets: these shares of the baseline's shortest seed


@dataclass(frozen=True)
class Curve:
    """A metric at evaluation points in step order, with the generated tokens and seconds there."""

    step: tuple[float, ...]
    value: tuple[float, ...]
    tokens: tuple[float, ...]
    seconds: tuple[float, ...]


@dataclass(frozen=True)
class Grid:
    """Targets fixed before any group is compared: ``fractions`` of the way from ``start`` (the baseline's
    seed mean at its first evaluation) to ``plateau`` (the mean of its seed-mean curve's last
    ``plateau_points`` of ``points`` evaluations)."""

    start: float
    plateau: float
    plateau_points: int
    points: int
    fractions: tuple[float, ...]
    targets: tuple[float, ...]


def mean_curve(curves: Sequence[Curve]) -> Curve:
    """The seed mean: value, tokens and seconds averaged over the curves at the steps all of them have."""
    index = [{s: i for i, s in enumerate(c.step)} for c in curves]
    common = sorted(set(index[0]).intersection(*index[1:]))

    def mean(field: str) -> tuple[float, ...]:
        return tuple(statistics.fmean(getattr(c, field)[ix[s]] for c, ix in zip(curves, index, strict=True))
                     for s in common)

    return Curve(tuple(common), mean("value"), mean("tokens"), mean("seconds"))


def target_grid(mean: Curve, fractions: Sequence[float] = FRACTIONS) -> Grid:
    """The default targets, from the baseline's seed-mean curve; ValueError if it does not rise.

    >>> g = target_grid(Curve((0, 10, 20, 30, 40), (0.2, 0.3, 0.35, 0.4, 0.44), (0,) * 5, (0,) * 5))
    >>> g.plateau_points, round(g.plateau, 4), [round(t, 4) for t in g.targets]  # plateau: mean of 0.4, 0.44
    (2, 0.42, [0.255, 0.31, 0.365, 0.398])
    """
    points = len(mean.value)
    last = math.ceil(PLATEAU_SHARE * points)
    start, plateau = mean.value[0], statistics.fmean(mean.value[-last:])
    if not plateau > start:
        raise ValueError(f"the baseline's plateau ({plateau:.4g}, mean of its last {last} evaluation(s)) is not "
                         f"above its start ({start:.4g})")
    return Grid(start, plateau, last, points, tuple(fractions), tuple(start + f * (plateau - start) for f in fractions))


def crossings(value: np.ndarray, x: np.ndarray, target: float | np.ndarray) -> np.ndarray:
    """Where each row of ``value`` (rows x evaluations) first reaches ``target`` (one, or one per row), read
    on the same cell of ``x``: linear between the evaluations before and at the crossing, the first
    evaluation's x if that one already reaches it, inf if none does."""
    value, x = np.atleast_2d(value), np.broadcast_to(x, np.shape(np.atleast_2d(value)))
    target = np.asarray(target, dtype=float).reshape(-1)
    hit = value >= target[:, None] - TOLERANCE
    first = hit.argmax(axis=1)
    rows = np.arange(len(value))
    before = np.maximum(first - 1, 0)
    v0, v1 = value[rows, before], value[rows, first]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(first == 0, 0.0, np.minimum(1.0, (target - v0) / (v1 - v0)))
    out = x[rows, before] + frac * (x[rows, first] - x[rows, before])
    return np.where(hit.any(axis=1), out, math.inf)


def to_target(curve: Curve, target: float) -> dict[str, float]:
    """Step, tokens and seconds (keyed by KINDS) where ``curve`` first reaches ``target`` (:func:`crossings`).

    >>> c = Curve((0, 10, 20), (0.25, 0.5, 1.0), (0, 100, 300), (1, 2, 4))
    >>> to_target(c, 0.75), to_target(c, 0.25)["steps"], to_target(c, 1.5)["steps"]
    ({'steps': 15.0, 'tokens': 200.0, 'seconds': 3.0}, 0.0, inf)
    """
    value = np.asarray(curve.value, dtype=float)
    return {k: float(crossings(value, np.asarray(getattr(curve, f), dtype=float), target)[0])
            for k, f in KINDS.items()}


def value_at(curve: Curve, kind: str, budget: float) -> float:
    """The curve's value where its ``kind`` (steps, tokens, seconds) equals ``budget``, linear between the
    evaluations around it; nan outside the evaluated range (no extrapolation) or where x is unknown.

    >>> c = Curve((0, 10, 20), (0.2, 0.4, 0.5), (0, 100, 300), (0, 5, 10))
    >>> value_at(c, "tokens", 200), value_at(c, "steps", 20), value_at(c, "seconds", 11)
    (0.45, 0.5, nan)
    """
    x = np.asarray(getattr(curve, KINDS[kind]), dtype=float)
    if np.isnan(x).any() or not x[0] <= budget <= x[-1] or (np.diff(x) < 0).any():
        return math.nan
    return float(np.interp(budget, x, curve.value))


def mean_over_tokens(curve: Curve, lo: float, hi: float) -> float:
    """The area under value-vs-tokens between ``lo`` and ``hi`` over ``hi - lo``: the curve's average value
    over that range of generated tokens (trapezoids on the linear interpolation); nan if not covered.

    >>> mean_over_tokens(Curve((0, 1, 2), (0.0, 1.0, 1.0), (0, 100, 300), (0, 1, 2)), 0, 200)  # (50 + 100) / 200
    0.75
    """
    x = np.asarray(curve.tokens, dtype=float)
    if not hi > lo or np.isnan(x).any() or not x[0] <= lo or not hi <= x[-1] or (np.diff(x) < 0).any():
        return math.nan
    inside = x[(x > lo) & (x < hi)]
    points = np.concatenate(([lo], inside, [hi]))
    values = np.interp(points, x, curve.value)
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(points)) / (hi - lo))


@dataclass(frozen=True)
class Stack:
    """A group's seed curves at the evaluation steps all of them have, as arrays (seeds x evaluations),
    in the order given (by seed, so that two groups with the same seeds line up)."""

    step: np.ndarray
    value: np.ndarray
    tokens: np.ndarray
    seconds: np.ndarray

    @classmethod
    def of(cls, curves: Sequence[Curve]) -> Stack:
        common = mean_curve(curves).step
        rows = [[c.step.index(s) for s in common] for c in curves]

        def field(name: str) -> np.ndarray:
            return np.array([[getattr(c, name)[i] for i in r] for c, r in zip(curves, rows, strict=True)], float)

        return cls(np.array(common, float), field("value"), field("tokens"), field("seconds"))

    def __len__(self) -> int:
        return len(self.value)

    def mean_crossings(self, index: np.ndarray, target: float) -> dict[str, np.ndarray]:
        """Steps, tokens and seconds where the seed mean of each row of seed ``index`` (resamples x seeds)
        first reaches ``target``."""
        value = self.value[index].mean(axis=1)
        return {"steps": crossings(value, self.step, target),
                "tokens": crossings(value, self.tokens[index].mean(axis=1), target),
                "seconds": crossings(value, self.seconds[index].mean(axis=1), target)}
