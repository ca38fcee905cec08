"""Real datasets: load records from a local JSON/JSON-lines file or the Hugging Face Hub, turn them into
:class:`Problem` s (GSM8K, MATH, or any JSON lines with a field mapping).

Every user mistake (missing file, bad JSON, missing field, unusable answer) is a one-line
:class:`ConfigError` naming the file, the line (the row, for the Hub) and the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lrn.config import ConfigError
from lrn.grading import extract_gsm8k_gold, last_boxed, normalise_gold
from lrn.tasks.base import Problem

LOCAL_SUFFIXES = (".jsonl", ".json")
ANSWER_RULES = ("raw", "gsm8k", "boxed")
_CALCULATOR = re.compile(r"<<[^<>\n]*>>")
_LEVEL = re.compile(r"(?:level\s*)?(\d+)", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def _one_line(err: BaseException, limit: int = 300) -> str:
    """An exception as a single short line."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _is_local(source: str) -> bool:
    """A source names a local file if it exists or looks like a path to a JSON file."""
    return (Path(source).expanduser().is_file() or source.endswith(LOCAL_SUFFIXES)
            or source.startswith(("/", "./", "../", "~")))


def json_lines(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of JSON-lines ``text`` read from ``path``.

    A line that is not JSON, or not a JSON object, is a ConfigError naming ``path:line``.
    """
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append((lineno, row))
    return rows


def validate_json_file(path: Path) -> list[str]:
    """Check a JSON-lines file (or a .json list of objects) row by row; return where each record is
    (``file:line``, or ``file: item N`` in a .json list)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"dataset.path={str(path)!r}: cannot read the file ({_one_line(e)})") from None
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
        for i, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise ConfigError(f"{path}: item {i}: expected a JSON object, got {type(row).__name__}")
        where = [f"{path}: item {i}" for i in range(1, len(rows) + 1)]
    else:
        where = [f"{path}:{lineno}" for lineno, _ in json_lines(path, text)]
    if not where:
        raise ConfigError(f"dataset.path={str(path)!r}: the file holds no records")
    return where


