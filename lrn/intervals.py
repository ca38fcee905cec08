"""Intervals for `lrn compare`: t intervals for means and differences, bootstrap intervals for speed-ups.

Speed-ups (baseline's amount to a target over a group's, both read on seed-mean curves) get a bootstrap:
seeds are resampled with replacement, *jointly* for both groups when they ran the same seeds (paired:
resample the seed indices once and take those seeds from both groups, so an effect a seed has on both
cancels), independently within each group otherwise (unpaired). The interval is then built from the
resampled ratios by one of METHODS; METHOD is the one that calibrated best on synthetic curves with a
known speed-up (``benchmarks/compare_calibration.py``, docs/compare.md):

- ``percentile``: the 2.5% and 97.5% points of the resampled ratios.
- ``bca``: bias-corrected and accelerated percentiles (acceleration from the leave-one-seed-out jackknife).
- ``t``: log-ratio +- t quantile x bootstrap standard error of the log-ratio. The standard error is read
  robustly (half the 15.9%-84.1% range, so a few resamples that never reach the target do not make it
  infinite) and scaled by sqrt(n / (n - 1)): a bootstrap of n seeds understates a mean's variance by
  (n - 1) / n. Degrees of freedom n - 1 (paired) or Welch-Satterthwaite from each group's share (unpaired).
- ``t-jackknife``: the same with the jackknife standard error.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lrn.curves import KINDS, Stack

LEVEL, RESAMPLES, BOOTSTRAP_SEED = 0.95, 2000, 0  # interval coverage, bootstrap resamples, RNG seed
METHODS = ("percentile", "bca", "t", "t-jackknife")
METHOD = "t"
MIN_SEEDS = 5  # fewer seeds than this: a warning (intervals undercover, docs/compare.md)
NORMAL = statistics.NormalDist()


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its LEVEL interval (lo, hi None where there is none: one seed, or by definition)."""

    value: float
    lo: float | None = None
    hi: float | None = None


# -- Student's t quantile (no SciPy in the environment) ------------------------------------------------

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return max(0.0, min(1.0, x))
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (real, > 0) degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on :func:`t_cdf`).

    >>> [round(t_quantile(0.975, df), 3) for df in (1, 2, 4, 9, 1e6)]
    [12.706, 4.303, 2.776, 2.262, 1.96]
    """
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2.0


# -- means and differences -------------------------------------------------------------------------

def mean_estimate(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """The mean with its t interval (mean +- t_{n-1} s / sqrt(n)); no interval for one value.

    >>> e = mean_estimate([1.0, 2.0, 3.0])  # s = 1, t_2 = 4.303: 2 +- 4.303 / sqrt(3) = 2 +- 2.484
    >>> e.value, round(e.lo, 3), round(e.hi, 3)
    (2.0, -0.484, 4.484)
    """
    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        return Estimate(mean)
    half = t_quantile((1 + level) / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half)


def difference(mine: Sequence[float], base: Sequence[float], paired: bool, level: float = LEVEL) -> Estimate:
    """``mean(mine) - mean(base)`` with a t interval: on the per-seed differences where ``paired`` (the two
    lists are the same seeds in the same order), Welch's otherwise.

    >>> difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.0], paired=True)  # every seed +1: no spread at all
    Estimate(value=1.0, lo=1.0, hi=1.0)
    """
    if paired:
        return mean_estimate([m - b for m, b in zip(mine, base, strict=True)], level)
    diff = statistics.fmean(mine) - statistics.fmean(base)
    if len(mine) < 2 or len(base) < 2:
        return Estimate(diff)
    vm, vb = statistics.variance(mine) / len(mine), statistics.variance(base) / len(base)
    if vm + vb == 0:
        return Estimate(diff, diff, diff)
    df = (vm + vb) ** 2 / (vm ** 2 / (len(mine) - 1) + vb ** 2 / (len(base) - 1))
    half = t_quantile((1 + level) / 2, df) * math.sqrt(vm + vb)
    return Estimate(diff, diff - half, diff + half)


# -- speed-ups -------------------------------------------------------------------------------------

def ratio(base: np.ndarray, mine: np.ndarray) -> np.ndarray:
    """``base / mine`` over [0, inf] (never reached = inf, so a group that never gets there scores 0); nan
    where undefined: both zero, both never, or either unknown."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(mine == 0, math.inf, base / np.where(mine == 0, 1.0, mine))
    undefined = np.isnan(base) | np.isnan(mine) | ((base == mine) & ((base == 0) | np.isinf(base)))
    return np.where(undefined, math.nan, np.where(np.isinf(base) & ~np.isnan(mine), math.inf, out))


