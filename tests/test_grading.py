import doctest

import lrn.grading
from lrn.grading import grade_integer


def test_doctests():
    assert doctest.testmod(lrn.grading).failed == 0


def test_integer_grader():
    assert grade_integer("-12", "-12") == 1.0
    assert grade_integer("+12", "12") == 1.0
    assert grade_integer("12", "-12") == 0.0
    assert grade_integer("12abc", "12") == 0.0
    assert grade_integer("1" * 5000, "1") == 0.0  # absurdly long output is refused, not parsed
    assert grade_integer("", "0") == 0.0
