"""`lrn compare`: how fast each group of runs reaches a target held-out accuracy.

Runs are grouped by config keys (seeds pool into one group). Runs evaluated differently (``eval.limit``,
``eval.samples``, ``trainer.eval_every`` or the held-out set's ``dataset.*`` keys) measure different
things and are refused. A group's *seed-mean curve* is the mean over its seeds of the metric, the
generated tokens and the elapsed seconds at the evaluation steps every seed has. The target defaults to
the best value of the baseline's seed-mean curve. Steps-, tokens- and seconds-to-target are read where a
curve first reaches the target, linearly interpolated between the two evaluations around that crossing
(+infinity if it never does): on the seed-mean curve for the group, on each seed's own curve for the
per-seed values. Speed-up = baseline's / group's, with a percentile bootstrap interval over seeds.
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

from lrn.curves import KINDS, Curve, bootstrap, default_target, mean_curve, to_target

IGNORED_KEYS = {"seed", "run_name", "model.warm_start.cache_dir"}  # not part of the experiment
IGNORED_PREFIXES = ("logger.", "eval.", "hydra.")
METRIC_RE = re.compile(r"^eval/[^/]+/accuracy$")
TOKENS, SECONDS = "counts/tokens_generated_total", "time/elapsed_s"
MISSING = "\0missing"
# Evaluation settings every compared run must share: eval.* keys that change what is measured, and the
# dataset.* keys that define the held-out set or its grading (all but these training-side ones).
EVAL_KEYS = ("eval.limit", "eval.samples", "trainer.eval_every")
TRAINING_DATASET_KEYS = {"dataset.path", "dataset.train_split", "dataset.train_size", "dataset.train_seed",
                         "dataset.train_limit", "dataset.prompt_template", "dataset.max_new_tokens"}


class CompareError(ValueError):
    """A user-facing problem with the runs or options; its message is one line with the fix."""


@dataclass
class Run:
    """One run directory: its flattened config (dotted keys) and its metrics rows sorted by step."""

    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class Stat:
    """Median and range over a group's runs."""

    median: float
    lo: float
    hi: float


@dataclass
class GroupSummary:
    """Everything reported for one group of runs; dicts are keyed by KINDS."""

    label: str
    runs: list[Run]
    baseline: bool
    curve: Curve  # the seed-mean curve
    reached: int  # seeds whose own curve reaches the target
    to_target: dict[str, float]  # on the seed-mean curve, interpolated; inf = not reached
    per_seed: dict[str, list[float]]  # each seed's own curve, interpolated, in run order
    speedup: dict[str, float | None]  # None where undefined
    interval: dict[str, tuple[float, float] | None]  # bootstrap; None for the baseline or no speed-up
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


def check_same_evaluation(runs: Sequence[Run]) -> None:
    """Refuse runs evaluated differently (see EVAL_KEYS): their accuracies are not one measurement.

    A key a run lacks counts as null (a key added to the schema later, null by default, is not a difference).
    """
    keys = [k for k in dict.fromkeys(k for r in runs for k in r.config)
            if k in EVAL_KEYS or (k.startswith("dataset.") and k not in TRAINING_DATASET_KEYS)]
    differ = []
    for key in keys:
        by_value: dict[str, list[Run]] = {}
        for run in runs:
            by_value.setdefault(fmt_value(run.config.get(key)), []).append(run)
        if len(by_value) > 1:
            differ.append(f"{key} = " + " vs ".join(f"{v} ({len(rs)} run(s), e.g. {rs[0].path})"
                                                    for v, rs in by_value.items()))
    if differ:
        raise CompareError(f"runs were evaluated differently: {'; '.join(differ)}; their accuracies are not "
                           "comparable: compare runs with the same evaluation settings (one lrn compare each)")


def eval_rows(rows: Sequence[dict], metric: str) -> list[dict]:
    """The rows that hold a value of ``metric``, in step order."""
    return sorted((r for r in rows if is_number(r.get(metric))), key=lambda r: r["step"])


