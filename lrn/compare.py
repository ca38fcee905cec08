"""`lrn compare`: how fast, and how well, each group of runs learns, against a baseline group.

A group's *seed-mean curve* is the mean over its seeds of the metric, the generated tokens and the
training seconds at the evaluation steps every seed has (lrn/runs.py loads and groups the runs). Against
it, for every group:

- **to target**: steps, tokens and seconds where the seed-mean curve first reaches each target of a grid
  fixed before any group is looked at (default: FRACTIONS of the way from the baseline's start to its
  plateau, lrn/curves.py), linear between evaluations; speed-up = baseline's amount / group's, with an
  interval (lrn/intervals.py: paired by seed where the two groups ran the same seeds).
- **at budget**: the metric at fixed budgets of steps, tokens and seconds (default: BUDGET_SHARES of the
  baseline's shortest seed), read on each seed's own curve and averaged, with t intervals; and the
  difference to the baseline's, paired by seed where possible.
- **area**: the mean of the metric over a token range every run covers (the area under metric vs tokens
  divided by the range).

With ``reference``, every ratio and difference is also given against that second group (e.g. the better
uniform), with its own interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lrn.curves import (
    BUDGET_SHARES,
    FRACTIONS,
    KINDS,
    Curve,
    Grid,
    Stack,
    mean_curve,
    mean_over_tokens,
    target_grid,
    to_target,
    value_at,
)
from lrn.intervals import LEVEL, METHOD, MIN_SEEDS, RESAMPLES, Estimate, difference, mean_estimate, speedups
from lrn.runs import (
    SECONDS_SOURCES,
    CompareError,
    Run,
    best_value,
    check_same_evaluation,
    choose_metric,
    final_value,
    find_baseline,
    find_runs,
    group_runs,
    run_curve,
    seconds_per_step,
    seconds_source,
    seed_of,
    varying_keys,
)

METHOD_NAMES = {
    "t": "t interval on the log speed-up, its standard error from the bootstrap",
    "t-jackknife": "t interval on the log speed-up, its standard error from the jackknife over seeds",
    "percentile": "percentile bootstrap interval",
    "bca": "BCa bootstrap interval",
}


@dataclass(frozen=True)
class Stat:
    """Median and range over a group's runs."""

    median: float
    lo: float
    hi: float


@dataclass
class TargetResult:
    """One group at one target: amounts to reach it and speed-ups (dicts keyed by KINDS)."""

    target: float
    fraction: float | None  # of the way from the baseline's start to its plateau; None for --targets
    reached: int  # seeds whose own curve reaches the target
    to_target: dict[str, float]  # on the seed-mean curve, interpolated; inf = not reached
    per_seed: dict[str, list[float]]  # each seed's own curve, in seed order
    early: bool  # the seed-mean curve crosses between its first two evaluations (see docs/compare.md)
    speedup: dict[str, Estimate | None]  # baseline's / group's; None where undefined
    vs_reference: dict[str, Estimate | None] = field(default_factory=dict)  # reference's / group's


@dataclass
class BudgetResult:
    """One group at one budget: the metric there, per seed and averaged, and its differences."""

    kind: str
    budget: float
    share: float | None  # of the baseline's shortest seed; None for a budget given as an option
    per_seed: list[float]  # nan where the seed's run ends before the budget
    accuracy: Estimate | None  # None unless every seed reaches the budget
    delta: Estimate | None  # group - baseline; None for the baseline itself or where either is unknown
    delta_reference: Estimate | None = None


@dataclass
class GroupSummary:
    """Everything reported for one group of runs (its runs in seed order)."""

    label: str
    runs: list[Run]
    baseline: bool
    reference: bool
    curve: Curve  # the seed-mean curve
    pairing: str  # how it is compared with the baseline: "paired", "unpaired" or "" (the baseline)
    pairing_reference: str
    targets: list[TargetResult]
    budgets: list[BudgetResult]
    area: Estimate | None  # mean metric over Comparison.area_range of tokens
    area_per_seed: list[float]
    area_delta: Estimate | None
    area_delta_reference: Estimate | None
    final: Stat
    best: Stat
    seconds_per_step: float

    @property
    def seeds(self) -> list:
        return [seed_of(r) for r in self.runs]


@dataclass
class Comparison:
    """The result of `lrn compare`."""

    metric: str
    keys: list[str]
    baseline: str
    reference: str | None
    targets: list[float]
    target_source: str
    grid: Grid | None  # None where --targets set the targets
    budgets: dict[str, list[tuple[float, float | None]]]  # kind -> (budget, share of the baseline's)
    budget_source: str
    area_range: tuple[float, float]  # tokens
    seconds: str  # where the seconds come from
    method: str  # the speed-up interval method, a key of METHOD_NAMES
    resamples: int
    level: float
    warnings: list[str]
    groups: list[GroupSummary]


def stat(values: Sequence[float]) -> Stat:
    """Median, min and max."""
    return Stat(statistics.median(values), min(values), max(values))


