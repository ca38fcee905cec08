"""`lrn compare`: how fast each group of runs reaches a target held-out accuracy.

Runs are grouped by config keys (seeds pool into one group). The target defaults to the paper's
definition: the baseline's best held-out accuracy, i.e. the median over baseline runs of each run's
best value of the metric. Per run, the first evaluation row (in step order) whose metric is >= the
target gives steps-, tokens- and seconds-to-target; a run that never gets there counts as +infinity,
so a group median can itself be "not reached". Speed-up = baseline median / group median.

The plot draws one line per group, the mean over its runs with a min-max band. Runs' evaluation
points can differ (eval steps, and always generated tokens), so each run's curve is linearly
interpolated onto the union of its group's x values, restricted to the x range every run covers
(no extrapolation).
"""

from __future__ import annotations

import difflib
import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

IGNORED_KEYS = {"seed", "run_name", "model.warm_start.cache_dir"}  # not part of the experiment
IGNORED_PREFIXES = ("logger.", "eval.", "hydra.")
METRIC_RE = re.compile(r"^eval/[^/]+/accuracy$")
TOKENS, SECONDS = "counts/tokens_generated_total", "time/elapsed_s"
TOLERANCE = 1e-9  # accuracies are fractions k/n: absorb float noise in `value >= target`
KINDS = {"steps": "step", "tokens": "tokens", "seconds": "seconds"}  # reported kind -> Hit field
MISSING = "\0missing"


class CompareError(ValueError):
    """A user-facing problem with the runs or options; its message is one line with the fix."""


@dataclass
class Run:
    """One run directory: its flattened config (dotted keys) and its metrics rows sorted by step."""

    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class Hit:
    """The first evaluation row that reached the target."""

    step: int
    tokens: float
    seconds: float
    value: float


@dataclass(frozen=True)
class Stat:
    """Median and range over a group's runs (math.inf = not reached)."""

    median: float
    lo: float
    hi: float


@dataclass
class GroupSummary:
    """Everything reported for one group of runs."""

    label: str
    runs: list[Run]
    baseline: bool
    reached: int
    to_target: dict[str, Stat]  # keyed by KINDS
    speedup: dict[str, float | None]  # keyed by KINDS; None where undefined
    final: Stat
    best: Stat
    seconds_per_step: float


@dataclass
class Comparison:
    """The result of `lrn compare`: metric, target, baseline group and one summary per group."""

    metric: str
    target: float
    target_source: str
    keys: list[str]
    baseline: str
    groups: list[GroupSummary]


def is_number(value: Any) -> bool:
    """True for a real, non-NaN int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to one dict with dotted keys (lists stay values)."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    return {k: v for key, child in node.items() for k, v in flatten(child, f"{prefix}{key}.").items()}


def fmt_value(value: Any) -> str:
    """A config value as it would be written in a Hydra override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(fmt_value(v) for v in value) + "]"
    return str(value)


def load_run(path: Path | str) -> Run:
    """Read ``metrics.jsonl`` and ``resolved_config.yaml`` of one run directory."""
    path = Path(path)
    metrics, config_file = path / "metrics.jsonl", path / "resolved_config.yaml"
    if not metrics.is_file():
        raise CompareError(f"{path} has no metrics.jsonl; pass run directories or sweep directories")
    if not config_file.is_file():
        raise CompareError(f"{path} has metrics.jsonl but no resolved_config.yaml; pass runs of lrn train")
    rows = []
    with metrics.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CompareError(f"{metrics}:{number}: malformed JSON ({e.msg}); "
                                   "fix or delete that line") from None
            if not isinstance(row, dict) or type(row.get("step")) is not int:
                raise CompareError(f'{metrics}:{number}: not a JSON object with an integer "step"; '
                                   "fix or delete that line")
            rows.append(row)
    try:
        config = flatten(OmegaConf.to_container(OmegaConf.load(config_file), resolve=True))
    except Exception as e:  # noqa: BLE001 - any YAML/OmegaConf error becomes one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CompareError(f"{config_file}: unreadable config ({first}); restore it from the run") from None
    return Run(path, config, sorted(rows, key=lambda r: r["step"]))


