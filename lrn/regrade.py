"""``lrn grade``: re-grade saved completions (from lrn, vLLM or any engine) with the training graders.

Each JSON line needs a completion (a string, or a list of strings for several samples) and a gold
answer; every other field (id, question, ...) is carried through. Rows are written back with ``reward`` (the
mean over samples) and ``rewards``, and the summary holds the accuracy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrn.config import ConfigError
from lrn.grading import extract_gsm8k_gold, grade_many, last_boxed
from lrn.tasks.hub import json_lines

ANSWER_RULES = ("raw", "gsm8k", "boxed")


@dataclass
class Fields:
    completion: str = "completion"
    answer: str = "answer"
    answer_rule: str = "raw"


def gold(text: str, rule: str) -> str:
    r"""The gold answer under an answer rule.

    >>> gold("5 + 3 = 8\n#### 8", "gsm8k"), gold(r"so \boxed{\frac12}", "boxed"), gold(" 8 ", "raw")
    ('8', '\\frac12', '8')
    """
    if rule == "gsm8k":
        return extract_gsm8k_gold(text)
    if rule == "boxed":
        boxed = last_boxed(text)
        if boxed is None:
            raise ValueError("no \\boxed{} answer")
        return boxed.strip()
    return text.strip()


def read_rows(path: Path, fields: Fields) -> list[tuple[dict[str, Any], list[str], str]]:
    """(row, completions, gold) per line; any problem is a ConfigError naming file, line and field."""
    if fields.answer_rule not in ANSWER_RULES:
        raise ConfigError(f"--answer-rule={fields.answer_rule!r} is invalid: choose one of {', '.join(ANSWER_RULES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror if isinstance(e, OSError) else e})") from None
    rows = []
    for lineno, row in json_lines(path, text):
        where = f"{path}:{lineno}"
        for name, option in ((fields.completion, "--completion-field"), (fields.answer, "--answer-field")):
            if name not in row or row[name] is None:
                present = ", ".join(sorted(row)) or "none"
                raise ConfigError(f"{where}: missing field {name!r} (fields present: {present}); "
                                  f"name the right one with {option}")
        completions = row[fields.completion]
        if isinstance(completions, str):
            completions = [completions]
        if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions) or not completions:
            raise ConfigError(f"{where}: field {fields.completion!r} must be a string or a list of strings")
        try:
            answer = gold(str(row[fields.answer]), fields.answer_rule)
        except ValueError as e:
            raise ConfigError(f"{where}: field {fields.answer!r}: {e} (--answer-rule {fields.answer_rule})") from None
        rows.append((row, completions, answer))
    if not rows:
        raise ConfigError(f"{path}: no rows to grade")
    return rows


def regrade(path: Path, grader: str, fields: Fields, out: Path, workers: int | None = None) -> dict[str, Any]:
    """Grade every completion of ``path`` into ``out`` (graded rows); returns the summary."""
    rows = read_rows(path, fields)
    flat = [(c, answer) for _, completions, answer in rows for c in completions]
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    rewards = grade_many([c for c, _ in flat], [a for _, a in flat], grader, workers=workers if len(flat) > 64 else 0)
    graded, i = [], 0
    for row, completions, answer in rows:
        mine = rewards[i:i + len(completions)]
        i += len(completions)
        graded.append({**row, "gold": answer, "rewards": mine, "reward": sum(mine) / len(mine)})
    summary = {"file": str(path), "grader": grader, "rows": len(graded), "completions": len(flat),
               "accuracy": sum(g["reward"] for g in graded) / len(graded), "answer_rule": fields.answer_rule}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(g) + "\n" for g in graded))
    os.replace(tmp, out)
    out.with_name(out.stem + ".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