def seed_key(run: Run) -> tuple:
    """Runs in seed order (then path): two groups with the same seeds line up."""
    seed = seed_of(run)
    return (seed is None, str(type(seed)), seed if seed is not None else 0, str(run.path))


def paired(a: Sequence[Run], b: Sequence[Run]) -> bool:
    """Two groups (in seed order) ran the same seeds, each once: compare them seed by seed."""
    sa, sb = [seed_of(r) for r in a], [seed_of(r) for r in b]
    return None not in sa and len(set(sa)) == len(sa) and sa == sb


def default_budgets(curves: Sequence[Curve], shares: Sequence[float] = BUDGET_SHARES
                    ) -> dict[str, list[tuple[float, float | None]]]:
    """BUDGET_SHARES of the baseline's shortest seed (its last evaluation) in steps, tokens and seconds;
    a kind the runs did not log (nan) gets none."""
    out = {}
    for kind, name in KINDS.items():
        total = min(getattr(c, name)[-1] for c in curves)
        out[kind] = [] if math.isnan(total) else [(s * total, s) for s in shares]
    return out


def area_range(curves: Sequence[Curve]) -> tuple[float, float]:
    """The tokens every run covers: from the latest first evaluation to the earliest last one."""
    return max(c.tokens[0] for c in curves), min(c.tokens[-1] for c in curves)


def seconds_description(runs: Sequence[Run], metric: str) -> tuple[str, list[str]]:
    """Where the seconds come from, and a warning if the runs use different clocks."""
    counts: dict[str, int] = {}
    for run in runs:
        source = seconds_source(run.rows, metric)
        counts[source] = counts.get(source, 0) + 1
    if len(counts) == 1:
        return SECONDS_SOURCES[next(iter(counts))], []
    text = "; ".join(f"{SECONDS_SOURCES[s]}: {n} run(s)" for s, n in counts.items())
    return text, [f"warning: the runs' seconds come from different clocks ({text}); seconds are not comparable "
                  "across those runs"]


def compare_to(base: Sequence[Run], base_stack: Stack, mine: Sequence[Run], stack: Stack, targets: Sequence[float],
               force_unpaired: bool, method: str, resamples: int, level: float
               ) -> tuple[str, list[dict[str, Estimate | None]]]:
    """Pairing and speed-ups (base's amounts / mine's) at each target."""
    is_paired = not force_unpaired and paired(base, mine)
    return ("paired" if is_paired else "unpaired",
            speedups(base_stack, stack, targets, is_paired, method, resamples, level=level))


