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


def graded(texts, answer, grader_name, truncated=()):
    """Rollouts of one problem, graded as the engine does: a truncated one scores 0."""
    from lrn.grading import GRADERS

    p = Problem("q", "question", answer)
    return [Rollout(p, [], [], t, 0.0 if i in truncated else GRADERS[grader_name](t, answer), i in truncated)
            for i, t in enumerate(texts)]


def test_majority_vote_ignores_truncated_samples_and_grades_the_majority_answer():
    # 3 of 4 answers are 42; the first was cut off (stored reward 0) but must not decide the score
    g = graded(["42", "42", "42", "43"], "42", "integer", truncated={0})
    assert g[0].reward == 0.0 and majority_correct(g, 4, "integer") == 1.0
    # truncated answers do not vote: 43 x3 of which 2 truncated -> 42 x1 vs 43 x1, tie to the first seen
    g = graded(["43", "43", "42", "43"], "42", "integer", truncated={0, 1})
    assert majority_correct(g, 4, "integer") == 1.0
    assert majority_correct(graded(["42"], "42", "integer", truncated={0}), 1, "integer") == 0.0  # no vote


def test_majority_vote_groups_equivalent_answers():
    # raw strings would split 1/2 three ways and let 2 (x2) win; the math grader's equivalence makes 1/2 x3
    texts = [r"\boxed{2}", r"\boxed{2}", r"\boxed{\frac{1}{2}}", r"so \boxed{0.5}", r"\boxed{\dfrac{1}{2}}"]
    assert majority_correct(graded(texts, r"\frac{1}{2}", "math"), 5, "math") == 1.0
    assert majority_correct(graded(texts, "2", "math"), 5, "math") == 0.0  # the majority is 1/2, not 2
    assert majority_correct(graded(texts, r"\frac{1}{2}", "math"), 4, "math") == 0.0  # 2 x2 vs 1/2 x2: 2, seen first
    # numeric: 1,200 and 1200.00 are one vote against 7 and 7
    texts = ["#### 7", "#### 1,200", "The answer is 1200.00", "#### 7", "#### 1200"]
    assert majority_correct(graded(texts, "1200", "numeric"), 5, "numeric") == 1.0