def best_value(rows: Sequence[dict], metric: str) -> float:
    """The highest value of ``metric`` over the run."""
    return max(r[metric] for r in eval_rows(rows, metric))


def final_value(rows: Sequence[dict], metric: str) -> float:
    """The value of ``metric`` at the run's last evaluation."""
    return eval_rows(rows, metric)[-1][metric]


def run_curve(rows: Sequence[dict], metric: str) -> Curve:
    """A run's evaluations of ``metric`` as a curve (tokens or seconds nan where the row lacks them)."""
    evals = eval_rows(rows, metric)

    def column(key: str) -> tuple[float, ...]:
        return tuple(float(r[key]) if is_number(r.get(key)) else math.nan for r in evals)

    return Curve(column("step"), column(metric), column(TOKENS), column(SECONDS))


def stat(values: Sequence[float]) -> Stat:
    """Median, min and max."""
    return Stat(statistics.median(values), min(values), max(values))


def speedup(base: float, mine: float) -> float | None:
    """``base / mine``, or None when either is not reached, zero or unknown."""
    ok = all(math.isfinite(v) and v > 0 for v in (base, mine))
    return base / mine if ok else None


def seconds_per_step(run: Run) -> float:
    """Wall seconds per step: ``time/elapsed_s`` of the last row over its step (nan if unknown)."""
    last = run.rows[-1] if run.rows else {}
    ok = last.get("step", 0) > 0 and is_number(last.get(SECONDS))
    return last[SECONDS] / last["step"] if ok else math.nan


def summarise(groups: dict[str, list[Run]], baseline: str, metric: str,
              target: float | None = None) -> list[GroupSummary]:
    """One summary per group, baseline first; ``target`` None means the default (:func:`default_target`)."""
    curves = {label: [run_curve(r.rows, metric) for r in runs] for label, runs in groups.items()}
    for label, runs in groups.items():
        if not mean_curve(curves[label]).step:
            raise CompareError(f"the runs of group {label} share no evaluation step "
                               f"({', '.join(str(r.path) for r in runs)}); leave out the one that differs")
    goal = default_target(curves[baseline]) if target is None else target
    base_hit = to_target(mean_curve(curves[baseline]), goal)
    out = []
    for label in [baseline, *(g for g in groups if g != baseline)]:
        runs, mean = groups[label], mean_curve(curves[label])
        hit, seeds = to_target(mean, goal), [to_target(c, goal) for c in curves[label]]
        per_step = [s for s in map(seconds_per_step, runs) if not math.isnan(s)]
        speed = {k: speedup(base_hit[k], hit[k]) for k in KINDS}
        boot = {} if label == baseline else bootstrap(curves[baseline], curves[label], target)
        out.append(GroupSummary(
            label, runs, label == baseline, mean, sum(math.isfinite(h["steps"]) for h in seeds), hit,
            {k: [h[k] for h in seeds] for k in KINDS}, speed,
            {k: boot.get(k) if speed[k] is not None else None for k in KINDS},
            stat([final_value(r.rows, metric) for r in runs]),
            stat([best_value(r.rows, metric) for r in runs]),
            statistics.median(per_step) if per_step else math.nan))
    return out


def compare_dirs(dirs: Sequence[Path | str], by: str | None = None, baseline: str = "sampler=uniform",
                 metric: str | None = None, target: float | None = None) -> Comparison:
    """Load, check, group and summarise the runs under ``dirs`` (what `lrn compare` does before printing)."""
    runs = find_runs(dirs)
    check_same_evaluation(runs)
    metric = choose_metric(runs, metric)
    keys = [k.strip() for k in by.split(",") if k.strip()] if by else None
    groups = group_runs(runs, keys)
    base = find_baseline(groups, baseline)
    summaries = summarise(groups, base, metric, target)
    source = "--target"
    if target is None:
        target = max(summaries[0].curve.value)
        source = f"best of the baseline's seed-mean curve, {len(groups[base])} seed(s)"
    used = keys if keys is not None else varying_keys(runs)
    return Comparison(metric, target, source, used, base, summaries)
