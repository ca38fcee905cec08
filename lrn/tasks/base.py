"""The unit every task produces: a question with a gold answer."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from lrn.config import ConfigError


@dataclass(frozen=True)
class Problem:
    """One maths question. ``level`` is a difficulty label (None when the source has none); ``meta`` holds what
    else the source says, e.g. ``where`` the question is (``file:line``) for messages about it."""

    id: str
    question: str
    answer: str
    level: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def question_hash(question: str) -> str:
    """Hash of the whitespace- and case-normalised question, used to keep splits disjoint."""
    normalised = re.sub(r"\s+", " ", question.strip().lower())
    return hashlib.sha256(normalised.encode()).hexdigest()[:16]


def check_disjoint(train: list[Problem], test: list[Problem], what: str) -> None:
    """Refuse an evaluation set that overlaps the training pool."""
    seen = {question_hash(p.question) for p in train}
    overlap = [p for p in test if question_hash(p.question) in seen]
    if overlap:
        raise ConfigError(
            f"{what}: {len(overlap)} held-out question(s) also appear in the training pool "
            f"(first: {overlap[0].question!r}); use disjoint splits"
        )