def order_stat(sorted_values: np.ndarray, p: float) -> float:
    """The ``p`` point of sorted values by order statistic (no interpolation, so inf is fine)."""
    return float(sorted_values[min(len(sorted_values) - 1, max(0, int(p * len(sorted_values))))])


def robust_se(logs: np.ndarray) -> float:
    """Half the 15.9%-84.1% range of ``logs`` (sd for a normal sample; inf if those points are infinite)."""
    s = np.sort(logs)
    lo, hi = order_stat(s, NORMAL.cdf(-1.0)), order_stat(s, NORMAL.cdf(1.0))
    return (hi - lo) / 2 if math.isfinite(lo) and math.isfinite(hi) else math.inf


def jackknife(stat, n: int) -> np.ndarray:
    """``stat(index)`` for each leave-one-out index row of 0..n-1."""
    return stat(np.array([[j for j in range(n) if j != i] for i in range(n)]))


def acceleration(*jacks: np.ndarray) -> float:
    """BCa's acceleration from jackknife values (one array per independently resampled group); 0 where
    it cannot be computed (a jackknife value not finite)."""
    u = np.concatenate([j.mean() - j for j in jacks])
    if not np.isfinite(u).all() or not (u ** 2).sum() > 0:
        return 0.0
    return float((u ** 3).sum() / (6 * (u ** 2).sum() ** 1.5))


@dataclass
class Draws:
    """What the intervals of one speed-up are built from, all on the log scale: the point, the bootstrap
    resamples, the jackknife values, and (unpaired) each group's own resampled log amounts."""

    point: float
    boot: np.ndarray
    jack: list[np.ndarray]
    sizes: list[int]
    parts: list[np.ndarray] | None  # unpaired: log base amounts, log group amounts


def interval(d: Draws, method: str, level: float = LEVEL) -> tuple[float, float]:
    """The LEVEL interval of exp(point) by ``method`` (see the module docstring)."""
    boot = d.boot[~np.isnan(d.boot)]
    alpha = (1 - level) / 2
    if method == "percentile":
        s = np.sort(boot)
        return math.exp(order_stat(s, alpha)), math.exp(order_stat(s, 1 - alpha))
    if method == "bca":
        below = (np.sum(boot < d.point) + 0.5 * np.sum(boot == d.point)) / len(boot)
        z0 = NORMAL.inv_cdf(min(max(below, 1e-6), 1 - 1e-6))
        a = acceleration(*d.jack)
        ends = []
        for z in (NORMAL.inv_cdf(alpha), NORMAL.inv_cdf(1 - alpha)):
            ends.append(NORMAL.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))))
        s = np.sort(boot)
        return math.exp(order_stat(s, ends[0])), math.exp(order_stat(s, ends[1]))
    if method == "t":
        if d.parts is None:  # paired: one sample of n seeds
            (n,) = d.sizes
            se, df = robust_se(boot) * math.sqrt(n / (n - 1)), n - 1
        else:
            v = [robust_se(p) ** 2 * n / (n - 1) for p, n in zip(d.parts, d.sizes, strict=True)]
            se = math.sqrt(sum(v))
            df = sum(v) ** 2 / sum(x ** 2 / (n - 1) for x, n in zip(v, d.sizes, strict=True)) if se > 0 else 1.0
            df = df if math.isfinite(df) else min(d.sizes) - 1
    elif method == "t-jackknife":
        var = [(n - 1) / n * float(np.sum((j - j.mean()) ** 2)) for j, n in zip(d.jack, d.sizes, strict=True)]
        se = math.sqrt(sum(var)) if all(np.isfinite(j).all() for j in d.jack) else math.inf
        if len(var) == 1 or se == 0 or not math.isfinite(se):
            df = min(d.sizes) - 1
        else:
            df = sum(var) ** 2 / sum(x ** 2 / (n - 1) for x, n in zip(var, d.sizes, strict=True))
    else:
        raise ValueError(f"unknown interval method {method!r}; one of {', '.join(METHODS)}")
    if not math.isfinite(se):
        return 0.0, math.inf
    half = t_quantile(1 - alpha, max(df, 1.0)) * se
    return math.exp(d.point - half), math.exp(d.point + half)


