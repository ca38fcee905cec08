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
    train, test = build_splits(5, 2000, 100, 1, 2)
    assert len(train) == 2000 and len(test) == 500
    assert {p.level for p in test} == {1, 2, 3, 4, 5}
    assert all(sum(p.level == lv for p in test) == 100 for lv in range(1, 6))
    assert not {question_hash(p.question) for p in train} & {question_hash(p.question) for p in test}
    assert len({p.id for p in train}) == 2000
    again, _ = build_splits(5, 2000, 100, 1, 2)
    assert [p.id for p in again] == [p.id for p in train]


def test_overlapping_splits_are_refused():
    a = Problem("1", "What is  2+2?", "4")
    b = Problem("2", "what is 2+2?", "4")
    with pytest.raises(ConfigError, match="also appear in the training pool"):
        check_disjoint([a], [b], "dataset=x")