def summarise(groups: dict[str, list[Run]], baseline: str, metric: str, targets: Sequence[float] | None = None,
              fractions: Sequence[float] = FRACTIONS, budgets: dict[str, Sequence[float]] | None = None,
              reference: str | None = None, unpaired: bool = False, method: str = METHOD,
              resamples: int = RESAMPLES, level: float = LEVEL) -> Comparison:
    """Summaries of every group, baseline first (then the reference); see the module docstring.

    ``targets`` None: the default grid (``fractions`` of the baseline's way). ``budgets``: kind -> budgets,
    a missing kind gets the default. ``unpaired``: resample seeds within each group even where they match.
    """
    groups = {label: sorted(runs, key=seed_key) for label, runs in groups.items()}
    curves = {label: [run_curve(r.rows, metric) for r in runs] for label, runs in groups.items()}
    for label, runs in groups.items():
        if not mean_curve(curves[label]).step:
            raise CompareError(f"the runs of group {label} share no evaluation step "
                               f"({', '.join(str(r.path) for r in runs)}); leave out the one that differs")
    base_mean = mean_curve(curves[baseline])
    grid = None
    if targets is None:
        try:
            grid = target_grid(base_mean, fractions)
        except ValueError as e:
            raise CompareError(f"{e}: no target grid between them for baseline {baseline}; "
                               "set targets with --targets") from None
        targets = list(grid.targets)
    fraction_of = dict(zip(targets, grid.fractions, strict=True)) if grid else {}
    spend = default_budgets(curves[baseline])
    explicit = {k: [(float(b), None) for b in v] for k, v in (budgets or {}).items()}
    spend.update(explicit)
    auc_lo, auc_hi = area_range([c for cs in curves.values() for c in cs])
    stacks = {label: Stack.of(cs) for label, cs in curves.items()}

    def per_group(label: str, against: str | None) -> dict:
        """Pairing, speed-ups and differences of ``label`` against group ``against``."""
        if against is None:
            return {"pairing": "", "speed": [{} for _ in targets], "budget": {}, "area": None}
        if against == label:
            ones = [{k: Estimate(1.0) if math.isfinite(v) and v > 0 else None for k, v in
                     to_target(mean_curve(curves[label]), t).items()} for t in targets]
            return {"pairing": "", "speed": ones, "budget": {}, "area": None}
        pairing, speed = compare_to(groups[against], stacks[against], groups[label], stacks[label], targets,
                                    unpaired, method, resamples, level)
        is_paired = pairing == "paired"

        def delta(mine: list[float], theirs: list[float]) -> Estimate | None:
            known = not any(math.isnan(v) for v in (*mine, *theirs))
            return difference(mine, theirs, is_paired, level) if known else None

        budget = {(kind, b): delta(at[label][kind, b], at[against][kind, b]) for kind in spend for b, _ in spend[kind]}
        return {"pairing": pairing, "speed": speed, "budget": budget, "area": delta(areas[label], areas[against])}

    at = {label: {(kind, b): [value_at(c, kind, b) for c in cs] for kind in spend for b, _ in spend[kind]}
          for label, cs in curves.items()}
    areas = {label: [mean_over_tokens(c, auc_lo, auc_hi) for c in cs] for label, cs in curves.items()}
    order = [baseline, *([reference] if reference and reference != baseline else []),
             *(g for g in groups if g not in (baseline, reference))]
    out = []
    for label in order:
        runs, mean = groups[label], mean_curve(curves[label])
        vs_base, vs_ref = per_group(label, baseline), per_group(label, reference)
        rows = []
        for i, target in enumerate(targets):
            hit, seeds = to_target(mean, target), [to_target(c, target) for c in curves[label]]
            early = len(mean.step) > 1 and mean.step[0] < hit["steps"] <= mean.step[1]
            rows.append(TargetResult(target, fraction_of.get(target), sum(math.isfinite(h["steps"]) for h in seeds),
                                     hit, {k: [h[k] for h in seeds] for k in KINDS}, early,
                                     vs_base["speed"][i], vs_ref["speed"][i]))
        budget_rows = []
        for kind, pairs in spend.items():
            for b, share in pairs:
                values = at[label][kind, b]
                known = not any(math.isnan(v) for v in values)
                budget_rows.append(BudgetResult(kind, b, share, values, mean_estimate(values, level) if known else None,
                                                vs_base["budget"].get((kind, b)), vs_ref["budget"].get((kind, b))))
        known_area = not any(math.isnan(v) for v in areas[label])
        per_step = [s for s in (seconds_per_step(r, metric) for r in runs) if not math.isnan(s)]
        out.append(GroupSummary(
            label, runs, label == baseline, label == reference, mean, vs_base["pairing"], vs_ref["pairing"],
            rows, budget_rows, mean_estimate(areas[label], level) if known_area else None, areas[label],
            vs_base["area"], vs_ref["area"],
            stat([final_value(r.rows, metric) for r in runs]), stat([best_value(r.rows, metric) for r in runs]),
            statistics.median(per_step) if per_step else math.nan))
    if grid is not None:
        source = (f"{', '.join(f'{f:g}' for f in grid.fractions)} of the way from the baseline's start "
                  f"{grid.start:.4g} (its seed mean at step {base_mean.step[0]:g}) to its plateau {grid.plateau:.4g} "
                  f"(the mean of its seed-mean curve's last {grid.plateau_points} of {grid.points} evaluations)")
    else:
        source = "given with --targets"
    budget_source = ", ".join(f"{k} {'given' if k in explicit else 'default'}" for k in spend)
    seconds, warnings = seconds_description([r for runs in groups.values() for r in runs], metric)
    for g in out:
        if len(g.runs) < MIN_SEEDS:
            warnings.append(f"warning: group {g.label} has {len(g.runs)} seed(s), fewer than {MIN_SEEDS}: its "
                            "intervals are wide and rest on few degrees of freedom (docs/compare.md: coverage)")
    return Comparison(metric, [], baseline, reference, list(targets), source, grid,
                      {k: list(v) for k, v in spend.items()},
                      f"shares of the baseline's shortest seed unless given ({budget_source})",
                      (auc_lo, auc_hi), seconds, method, resamples, level, warnings, out)


def compare_dirs(dirs: Sequence[Path | str], by: str | None = None, baseline: str = "sampler=uniform",
                 metric: str | None = None, target: float | None = None, targets: Sequence[float] | None = None,
                 fractions: Sequence[float] = FRACTIONS, budgets: dict[str, Sequence[float]] | None = None,
                 reference: str | None = None, unpaired: bool = False, method: str = METHOD,
                 resamples: int = RESAMPLES) -> Comparison:
    """Load, check, group and summarise the runs under ``dirs`` (what `lrn compare` does before printing);
    ``target`` is a single-target alias of ``targets``."""
    if target is not None:
        if targets is not None:
            raise CompareError("--target and --targets both given; pass one (--targets takes a comma list)")
        targets = [target]
    runs = find_runs(dirs)
    check_same_evaluation(runs)
    metric = choose_metric(runs, metric)
    keys = [k.strip() for k in by.split(",") if k.strip()] if by else None
    groups = group_runs(runs, keys)
    base = find_baseline(groups, baseline)
    ref = find_baseline(groups, reference, "--reference") if reference else None
    result = summarise(groups, base, metric, targets, fractions, budgets, ref, unpaired, method, resamples)
    result.keys = keys if keys is not None else varying_keys(runs)
    return result