def local_records(source: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of a local .jsonl/.json file (validated first) and where each is (see validate_json_file)."""
    import datasets

    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(f"dataset.path={source!r}: no such file ({path.resolve()})")
    where = validate_json_file(path)
    datasets.disable_progress_bars()  # a local file loads in a blink; no bar in the run's log
    try:
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as e:  # e.g. a column whose type changes between rows
        raise ConfigError(f"dataset.path={source!r}: cannot load as a dataset ({_one_line(e)})") from None
    return ds.to_list(), where


def load_records(source: str, split: str = "train", hub_config: str | None = None,
                 offline_hint: str = "dataset.path=<file.jsonl>") -> list[dict[str, Any]]:
    """Records from a local .jsonl/.json file (validated first) or from a Hub dataset name and split."""
    import datasets

    if _is_local(source):
        return local_records(source)[0]
    try:
        ds = datasets.load_dataset(source, hub_config, split=split)
    except Exception as e:
        raise ConfigError(
            f"cannot load dataset {source!r} (config {hub_config!r}, split {split!r}) from the Hugging Face "
            f"Hub: {_one_line(e)}; offline, give a local file: {offline_hint}"
        ) from None
    return ds.to_list()


# ------------------------------------------------------------------------------------ fields


def _row_error(at: str, message: str) -> ConfigError:
    """A ConfigError located at a record (``file:line``, or ``source: row N``)."""
    return ConfigError(f"{at}: {message}")


def _locate(source: str, row: int, where: Sequence[str] | None) -> str:
    """Where the 1-based ``row`` of a source is: its entry in ``where`` when known, else ``source: row N``."""
    return where[row - 1] if where is not None else f"{source}: row {row}"


def _required(record: Mapping[str, Any], name: str, at: str) -> str:
    """A required text field: present, not null, not blank."""
    if name not in record or record[name] is None:
        present = ", ".join(sorted(k for k in record if record[k] is not None)) or "none"
        raise _row_error(at, f"missing field {name!r} (fields present: {present})")
    value = str(record[name]).strip()
    if not value:
        raise _row_error(at, f"field {name!r} is empty")
    return value


def _optional(record: Mapping[str, Any], name: str | None, at: str) -> Any:
    """An optional field: None if unnamed or null; a named key absent from the record is an error."""
    if name is None:
        return None
    if name not in record:
        present = ", ".join(sorted(record)) or "none"
        raise _row_error(at, f"missing field {name!r} (fields present: {present})")
    return record[name]


def _question(record: Mapping[str, Any], field: str, template: str | None, at: str) -> str:
    """The question: ``field``, or ``template`` with each ``{name}`` replaced by that (required) field."""
    if template is None:
        return _required(record, field, at)
    return _PLACEHOLDER.sub(lambda m: _required(record, m.group(1), at), template).strip()


def parse_level(value: Any, at: str = "dataset") -> int | None:
    """A difficulty level from an int, ``"3"`` or ``"Level 3"``; None for null or ``"Level ?"``.

    >>> parse_level(4), parse_level("Level 3"), parse_level("Level ?"), parse_level(None)
    (4, 3, None, None)
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    m = _LEVEL.fullmatch(text)
    if m:
        return int(m.group(1))
    if not text or text.lower().removeprefix("level").strip() in ("", "?"):
        return None
    raise _row_error(at, f"level {value!r} is not an integer or 'Level N'")


def _answer(record: Mapping[str, Any], name: str, rule: str, at: str) -> str:
    """The gold answer of a record under an answer rule (raw | gsm8k | boxed)."""
    text = _required(record, name, at)
    if rule == "raw":
        return text
    if rule == "gsm8k":
        try:
            return extract_gsm8k_gold(text)
        except ValueError:
            raise _row_error(at, f"field {name!r} has no '#### <answer>' line") from None
    boxed = last_boxed(text)
    if boxed is None or not boxed.strip():
        raise _row_error(at, f"field {name!r} has no \\boxed{{...}} answer")
    return boxed.strip()


def _graded_gold(gold: str, grader: str, name: str, at: str) -> str:
    """The gold as ``grader`` reads it (units, commas, currency and trailing words set aside, as in answers)."""
    normal = normalise_gold(grader, gold)
    if normal is None:
        raise _row_error(at, f"field {name!r}: gold {gold[:80]!r} cannot be read by dataset.grader={grader}; "
                             "fix that row, or choose the dataset.grader (or dataset.answer_rule) that fits the golds")
    return normal


def _strip_calculator(solution: str) -> str:
    """A GSM8K solution without its ``<<expression=result>>`` calculator annotations."""
    return _CALCULATOR.sub("", solution)


# ---------------------------------------------------------------------------------- builders


def gsm8k_problems(records: Iterable[Mapping[str, Any]], id_prefix: str = "gsm8k", source: str = "gsm8k",
                   where: Sequence[str] | None = None) -> list[Problem]:
    """GSM8K rows (``question``, ``answer`` ending in ``#### N``) as problems with numeric golds.

    ``where`` locates each record in errors (``file:line``); by default ``source: row N``.
    """
    problems = []
    for row, record in enumerate(records, start=1):
        at = _locate(source, row, where)
        question = _required(record, "question", at)
        gold = _answer(record, "answer", "gsm8k", at)
        solution = _strip_calculator(str(record["answer"]))
        problems.append(Problem(id=f"{id_prefix}/{row - 1}", question=question, answer=gold, level=None,
                                meta={"solution": solution, "source": source, "where": at}))
    return problems


def math_problems(records: Iterable[Mapping[str, Any]], id_prefix: str = "math", source: str = "math",
                  where: Sequence[str] | None = None) -> list[Problem]:
    r"""MATH / MATH-500 rows: ``problem``; gold ``answer`` or else the last ``\boxed{}`` of ``solution``."""
    problems = []
    for row, record in enumerate(records, start=1):
        at = _locate(source, row, where)
        question = _required(record, "problem", at)
        if record.get("answer") is not None and str(record["answer"]).strip():
            gold = str(record["answer"]).strip()
        elif "solution" in record and record["solution"] is not None:
            gold = _answer(record, "solution", "boxed", at)
        else:
            raise _row_error(at, "missing field 'answer' (and no 'solution' to take \\boxed{} from)")
        subject = record.get("subject") or record.get("type")
        uid = record.get("unique_id")
        problems.append(Problem(
            id=f"{id_prefix}/{uid if uid else row - 1}", question=question, answer=gold,
            level=parse_level(record.get("level"), at),
            meta={"subject": subject, "solution": record.get("solution"), "source": source, "where": at},
        ))
    return problems


def jsonl_problems(records: Iterable[Mapping[str, Any]], question_field: str, answer_field: str,
                   answer_rule: str = "raw", level_field: str | None = None,
                   subject_field: str | None = None, id_field: str | None = None,
                   id_prefix: str = "row", source: str = "dataset", question_template: str | None = None,
                   grader: str | None = None, where: Sequence[str] | None = None) -> list[Problem]:
    """Any records with a field mapping; ``answer_rule`` reads the gold as raw text, GSM8K or boxed.

    ``question_template`` (e.g. ``"{Body} {Question}"``) builds the question from several fields instead
    of ``question_field``. With ``grader`` each gold is normalised as that grader reads answers (``9
    (apples)`` -> ``9`` for numeric), and a gold it cannot read at all is an error, not a silent 0.
    """
    if answer_rule not in ANSWER_RULES:
        raise ConfigError(f"dataset.answer_rule={answer_rule!r} is invalid: choose one of {ANSWER_RULES}")
    problems = []
    for row, record in enumerate(records, start=1):
        at = _locate(source, row, where)
        question = _question(record, question_field, question_template, at)
        gold = _answer(record, answer_field, answer_rule, at)
        if grader is not None:
            gold = _graded_gold(gold, grader, answer_field, at)
        level = parse_level(_optional(record, level_field, at), at)
        subject = _optional(record, subject_field, at)
        ident = _optional(record, id_field, at)
        problems.append(Problem(
            id=f"{id_prefix}/{ident if ident is not None else row - 1}", question=question, answer=gold,
            level=level, meta={"subject": subject, "source": source, "where": at},
        ))
    return problems


# ------------------------------------------------------------------------------------ splits


def problems_from(cfg, records: list[dict[str, Any]], source: str, prefix: str,
                  where: Sequence[str] | None = None) -> list[Problem]:
    """Records as problems, by the dataset's ``format``."""
    if cfg.format == "gsm8k":
        return gsm8k_problems(records, prefix, source, where)
    if cfg.format == "math":
        return math_problems(records, prefix, source, where)
    return jsonl_problems(records, cfg.question_field, cfg.answer_field, cfg.answer_rule, cfg.level_field,
                          cfg.subject_field, cfg.id_field, prefix, source, cfg.question_template, cfg.grader,
                          where)


def _load(cfg, local: str | None, split: str | None, prefix: str, hint: str) -> list[Problem]:
    if local is not None:
        records, where = local_records(local)
        return problems_from(cfg, records, local, prefix, where)
    if cfg.hub is None or split is None:
        return []
    records = load_records(cfg.hub, split, cfg.hub_config, hint)
    return problems_from(cfg, records, f"{cfg.hub}[{split}]", prefix)


def load_splits(cfg, evaluation: bool = False) -> tuple[list[Problem], list[Problem]]:
    """(training pool, held-out set) of a Hub dataset config; see :class:`lrn.config.HubDatasetConfig`.

    Questions are identified by split and row, so the same row number in train and test differ.
    """
    if evaluation:
        return [], _load(cfg, cfg.test_path or cfg.path, cfg.test_split, f"{cfg.name}/test",
                         "dataset.path=<file.jsonl> (the set to evaluate)")
    train = _load(cfg, cfg.path, cfg.train_split, f"{cfg.name}/train", "dataset.path=<training file.jsonl>")
    if not train:
        raise ConfigError(f"dataset={cfg.name} has no training split; train on another dataset (e.g. dataset=math) "
                          "and evaluate on this one with lrn eval, or give a training file with dataset.path=...")
    if cfg.train_limit:
        train = train[: cfg.train_limit]
    test = _load(cfg, cfg.test_path, cfg.test_split, f"{cfg.name}/test", "dataset.test_path=<held-out file.jsonl>")
    if not test:
        raise ConfigError(f"dataset={cfg.name}: no held-out set to evaluate on during training; set dataset.test_path")
    return train, test
