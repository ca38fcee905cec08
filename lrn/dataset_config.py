"""Config schemas of the ``dataset`` group: the procedural arithmetic task and real maths sets (see ``lrn.config``)."""

from __future__ import annotations

from dataclasses import dataclass

from lrn.validation import _check


def _check_prompt_and_grader(key: str, prompt_template: str, max_new_tokens: int, grader: str,
                             long_prompts: str) -> None:
    """The checks every dataset shares: where the question goes, the answer budget, a known grader."""
    from lrn.grading import GRADERS

    _check("{question}" in prompt_template, f"{key}.prompt_template", prompt_template, "must contain '{question}'")
    _check(max_new_tokens >= 1, f"{key}.max_new_tokens", max_new_tokens, "must be >= 1")
    _check(grader in GRADERS, f"{key}.grader", grader, f"allowed: {', '.join(sorted(GRADERS))}")
    _check(long_prompts in ("refuse", "drop"), f"{key}.long_prompts", long_prompts,
           "allowed: refuse (stop at the first prompt too long for the model), drop (leave such questions out)")


@dataclass
class ArithmeticConfig:
    """Procedural integer addition/subtraction; level L has a larger operand of L+1 digits."""

    name: str = "arithmetic"
    levels: int = 5
    train_size: int = 5000
    test_per_level: int = 200
    train_seed: int = 1234
    test_seed: int = 4321
    val_per_level: int = 200
    val_seed: int = 5678
    eval_split: str = "test"
    width: int = 6
    prompt_template: str = "{question}="
    max_new_tokens: int = 9
    grader: str = "integer"
    long_prompts: str = "refuse"

    def validate(self, key: str) -> None:
        _check(1 <= self.levels <= 9, f"{key}.levels", self.levels, "must be in 1..9")
        _check(self.train_size >= 1, f"{key}.train_size", self.train_size, "must be >= 1")
        _check(self.test_per_level >= 1, f"{key}.test_per_level", self.test_per_level, "must be >= 1")
        _check(self.train_seed != self.test_seed, f"{key}.test_seed", self.test_seed,
               "must differ from dataset.train_seed")
        _check(self.val_per_level >= 0, f"{key}.val_per_level", self.val_per_level,
               "must be >= 0 (0: no validation split)")
        _check(self.val_seed not in (self.train_seed, self.test_seed), f"{key}.val_seed", self.val_seed,
               "must differ from dataset.train_seed and dataset.test_seed")
        _check(self.eval_split in ("test", "validation"), f"{key}.eval_split", self.eval_split,
               "allowed: test, validation")
        _check(self.eval_split == "test" or self.val_per_level >= 1, f"{key}.eval_split", self.eval_split,
               "needs a validation split: set dataset.val_per_level >= 1")
        _check(self.width == 0 or self.width >= self.levels + 1, f"{key}.width", self.width,
               "must be 0 (natural numbers) or at least dataset.levels + 1 digits")
        _check_prompt_and_grader(key, self.prompt_template, self.max_new_tokens, self.grader,
                                 self.long_prompts)


@dataclass
class HubDatasetConfig:
    """A real maths dataset: GSM8K, MATH, MATH-500 (eval only) or any JSON lines file.

    ``path`` replaces the Hub: a local .jsonl/.json file with the training pool (``lrn train``) or the
    set to evaluate (``lrn eval``); ``test_path`` is a local held-out file (``lrn train``, and
    ``lrn eval`` when given).
    """

    name: str = "gsm8k"
    hub: str | None = "openai/gsm8k"
    hub_config: str | None = "main"
    train_split: str | None = "train"
    test_split: str = "test"
    path: str | None = None
    test_path: str | None = None
    format: str = "gsm8k"
    question_field: str = "question"
    question_template: str | None = None  # e.g. "{Body} {Question}": the question from several fields
    answer_field: str = "answer"
    answer_rule: str = "raw"
    level_field: str | None = None
    subject_field: str | None = None
    id_field: str | None = None
    train_limit: int | None = None
    prompt_template: str = "{question}"
    max_new_tokens: int = 512
    grader: str = "numeric"
    long_prompts: str = "refuse"

    def validate(self, key: str) -> None:
        _check(self.format in ("gsm8k", "math", "fields"), f"{key}.format", self.format,
               "allowed: gsm8k, math, fields (question_field/answer_field/answer_rule)")
        _check(self.answer_rule in ("raw", "gsm8k", "boxed"), f"{key}.answer_rule", self.answer_rule,
               "allowed: raw, gsm8k (after ####), boxed (last \\boxed{})")
        import re

        _check(self.question_template is None or (self.format == "fields"
                                                  and re.search(r"\{[^{}]+\}", self.question_template)),
               f"{key}.question_template", self.question_template,
               "needs format=fields and {field} placeholders, e.g. '{Body} {Question}' (or null: question_field)")
        _check(self.hub is not None or self.path is not None, f"{key}.path", self.path,
               "set dataset.path to a local .jsonl file (this dataset has no Hub source)")
        _check(self.train_limit is None or self.train_limit >= 1, f"{key}.train_limit", self.train_limit,
               "must be >= 1 or null")
        _check_prompt_and_grader(key, self.prompt_template, self.max_new_tokens, self.grader,
                                 self.long_prompts)
