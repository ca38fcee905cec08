"""Question sources. :func:`build_task` turns a dataset config into train/test problems and a grader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lrn.grading import GRADERS
from lrn.tasks.base import Problem, check_disjoint, question_hash

__all__ = ["Problem", "Task", "build_task", "question_hash"]


@dataclass
class Task:
    """A training pool, a held-out set, how to prompt and how to grade."""

    name: str
    train: list[Problem]
    test: list[Problem]
    prompt_template: str
    max_new_tokens: int
    grade: Callable[[str, str], float]

    def prompt(self, problem: Problem) -> str:
        return self.prompt_template.format(question=problem.question)


def build_task(cfg) -> Task:
    """Build the task named by ``cfg.name`` (a dataset config dataclass)."""
    if cfg.name == "arithmetic":
        from lrn.tasks.arithmetic import build_splits

        train, test = build_splits(cfg.levels, cfg.train_size, cfg.test_per_level, cfg.train_seed,
                                   cfg.test_seed, cfg.width)
    else:  # pragma: no cover - the config schema only admits registered names
        raise ValueError(f"unknown dataset {cfg.name!r}")
    check_disjoint(train, test, f"dataset={cfg.name}")
    return Task(cfg.name, train, test, cfg.prompt_template, cfg.max_new_tokens, GRADERS[cfg.grader])
