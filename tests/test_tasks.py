import random

import pytest

from lrn.config import ConfigError
from lrn.tasks import question_hash
from lrn.tasks.arithmetic import build_splits, make_problem
from lrn.tasks.base import Problem, check_disjoint


def test_problem_answers_and_levels():
    rng = random.Random(0)
    for level in range(1, 6):
        for _ in range(200):
            p = make_problem(rng, level)
            a, op, b = _split(p.question)
            assert str(a + b if op == "+" else a - b) == p.answer
            assert max(len(str(a)), len(str(b))) == level + 1  # level L: larger operand has L+1 digits
            assert p.level == level


def _split(q):
    i = max(q.find("+", 1), q.find("-", 1))
    return int(q[:i]), q[i], int(q[i + 1:])


def test_splits_are_disjoint_balanced_and_reproducible():
    train, validation, test = build_splits(5, 2000, 100, 1, 2, val_per_level=50, val_seed=3)
    assert len(train) == 2000 and len(test) == 500 and len(validation) == 250
    assert all(sum(p.level == lv for p in validation) == 50 for lv in range(1, 6))
    hashes = [{question_hash(p.question) for p in split} for split in (train, validation, test)]
    assert not hashes[0] & hashes[1] and not hashes[1] & hashes[2]
    assert {p.level for p in test} == {1, 2, 3, 4, 5}
    assert all(sum(p.level == lv for p in test) == 100 for lv in range(1, 6))
    assert not {question_hash(p.question) for p in train} & {question_hash(p.question) for p in test}
    assert len({p.id for p in train}) == 2000
    again, _, again_test = build_splits(5, 2000, 100, 1, 2)  # no validation split: pool and test unchanged
    assert [p.id for p in again] == [p.id for p in train] and [p.id for p in again_test] == [p.id for p in test]


def test_overlapping_splits_are_refused():
    a = Problem("1", "What is  2+2?", "4")
    b = Problem("2", "what is 2+2?", "4")
    with pytest.raises(ConfigError, match="also appear in the training pool"):
        check_disjoint([a], [b], "dataset=x")


def test_eval_split_picks_validation_with_its_own_metric_name():
    from lrn.dataset_config import ArithmeticConfig
    from lrn.tasks import build_task

    test_task = build_task(ArithmeticConfig(train_size=300, test_per_level=8, val_per_level=6))
    val_task = build_task(ArithmeticConfig(train_size=300, test_per_level=8, val_per_level=6, eval_split="validation"))
    assert (test_task.name, len(test_task.test)) == ("arithmetic", 40)
    assert (val_task.name, len(val_task.test)) == ("arithmetic_val", 30)
    assert [p.id for p in val_task.train] == [p.id for p in test_task.train]
    assert not {p.id for p in val_task.test} & {p.id for p in test_task.test}


def test_validation_split_needs_questions():
    from lrn.dataset_config import ArithmeticConfig

    with pytest.raises(ConfigError, match="dataset.eval_split.*val_per_level >= 1"):
        ArithmeticConfig(val_per_level=0, eval_split="validation").validate("dataset")
    with pytest.raises(ConfigError, match="dataset.val_seed"):
        ArithmeticConfig(val_seed=4321).validate("dataset")


def test_prompts_too_long_for_the_model_are_refused_naming_the_question_or_dropped(caplog):
    from lrn.models import build_char_tokenizer, fit_prompts
    from lrn.tasks import Task

    def task() -> Task:
        # one character, one token: "12+3=" is 5 tokens, "123+45=" 7; 10 positions - 4 for the answer leave 6
        train = [Problem("t/0", "12+3", "15"), Problem("t/1", "123+45", "168", meta={"where": "train.jsonl:2"})]
        test = [Problem("e/0", "1+1", "2"), Problem("e/1", "99999+1", "100000")]
        return Task("arith", train, test, "{question}=", 4, lambda text, gold: 0.0)

    tokenizer = build_char_tokenizer()
    with pytest.raises(ConfigError) as err:
        fit_prompts(task(), tokenizer, 10)
    assert str(err.value) == ("train.jsonl:2: question t/1 is 7 tokens as a prompt, the model allows 6 (the model's 10 "
                              "positions - dataset.max_new_tokens 4); shorten it, or set dataset.long_prompts=drop to "
                              "leave such questions out")
    # with 11 positions every training prompt fits; the held-out "99999+1=" (8) does not, unless eval.limit=1
    # leaves it out of what is evaluated
    with pytest.raises(ConfigError, match="question e/1 is 8 tokens as a prompt, the model allows 7"):
        fit_prompts(task(), tokenizer, 11)
    fit_prompts(task(), tokenizer, 11, eval_limit=1)
    dropped = task()
    fit_prompts(dropped, tokenizer, 10, "drop")
    assert [p.id for p in dropped.train] == ["t/0"] and [p.id for p in dropped.test] == ["e/0"]
    assert "left out 1 training and 1 held-out questions whose prompt is longer than 6 tokens" in caplog.text
    with pytest.raises(ConfigError, match="every train question's prompt is longer than 2 tokens"):
        fit_prompts(task(), tokenizer, 6, "drop")
    fit_prompts(task(), tokenizer, None)  # a model that does not say how long it reads: nothing to check