def find_runs(dirs: Sequence[Path | str]) -> list[Run]:
    """Every run directory (one holding ``metrics.jsonl``) under the given run or sweep directories."""
    found: dict[Path, Path] = {}
    for d in map(Path, dirs):
        if not d.is_dir():
            what = "not a directory" if d.exists() else "no such directory"
            raise CompareError(f"{d}: {what}; pass run directories or sweep directories")
        for metrics in sorted(d.rglob("metrics.jsonl")):
            found.setdefault(metrics.parent.resolve(), metrics.parent)
    if not found:
        raise CompareError(f"no metrics.jsonl found under {', '.join(map(str, dirs))}; "
                           "pass run directories (holding metrics.jsonl) or sweep directories")
    return [load_run(p) for p in found.values()]


def resolve_key(key: str, config: dict[str, Any]) -> str:
    """A bare group name like ``sampler`` means ``sampler.name``."""
    return f"{key}.name" if key not in config and f"{key}.name" in config else key


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys (in config order) that split the runs, ignoring seed, run_name, logger/eval/hydra.

    A key is kept only if it splits some group formed by the keys before it, so keys implied by
    others (``sampler.pool_factor`` is only in learnability runs) do not clutter the labels.
    """
    candidates = [k for k in dict.fromkeys(k for r in runs for k in r.config)
                  if k not in IGNORED_KEYS and not k.startswith(IGNORED_PREFIXES)]
    chosen: list[str] = []
    count = 1
    for key in candidates:
        parts = {tuple(fmt_value(r.config.get(k, MISSING)) for k in (*chosen, key)) for r in runs}
        if len(parts) > count:
            chosen.append(key)
            count = len(parts)
    return chosen


def natural(label: str) -> list[Any]:
    """Sort key that puts batch_size=32 before batch_size=128."""
    return [int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", label))]


def group_runs(runs: Sequence[Run], keys: Sequence[str] | None = None) -> dict[str, list[Run]]:
    """Runs by label ``key=value,...`` (``all`` when no key); default keys: :func:`varying_keys`."""
    strict = keys is not None
    keys = varying_keys(runs) if keys is None else keys
    groups: dict[str, list[Run]] = {}
    for run in runs:
        parts = []
        for key in keys:
            full = resolve_key(key, run.config)
            if full in run.config:
                parts.append(f"{full}={fmt_value(run.config[full])}")
            elif strict:
                close = difflib.get_close_matches(key, run.config, n=3)
                hint = f"did you mean {', '.join(close)}?" if close else "use keys like trainer.batch_size"
                raise CompareError(f"--by key {key!r} is not in {run.path}/resolved_config.yaml; {hint}")
        groups.setdefault(",".join(parts) or "all", []).append(run)
    return {label: groups[label] for label in sorted(groups, key=natural)}


def matches(value: Any, wanted: str) -> bool:
    """A config value equals a spec value (as text, or as numbers: 1e-4 == 0.0001)."""
    if fmt_value(value) == wanted:
        return True
    try:
        return is_number(value) and float(wanted) == float(value)
    except ValueError:
        return False


def parse_spec(spec: str) -> dict[str, str]:
    """``sampler=uniform,trainer.batch_size=32`` to a dict."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise CompareError(f"--baseline {spec!r}: expected key=value[,key=value], e.g. sampler=uniform")
        out[key.strip()] = value.strip()
    if not out:
        raise CompareError("--baseline is empty; pass key=value[,key=value], e.g. sampler=uniform")
    return out


def find_baseline(groups: dict[str, list[Run]], spec: str) -> str:
    """The one group whose runs all match ``spec`` (a group label also works verbatim)."""
    if spec in groups:
        return spec
    wanted = parse_spec(spec)

    def ok(run: Run) -> bool:
        return all(matches(run.config.get(resolve_key(k, run.config), MISSING), v) for k, v in wanted.items())

    hits = [label for label, runs in groups.items() if all(ok(r) for r in runs)]
    if not hits:
        raise CompareError(f"no group matches --baseline {spec}; groups: {'; '.join(groups)}; "
                           "pass --baseline with one of them")
    if len(hits) > 1:
        raise CompareError(f"--baseline {spec} matches {len(hits)} groups: {'; '.join(hits)}; "
                           f"make it more specific, e.g. --baseline {hits[0]}")
    return hits[0]


