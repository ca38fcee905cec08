"""Question sources. :func:`build_task` turns a dataset config into train/test problems and a grader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lrn.grading import GRADERS
from lrn.tasks.base import Problem, check_disjoint, question_hash

__all__ = ["Problem", "Task", "build_task", "question_hash"]


@dataclass
class Task:
    """A training pool, a held-out set, how to prompt and how to grade.

    ``render`` turns the filled-in template into the model's input text; the identity by default,
    a chat template once :func:`lrn.models.prepare_task` has seen the tokenizer.
    """

    name: str
    train: list[Problem]
    test: list[Problem]
    prompt_template: str
    max_new_tokens: int
    grade: Callable[[str, str], float]
    render: Callable[[str], str] = field(default=lambda text: text)
    special_tokens: bool = True  # let the tokenizer add BOS etc.; off for chat-rendered text, which has them

    def prompt(self, problem: Problem) -> str:
        return self.render(self.prompt_template.replace("{question}", problem.question))


def build_task(cfg, evaluation: bool = False) -> Task:
    """Build the task named by ``cfg.name`` (a dataset config dataclass).

    With ``evaluation`` only the held-out set is needed (``lrn eval``): a Hub dataset then reads
    ``dataset.test_path``, else ``dataset.path``, else the Hub's test split, and no training pool.
    """
    if cfg.name == "arithmetic":
        from lrn.tasks.arithmetic import build_splits

        train, validation, test = build_splits(cfg.levels, cfg.train_size, cfg.test_per_level, cfg.train_seed,
                                               cfg.test_seed, cfg.width, cfg.val_per_level, cfg.val_seed)
        check_disjoint(train, test, f"dataset={cfg.name}")
        check_disjoint(train, validation, f"dataset={cfg.name} (validation split)")
        check_disjoint(test, validation, f"dataset={cfg.name} (validation split vs test split)")
        # the validation split gets its own metric names (eval/arithmetic_val/...), never pooled with test's
        name = f"{cfg.name}_val" if cfg.eval_split == "validation" else cfg.name
        return Task(name, train, validation if cfg.eval_split == "validation" else test, cfg.prompt_template,
                    cfg.max_new_tokens, GRADERS[cfg.grader])
    else:
        from lrn.tasks.hub import load_splits

        train, test = load_splits(cfg, evaluation)
    check_disjoint(train, test, f"dataset={cfg.name}")
    return Task(cfg.name, train, test, cfg.prompt_template, cfg.max_new_tokens, GRADERS[cfg.grader])

