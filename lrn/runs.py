"""The runs `lrn compare` reads: loading, grouping by config keys, the checks that make them comparable.

Runs are grouped by config keys (seeds pool into one group). Runs evaluated differently (``eval.limit``,
``eval.samples``, ``trainer.eval_every`` or the held-out set's ``dataset.*`` keys) measure different
things and are refused. Each run becomes a :class:`~lrn.curves.Curve`: the metric at its evaluations
with the generated tokens and the *training* seconds there (see :func:`seconds_source`).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lrn.curves import Curve

IGNORED_KEYS = {"seed", "run_name", "model.warm_start.cache_dir"}  # not part of the experiment
IGNORED_PREFIXES = ("logger.", "eval.", "hydra.")
METRIC_RE = re.compile(r"^eval/[^/]+/accuracy$")
TOKENS = "counts/tokens_generated_total"
TRAIN_S, ELAPSED_S, EVAL_S = "time/train_s", "time/elapsed_s", "perf/eval_s"
# Where a run's seconds come from, best first (runs from before time/train_s fall back).
SECONDS_SOURCES = {
    "train_s": "time/train_s (wall seconds without evaluation and checkpoint writing)",
    "elapsed-eval": "time/elapsed_s minus the summed perf/eval_s (runs from before time/train_s: evaluation "
                    "excluded, checkpoint writing still included)",
    "elapsed": "time/elapsed_s (no perf/eval_s in the run: evaluation and checkpoint writing included)",
}
MISSING = "\0missing"
# Keys added to the schema after runs were written, with the value under which a newer run did what an
# older run (without the key) did. dataset.long_prompts: before it, every prompt was used; a run that
# finished under `refuse` had no prompt over the limit, so the older run on the same dataset used the same
# prompts (`drop` may have left some out: it stays a difference). trainer.strategy: before it, every
# process held the whole model and gradients were averaged across processes, which is `ddp`.
ADDED_LATER = {"dataset.long_prompts": "refuse", "trainer.strategy": "ddp"}
# Evaluation settings every compared run must share: eval.* keys that change what is measured, and the
# dataset.* keys that define the held-out set or its grading (all but these training-side ones).
EVAL_KEYS = ("eval.limit", "eval.samples", "trainer.eval_every", "trainer.eval_dense_until")
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
    for key, value in ADDED_LATER.items():
        config.setdefault(key, value)
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


def parse_spec(spec: str, option: str = "--baseline") -> dict[str, str]:
    """``sampler=uniform,trainer.batch_size=32`` to a dict."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise CompareError(f"{option} {spec!r}: expected key=value[,key=value], e.g. sampler=uniform")
        out[key.strip()] = value.strip()
    if not out:
        raise CompareError(f"{option} is empty; pass key=value[,key=value], e.g. sampler=uniform")
    return out


def find_baseline(groups: dict[str, list[Run]], spec: str, option: str = "--baseline") -> str:
    """The one group whose runs all match ``spec`` (a group label also works verbatim); ``option`` names
    the command-line option in messages (--baseline or --reference)."""
    if spec in groups:
        return spec
    wanted = parse_spec(spec, option)

    def ok(run: Run) -> bool:
        return all(matches(run.config.get(resolve_key(k, run.config), MISSING), v) for k, v in wanted.items())

    hits = [label for label, runs in groups.items() if all(ok(r) for r in runs)]
    if not hits:
        raise CompareError(f"no group matches {option} {spec}; groups: {'; '.join(groups)}; "
                           f"pass {option} with one of them")
    if len(hits) > 1:
        raise CompareError(f"{option} {spec} matches {len(hits)} groups: {'; '.join(hits)}; "
                           f"make it more specific, e.g. {option} {hits[0]}")
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


def seconds_source(rows: Sequence[dict], metric: str) -> str:
    """Which clock a run's seconds come from (a key of SECONDS_SOURCES): ``time/train_s`` where every
    evaluation row has it, else ``time/elapsed_s`` less the evaluations (logged as ``perf/eval_s``)."""
    if all(is_number(r.get(TRAIN_S)) for r in eval_rows(rows, metric)):
        return "train_s"
    return "elapsed-eval" if any(is_number(r.get(EVAL_S)) for r in rows) else "elapsed"


def train_seconds(rows: Sequence[dict], source: str) -> dict[int, float]:
    """Seconds by step from ``source``; ``elapsed-eval`` subtracts every evaluation up to and including
    the row's own (it ran before the row's clock was read). nan where the row lacks the clock."""
    out, evaluated = {}, 0.0
    key = TRAIN_S if source == "train_s" else ELAPSED_S
    for row in sorted(rows, key=lambda r: r["step"]):
        evaluated += row[EVAL_S] if is_number(row.get(EVAL_S)) else 0.0
        value = float(row[key]) if is_number(row.get(key)) else math.nan
        out[row["step"]] = value - evaluated if source == "elapsed-eval" else value
    return out


def run_curve(rows: Sequence[dict], metric: str) -> Curve:
    """A run's evaluations of ``metric`` as a curve: tokens and seconds (:func:`seconds_source`) at each
    evaluation, nan where the row lacks them."""
    evals = eval_rows(rows, metric)
    seconds = train_seconds(rows, seconds_source(rows, metric))

    def column(key: str) -> tuple[float, ...]:
        return tuple(float(r[key]) if is_number(r.get(key)) else math.nan for r in evals)

    return Curve(column("step"), column(metric), column(TOKENS), tuple(seconds[r["step"]] for r in evals))


def seconds_per_step(run: Run, metric: str) -> float:
    """Seconds per step (:func:`seconds_source`) at the run's last row over its step (nan if unknown)."""
    last = run.rows[-1]["step"] if run.rows else 0
    return train_seconds(run.rows, seconds_source(run.rows, metric))[last] / last if last > 0 else math.nan



def seed_of(run: Run) -> Any:
    """The run's ``seed`` config value (None if it has none)."""
    return run.config.get("seed")
