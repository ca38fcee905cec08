"""pass@k and maj@k against hand-computed values."""

from math import comb

import pytest

from lrn.evaluate import majority_correct, pass_at_k
from lrn.rollout import Rollout
from lrn.tasks import Problem


@pytest.mark.parametrize("n, c, k, expected", [
    (4, 1, 1, 0.25),                  # one right in four: a single draw hits it 1/4 of the time
    (4, 1, 2, 0.5),                   # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (5, 2, 2, 1 - 3 / 10),            # 1 - C(3,2)/C(5,2)
    (8, 3, 4, 1 - 5 / 70),            # 1 - C(5,4)/C(8,4)
    (8, 0, 8, 0.0),
    (8, 5, 4, 1.0),                   # fewer than k wrong answers: some draw of k must include a right one
    (10, 10, 1, 1.0),
])
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_k_needs_k_samples():
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def group(texts, answer="+0000042"):
    p = Problem("q", "40+2", answer)
    from lrn.grading import grade_integer

    return [Rollout(p, [], [], t, grade_integer(t, answer), False) for t in texts]


def test_majority_vote_by_hand():
    g = group(["+0000042", "43", "42", "junk", "43", "43"])
    assert majority_correct(g, 3, "integer") == 1.0   # 42 (x2, as +0000042 and 42) beats 43 (x1)
    assert majority_correct(g, 6, "integer") == 0.0   # 43 x3 beats 42 x2
    assert majority_correct(g[:2], 2, "integer") == 1.0  # a 1-1 tie goes to the answer seen first
    assert majority_correct(group(["junk", "??"]), 2, "integer") == 0.0