def speedup_draws(base: Stack, mine: Stack, targets: Sequence[float], paired: bool,
                  resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> list[dict[str, Draws | None]]:
    """For each target and kind, the log speed-up (base's amount over mine's, on seed-mean curves) and its
    resamples; None where the speed-up itself is undefined (either seed-mean curve never reaches the
    target, or reaches it at zero). ``paired``: ``base`` and ``mine`` hold the same seeds in the same order."""
    rng = np.random.default_rng(seed)
    nb, nm = len(base), len(mine)
    ib = rng.integers(0, nb, size=(resamples, nb))
    im = ib if paired else rng.integers(0, nm, size=(resamples, nm))
    out = []
    for target in targets:
        pb, pm = base.mean_crossings(np.arange(nb)[None], target), mine.mean_crossings(np.arange(nm)[None], target)
        bb, bm = base.mean_crossings(ib, target), mine.mean_crossings(im, target)
        jb = jackknife(lambda ix, t=target: base.mean_crossings(ix, t), nb) if nb > 1 else None
        jm = jackknife(lambda ix, t=target: mine.mean_crossings(ix, t), nm) if nm > 1 else None
        row: dict[str, Draws | None] = {}
        for k in KINDS:
            r = float(ratio(pb[k], pm[k])[0])
            if not (math.isfinite(r) and r > 0):
                row[k] = None
                continue
            with np.errstate(divide="ignore"):
                boot = np.log(ratio(bb[k], bm[k]))
                if paired:
                    jack = [np.log(ratio(jb[k], jm[k]))] if jb is not None else []
                    parts = None
                else:
                    full_b, full_m = np.log(pb[k]), np.log(pm[k])
                    jack = ([np.log(jb[k]) - full_m] if jb is not None else []) + \
                           ([full_b - np.log(jm[k])] if jm is not None else [])
                    parts = [np.log(bb[k]), np.log(bm[k])]
            row[k] = Draws(math.log(r), boot, jack, [nb] if paired else [nb, nm], parts)
        out.append(row)
    return out


def speedups(base: Stack, mine: Stack, targets: Sequence[float], paired: bool, method: str = METHOD,
             resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = LEVEL
             ) -> list[dict[str, Estimate | None]]:
    """Each target's speed-ups (keyed by KINDS) with their LEVEL interval by ``method``; no interval with a
    single seed in a group; None where the speed-up is undefined."""
    out = []
    for row in speedup_draws(base, mine, targets, paired, resamples, seed):
        est: dict[str, Estimate | None] = {}
        for k, d in row.items():
            if d is None:
                est[k] = None
            elif min(len(base), len(mine)) < 2:  # one seed: nothing to resample
                est[k] = Estimate(math.exp(d.point))
            else:
                est[k] = Estimate(math.exp(d.point), *interval(d, method, level))
        out.append(est)
    return out
