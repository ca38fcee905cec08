"""The warm start's training problems never include a held-out question (validation or test split)."""

import itertools

from lrn.config import ArithmeticConfig, WarmStartConfig
from lrn.tasks import build_task, question_hash
from lrn.warmstart import training_problems


def test_the_default_warm_start_never_draws_a_validation_or_test_question():
    task_cfg, ws = ArithmeticConfig(), WarmStartConfig()
    held_out = set()
    for split in ("test", "validation"):
        task = build_task(ArithmeticConfig(eval_split=split))
        held_out |= {question_hash(p.question) for p in task.test}
    assert len(held_out) == 2 * task_cfg.levels * task_cfg.test_per_level  # 1,000 test + 1,000 validation
    drawn = [p for batch in itertools.islice(training_problems(ws, task_cfg), ws.steps) for p in batch]
    assert len(drawn) == ws.steps * ws.batch_size  # every problem the default warm start trains on
    assert not [p.question for p in drawn if question_hash(p.question) in held_out]