def choose_metric(runs: Sequence[Run], metric: str | None = None) -> str:
    """The metric to compare: ``metric`` or the single ``eval/<set>/accuracy``; checks every run has it."""
    for run in runs:
        if not any(k.startswith("eval/") for row in run.rows for k in row):
            raise CompareError(f"{run.path} has no evaluation rows (no eval/* keys in its metrics.jsonl); "
                               "it stopped before its first evaluation: leave it out")
    available = sorted({k for r in runs for row in r.rows for k in row if METRIC_RE.match(k)})
    if metric is None:
        if len(available) != 1:
            found = f"several: {', '.join(available)}" if available else "none"
            raise CompareError(f"eval/<set>/accuracy metrics in the runs: {found}; choose one with --metric")
        metric = available[0]
    missing = [r for r in runs if not eval_rows(r.rows, metric)]
    if len(missing) == len(runs):
        raise CompareError(f"metric {metric} is in none of the runs; "
                           f"available: {', '.join(available) or 'none'}; fix --metric")
    if missing:
        raise CompareError(f"metric {metric} is missing from {len(missing)} of {len(runs)} runs: "
                           f"{', '.join(str(r.path) for r in missing)}; compare runs evaluated on the same "
                           "set or choose another --metric")
    return metric


def eval_rows(rows: Sequence[dict], metric: str) -> list[dict]:
    """The rows that hold a value of ``metric``, in step order."""
    return sorted((r for r in rows if is_number(r.get(metric))), key=lambda r: r["step"])


def best_value(rows: Sequence[dict], metric: str) -> float:
    """The highest value of ``metric`` over the run."""
    return max(r[metric] for r in eval_rows(rows, metric))


def final_value(rows: Sequence[dict], metric: str) -> float:
    """The value of ``metric`` at the run's last evaluation."""
    return eval_rows(rows, metric)[-1][metric]


def default_target(runs: Sequence[Run], metric: str) -> float:
    """The paper's target: median over the baseline runs of each run's best value of ``metric``."""
    return statistics.median(best_value(r.rows, metric) for r in runs)


def steps_to_target(rows: Sequence[dict], metric: str, target: float) -> Hit | None:
    """The first evaluation row (in step order) with ``metric >= target``; None if never."""
    for row in eval_rows(rows, metric):
        if row[metric] >= target - TOLERANCE:
            return Hit(row["step"], float(row.get(TOKENS, math.nan)), float(row.get(SECONDS, math.nan)),
                       row[metric])
    return None


def stat(values: Sequence[float]) -> Stat:
    """Median (mean of the middle two for an even count; inf if either is inf), min and max."""
    return Stat(statistics.median(values), min(values), max(values))


def speedup(base: float, mine: float) -> float | None:
    """``base / mine``, or None when either is not reached or zero."""
    ok = all(math.isfinite(v) and v > 0 for v in (base, mine))
    return base / mine if ok else None


def seconds_per_step(run: Run) -> float:
    """Wall seconds per step: ``time/elapsed_s`` of the last row over its step (nan if unknown)."""
    last = run.rows[-1] if run.rows else {}
    ok = last.get("step", 0) > 0 and is_number(last.get(SECONDS))
    return last[SECONDS] / last["step"] if ok else math.nan


def summarise(groups: dict[str, list[Run]], baseline: str, metric: str, target: float) -> list[GroupSummary]:
    """One summary per group, baseline first; speed-ups are baseline median / group median."""
    out = []
    for label in [baseline, *(g for g in groups if g != baseline)]:
        runs = groups[label]
        hits = [steps_to_target(r.rows, metric, target) for r in runs]
        to_target = {k: stat([getattr(h, f) if h else math.inf for h in hits]) for k, f in KINDS.items()}
        per_step = [s for s in map(seconds_per_step, runs) if not math.isnan(s)]
        out.append(GroupSummary(
            label, runs, label == baseline, sum(h is not None for h in hits), to_target, {},
            stat([final_value(r.rows, metric) for r in runs]),
            stat([best_value(r.rows, metric) for r in runs]),
            statistics.median(per_step) if per_step else math.nan))
    for g in out:
        g.speedup = {k: speedup(out[0].to_target[k].median, g.to_target[k].median) for k in KINDS}
    return out


def compare_dirs(dirs: Sequence[Path | str], by: str | None = None, baseline: str = "sampler=uniform",
                 metric: str | None = None, target: float | None = None) -> Comparison:
    """Load, group and summarise the runs under ``dirs`` (what `lrn compare` does before printing)."""
    runs = find_runs(dirs)
    metric = choose_metric(runs, metric)
    keys = [k.strip() for k in by.split(",") if k.strip()] if by else None
    groups = group_runs(runs, keys)
    base = find_baseline(groups, baseline)
    source = "--target"
    if target is None:
        target = default_target(groups[base], metric)
        source = f"median over {len(groups[base])} baseline run(s) of their best value"
    used = keys if keys is not None else varying_keys(runs)
    return Comparison(metric, target, source, used, base, summarise(groups, base, metric, target))
