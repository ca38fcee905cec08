"""Graders on the real GSM8K / MATH-500 data, hand-written cases, and hostile model output."""

import json
import random
import threading
import time
from pathlib import Path

import pytest

from lrn.grading import (
    GRADERS,
    extract_gsm8k_gold,
    extract_numeric_answer,
    grade_many,
    grade_math,
    grade_numeric,
    last_boxed,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="real data not at ../shared/data")


def _rows(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def math500() -> list[dict]:
    return _rows("math500/test.jsonl")


def test_registered():
    assert GRADERS["numeric"] is grade_numeric and GRADERS["math"] is grade_math and "integer" in GRADERS


# --------------------------------------------------------------------------------------- GSM8K


@needs_data
def test_every_gsm8k_test_gold_parses_and_grades():
    rows = _rows("gsm8k/test.jsonl")
    assert len(rows) == 1319
    for row in rows:
        gold = extract_gsm8k_gold(row["answer"])
        assert int(gold) == float(gold)  # every GSM8K test answer is an integer
        assert grade_numeric(f"... #### {gold}", gold) == 1.0
        assert grade_numeric(row["answer"], gold) == 1.0  # the reference solution itself
        assert grade_numeric(f"... #### {int(gold) + 1}", gold) == 0.0


def test_extract_gsm8k_gold():
    assert extract_gsm8k_gold("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == "72"
    assert extract_gsm8k_gold("2 * 500 = 1000 + 7\n#### 1,007") == "1007"
    assert extract_gsm8k_gold("#### -3\n") == "-3"
    with pytest.raises(ValueError):
        extract_gsm8k_gold("no final answer line")


@pytest.mark.parametrize("completion, gold, expected", [
    ("She makes 9 * 2 = 18 dollars.\n#### 18", "18", 1.0),
    ("#### 1,080", "1080", 1.0),
    ("#### $1,080.00", "1080", 1.0),
    ("#### 1,234,567", "1234567", 1.0),
    ("#### 18.0", "18", 1.0),
    ("#### 18.00 dollars", "18", 1.0),
    ("It is 5 km away.\nThe answer is 5.", "5", 1.0),
    ("The answer is: 12 apples", "12", 1.0),
    ("The answer is 50%.", "50", 1.0),
    ("The answer is $3.50.", "3.5", 1.0),
    (r"So the total is \boxed{42}.", "42", 1.0),
    (r"\boxed{\$1,200}", "1200", 1.0),
    (r"\boxed{\frac{3}{4}}", "0.75", 1.0),
    ("#### 3/4", "0.75", 1.0),
    ("#### 2.5000001", "2.5", 1.0),  # relative error 4e-8 < 1e-6
    ("#### -5", "-5", 1.0),
    ("She pays 3 cups * $4 = $12, plus $2 tip, so 14 dollars in all", "14", 1.0),  # last number
    ("5-3 = 2", "2", 1.0),
    ("5-3 = 2", "-3", 0.0),  # a minus after a digit is subtraction, not a sign
    ("#### 17", "18", 0.0),
    ("#### 18.5", "18", 0.0),
    ("#### 18.000001", "18", 0.0),  # integer golds are exact
    ("#### 2.51", "2.5", 0.0),
    ("The answer is 7.\n#### 8", "7", 0.0),  # '####' takes precedence over 'answer is'
    ("The answer is 7.\n#### 8", "8", 1.0),
    (r"\boxed{3}; the answer is 4", "3", 1.0),  # boxed takes precedence over 'answer is'
    ("3 apples and 4 pears", "3", 0.0),  # the last number is 4
    ("#### none", "0", 0.0),  # a '####' without a number scores 0, no fallback
    ("", "0", 0.0),
    ("no numbers here", "0", 0.0),
    ("#### " + "9" * 100, "9" * 100, 0.0),  # refused: longer than any sane answer
    ("#### 1,2", "12", 0.0),  # a comma not followed by three digits is not a thousands separator
])
def test_numeric_cases(completion, gold, expected):
    assert grade_numeric(completion, gold) == expected


def test_extract_numeric_answer():
    assert extract_numeric_answer("#### $1,080.00 dollars") == "1080.00"
    assert extract_numeric_answer(r"\boxed{\dfrac{-3}{4}}") == "-3/4"
    assert extract_numeric_answer("x = -3") == "-3"
    assert extract_numeric_answer("nothing") is None


# ---------------------------------------------------------------------------------------- boxed


def test_last_boxed():
    assert last_boxed(r"\boxed{\frac{1}{\sqrt{2}}}") == r"\frac{1}{\sqrt{2}}"
    assert last_boxed(r"first \boxed{1}, then \boxed{2}") == "2"
    assert last_boxed(r"\boxed{\boxed{3}}") == "3"
    assert last_boxed(r"$\fbox{x+1}$") == "x+1"
    assert last_boxed(r"\boxed {7}") == "7"
    assert last_boxed(r"\boxed 5.") == "5"
    assert last_boxed(r"\boxed{1} and \boxed{2") is None  # the last box never closes
    assert last_boxed("") is None
    nested = r"\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}"
    assert last_boxed(nested) == "{" * 10_000 + "1" + "}" * 10_000


# ----------------------------------------------------------------------------------------- MATH


@pytest.mark.parametrize("completion, gold, expected", [
    (r"so $x=\boxed{\frac{1}{2}}$", "0.5", 1.0),
    (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
    (r"\boxed{x^2+2x+1}", "(x+1)^2", 1.0),
    (r"\boxed{[1,2)}", "[1,2)", 1.0),
    (r"\boxed{(1,2)}", "[1,2)", 0.0),
    (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", 1.0),
    (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", 1.0),
    (r"\boxed{\begin{pmatrix} 2 \\ 1 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", 0.0),
    (r"\boxed{2}", "3", 0.0),
    (r"The answer is 1/2 but nothing is boxed", r"\frac{1}{2}", 0.0),
    (r"\boxed{}", "0", 0.0),
])
def test_math_cases(completion, gold, expected):
    assert grade_math(completion, gold) == expected


@needs_data
def test_math500_reference_answers_accepted(math500):
    assert len(math500) == 500
    start = time.perf_counter()
    scores = grade_many([r["solution"] for r in math500], [r["answer"] for r in math500], "math")
    accepted = sum(scores) / len(scores)
    print(f"MATH-500 reference answers: {accepted:.1%} accepted in {time.perf_counter() - start:.1f}s")
    assert accepted >= 0.99


def _derangement_with_distinct_answers(answers: list[str], seed: int) -> list[int]:
    """A seeded permutation with no fixed point that never pairs two identical answer strings."""
    rng = random.Random(seed)
    perm = list(range(len(answers)))
    rng.shuffle(perm)

    def bad(i: int) -> bool:
        return perm[i] == i or answers[perm[i]].strip() == answers[i].strip()

    while any(bad(i) for i in range(len(perm))):
        for i in range(len(perm)):
            if bad(i):
                j = rng.randrange(len(perm))
                perm[i], perm[j] = perm[j], perm[i]
    return perm


@needs_data
def test_math500_shuffled_answers_rejected(math500):
    answers = [r["answer"] for r in math500]
    perm = _derangement_with_distinct_answers(answers, seed=0)
    assert sorted(perm) == list(range(500)) and all(p != i for i, p in enumerate(perm))
    scores = grade_many([math500[p]["solution"] for p in perm], answers, "math")
    print(f"MATH-500 shuffled answers: {sum(scores):.0f}/500 accepted")
    assert sum(scores) / len(scores) <= 0.01


# ---------------------------------------------------------------------------------- adversarial


ADVERSARIAL = {
    "100kB of digits": "9" * 100_000,
    "100kB boxed": r"\boxed{" + "1" * 100_000 + "}",
    "100kB open braces": "{" * 100_000,
    "100kB of open boxes": r"\boxed{" * 14_000 + "5",
    "10,000 nested braces": r"\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}",
    "10,000 unclosed braces": r"\boxed{" + "{" * 10_000 + "1",
    "power tower": r"\boxed{9^{9^{9^{9}}}}",
    "python power tower": r"\boxed{10**10**10}",
    "plain python power tower": "10**10**10",
    "huge exponent": r"\boxed{2^{99999999999}}",
    "huge factorial (timeout path)": r"\boxed{(10^{8})!}",
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_scores_zero_in_bounded_time(name):
    text = ADVERSARIAL[name]
    for grader in (grade_numeric, grade_math):
        start = time.perf_counter()
        assert grader(text, "7") == 0.0
        assert time.perf_counter() - start < 10.0


# ------------------------------------------------------------------------------------ grade_many


@needs_data
def test_grade_many_workers_match_in_process(math500):
    sample = math500[::10]  # 50 rows
    hostile = [ADVERSARIAL["power tower"], ADVERSARIAL["huge factorial (timeout path)"], "#### 7"]
    completions = [r["solution"] for r in sample] * 2 + hostile
    golds = [r["answer"] for r in sample] + [r["answer"] for r in sample[::-1]] + ["7"] * 3
    in_process = grade_many(completions, golds, "math", workers=0)
    assert in_process == grade_many(completions, golds, "math", workers=2)
    assert sum(in_process[:50]) == 50 and in_process[-3:] == [0.0, 0.0, 0.0]
    numeric = grade_many(["#### 3", "#### 4", "3 then 4"], ["3", "3", "4"], "numeric", workers=2)
    assert numeric == [1.0, 0.0, 1.0]


def test_grade_math_refuses_threads():
    errors: list[BaseException] = []

    def run() -> None:
        try:
            grade_math(r"\boxed{1}", "1")
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError) and "main thread" in str(errors[0])


def test_grade_many_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown grader"):
        grade_many(["1"], ["1"], "nope")
    with pytest.raises(ValueError, match="2 completions but 1"):
        grade_many(["1", "2"], ["1"], "integer")
