"""Verifiers: pure functions from (completion text, gold answer) to a reward in {0.0, 1.0}.

Model output is only ever parsed, never executed. Every grader looks at a bounded amount of text
(the last ``MAX_COMPLETION_CHARS`` characters of a completion, answers of at most
``MAX_ANSWER_CHARS``), and the symbolic grader bounds each math-verify call with a timeout, so hostile
output scores 0 in bounded time. math-verify times out with ``signal.alarm``: it must run in a main
thread, so :func:`grade_many` parallelises with worker processes, never threads.
"""

from __future__ import annotations

import multiprocessing
import re
import sys
import threading
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

MAX_COMPLETION_CHARS = 16_000  # graders read only the tail of a completion (the answer is at the end)
MAX_ANSWER_CHARS = 512  # an extracted answer longer than this scores 0 without being parsed
MAX_NUMBER_CHARS = 64  # a numeric literal longer than this is refused
MAX_BRACE_DEPTH = 16  # deeper nesting in a boxed answer scores 0 without being parsed
MATH_TIMEOUT_S = 2  # per math-verify parse / comparison (whole seconds: signal.alarm)

_INTEGER = re.compile(r"[+-]?\d+")


def grade_integer(completion: str, answer: str) -> float:
    """Exact integer match of the whole (stripped) completion; anything unparseable scores 0.

    >>> grade_integer("42", "42"), grade_integer(" -7\\n", "-7"), grade_integer("042", "42")
    (1.0, 1.0, 1.0)
    >>> grade_integer("41", "42"), grade_integer("4 2", "42"), grade_integer("", "42")
    (0.0, 0.0, 0.0)
    """
    text = completion.strip()
    if not _INTEGER.fullmatch(text) or len(text) > 64:
        return 0.0
    return float(int(text) == int(answer))


# ---------------------------------------------------------------------------------------- boxed


_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (or ``\fbox{...}``), braces balanced; None if absent or open.

    Work is linear in ``len(text)``: one reverse search per command and one forward brace scan.

    >>> last_boxed(r"so \boxed{1} or rather \boxed{\frac{1}{2}}.")
    '\\frac{1}{2}'
    >>> last_boxed(r"\fbox{7}"), last_boxed(r"\boxed 5$"), last_boxed("no box"), last_boxed(r"\boxed{1")
    ('7', '5', None, None)
    """
    start, command = max((text.rfind(c), c) for c in _BOX_COMMANDS)
    if start < 0:
        return None
    i = start + len(command)
    n = len(text)
    while i < n and text[i] == " ":
        i += 1
    if i >= n:
        return None
    if text[i] != "{":  # "\boxed 5": the argument is the following token
        if i == start + len(command):
            return None  # e.g. "\boxedx" is another command
        m = re.match(r"[^\s$]+", text[i:i + MAX_ANSWER_CHARS + 1])
        return m.group(0).rstrip(".,") if m else None
    depth = 0
    for j in range(i, n):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


# -------------------------------------------------------------------------------------- numeric


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.]+)\s*\}\s*\{\s*(-?[\d.]+)\s*\}")
_NUMBER = re.compile(r"(?:(?<![\w.)])-)?(?:\d+(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+(?:\.\d+)?)?")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?", re.IGNORECASE)


def _normalise(segment: str) -> str:
    """Drop thousands separators, currency and LaTeX spacing; turn ``\\frac{a}{b}`` into ``a/b``."""
    s = segment.replace("\u2212", "-").replace("\\$", "").replace("$", "").replace("\\!", "")
    s = s.replace("\\,", "").replace("{,}", ",")
    s = _THOUSANDS.sub("", s)
    return _FRAC.sub(r"\1/\2", s)


def _to_fraction(token: str) -> Fraction | None:
    """The exact value of a numeric token (``12``, ``-0.50``, ``3/4``); None if too long or n/0."""
    token = token.replace(" ", "")
    if len(token) > MAX_NUMBER_CHARS:
        return None
    try:
        if "/" in token:
            num, den = token.split("/")
            return Fraction(num) / Fraction(den)
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


def extract_numeric_answer(completion: str) -> str | None:
    r"""The numeric final answer: after the last ``####``, else the last ``\boxed{}``, else after the
    last "answer is", else the last number in the text. Returns a normalised numeric token or None.

    >>> extract_numeric_answer("6*3=18\n#### $1,080.00 dollars")
    '1080.00'
    >>> extract_numeric_answer(r"so \boxed{\frac{3}{4}}"), extract_numeric_answer("The answer is 5.")
    ('3/4', '5')
    >>> extract_numeric_answer("She has 5 - 2 = 3 apples left."), extract_numeric_answer("#### none")
    ('3', None)
    """
    text = completion[-MAX_COMPLETION_CHARS:]
    marker = text.rfind("####")
    if marker >= 0:
        segment: str | None = text[marker + 4:].split("\n", 1)[0]
    else:
        segment = last_boxed(text)
        if segment is None:
            found = list(_ANSWER_IS.finditer(text))
            segment = text[found[-1].end():].split("\n", 1)[0] if found else None
    if segment is not None:
        return _first_number(segment)
    numbers = _NUMBER.findall(_normalise(text))
    return numbers[-1].replace(" ", "") if numbers else None


def _first_number(segment: str) -> str | None:
    """The first number of an answer segment once currency, thousands separators and ``\\frac`` are
    normalised; units and words around it are ignored."""
    m = _NUMBER.search(_normalise(segment[:MAX_ANSWER_CHARS]))
    return m.group(0).replace(" ", "") if m else None


def extract_gsm8k_gold(solution: str) -> str:
    """The number after the final ``####`` of a GSM8K solution, commas removed.

    >>> extract_gsm8k_gold("3 + 4 = <<3+4=7>>7\\n#### 1,007")
    '1007'
    """
    marker = solution.rfind("####")
    if marker < 0:
        raise ValueError("solution has no '#### <answer>' line")
    gold = solution[marker + 4:].strip().split("\n", 1)[0].strip().replace(",", "")
    if not gold:
        raise ValueError("solution has an empty '####' line")
    return gold


def grade_numeric(completion: str, gold: str) -> float:
    r"""GSM8K-style grading: the extracted final number equals the gold number.

    Integers (and decimals/fractions equal to an integer, like ``18.0``) must match exactly; a
    non-integer gold allows a relative error of 1e-6.

    >>> grade_numeric("... so she makes $18.\n#### 18", "18"), grade_numeric(r"\boxed{18.00}", "18")
    (1.0, 1.0)
    >>> grade_numeric("The answer is 1,250 meters.", "1250"), grade_numeric("1/3 so 0.3333333", "1/3")
    (1.0, 1.0)
    >>> grade_numeric("#### 17", "18"), grade_numeric("#### 18.000001", "18"), grade_numeric("", "18")
    (0.0, 0.0, 0.0)
    >>> grade_numeric(r"so \\boxed{9}", "9 (apples)"), grade_numeric("The answer is 9", "$9.00")
    (1.0, 1.0)
    """
    token, gold_token = extract_numeric_answer(completion), normalise_gold("numeric", gold)
    want = _to_fraction(gold_token) if gold_token is not None else None
    got = _to_fraction(token) if token is not None else None
    if got is None or want is None:
        return 0.0
    if want.denominator == 1:
        return float(got == want)
    return float(abs(got - want) <= Fraction(1, 10**6) * abs(want))


def normalise_gold(grader_name: str, gold: str) -> str | None:
    r"""A gold answer as the grader reads it, by the rules it applies to a predicted answer; None if it
    cannot read it at all. integer: a whole integer. numeric: the number itself, else the first number once
    currency, thousands separators and ``\frac`` are normalised (units and trailing words ignored).
    math: as is (math-verify normalises both sides), unless empty or too risky to parse.

    >>> [normalise_gold("numeric", g) for g in ("9 (apples)", "$1,080.00", "1e6", r"\frac{3}{4} cup", "twelve")]
    ['9', '1080.00', '1e6', '3/4', None]
    >>> normalise_gold("integer", "+0042"), normalise_gold("integer", "9 (apples)"), normalise_gold("math", " x ")
    ('42', None, 'x')
    """
    text = gold.strip()
    if grader_name == "integer":
        return final_answer("integer", text)
    if grader_name == "numeric":
        whole = _normalise(text).replace(" ", "")
        return whole if _to_fraction(whole) is not None else _first_number(text)
    return text if text and not _too_risky(text) else None


# ----------------------------------------------------------------------------------------- MATH


_NUMERIC_TOWER = re.compile(r"(?:\^|\*\*)\s*[{(]?\s*\d+\s*(?:\^|\*\*)")  # 9^{9^9}, 10**10**10
_HUGE_EXPONENT = re.compile(r"(?:\^|\*\*)\s*[{(]?\s*[-+]?\d{6,}")


def _too_risky(answer: str) -> bool:
    """Answers we refuse to parse: overlong, deeply nested, numeric power towers, huge exponents."""
    if len(answer) > MAX_ANSWER_CHARS or _NUMERIC_TOWER.search(answer) or _HUGE_EXPONENT.search(answer):
        return True
    depth = 0
    for ch in answer:
        if ch == "{":
            depth += 1
            if depth > MAX_BRACE_DEPTH:
                return True
        elif ch == "}":
            depth -= 1
    return False


def _boxed_source(answer: str) -> str:
    r"""Wrap an answer in ``\boxed{}`` (math-verify's LaTeX extraction needs an environment)."""
    return answer if "\\boxed" in answer else "\\boxed{" + answer + "}"


_GOLD_CACHE: dict[str, list[Any]] = {}
_GOLD_CACHE_SIZE = 4096


def _parse_gold(gold: str) -> list[Any]:
    """math-verify's parse of a gold answer, cached when it succeeds (one gold, many completions)."""
    if gold in _GOLD_CACHE:
        return _GOLD_CACHE[gold]
    from math_verify import parse

    parsed = parse(_boxed_source(gold), parsing_timeout=MATH_TIMEOUT_S)
    if parsed:  # a failure (e.g. a timeout on a loaded machine) is retried next time, not cached
        if len(_GOLD_CACHE) >= _GOLD_CACHE_SIZE:
            _GOLD_CACHE.pop(next(iter(_GOLD_CACHE)))
        _GOLD_CACHE[gold] = parsed
    return parsed


def grade_math(completion: str, gold: str) -> float:
    r"""MATH-style grading: the last ``\boxed{}`` of the completion is equivalent to the gold (math-verify).

    Must run in a main thread (math-verify's timeouts use signals); timeouts and errors score 0.

    >>> grade_math(r"so $x = \boxed{\dfrac{1}{2}}$", "0.5")
    1.0
    >>> grade_math(r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)")
    1.0
    >>> grade_math(r"\boxed{2}", "3"), grade_math("1/2", r"\frac12"), grade_math(r"\boxed{9^{9^9}}", "9")
    (0.0, 0.0, 0.0)
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("grade_math must run in a main thread (math-verify uses signal.alarm); "
                           "use grade_many(..., workers=N) for parallelism")
    pred = last_boxed(completion[-MAX_COMPLETION_CHARS:])
    if pred is None or not pred.strip() or _too_risky(pred):
        return 0.0
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    try:
        gold_parsed = _parse_gold(gold.strip())
        pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=MATH_TIMEOUT_S)
        if not gold_parsed or not pred_parsed:
            return 0.0
        return float(verify(gold_parsed, pred_parsed, timeout_seconds=MATH_TIMEOUT_S))
    except (Exception, TimeoutException):
        return 0.0


GRADERS: dict[str, Callable[[str, str], float]] = {
    "integer": grade_integer,
    "numeric": grade_numeric,
    "math": grade_math,
}


# ---------------------------------------------------------------------------------------- batch


def _grade_one(item: tuple[str, str, str]) -> float:
    """Grade one (grader name, completion, gold) triple in a worker process's main thread."""
    name, completion, gold = item
    return GRADERS[name](completion, gold)


def _pool_context() -> multiprocessing.context.BaseContext:
    """forkserver where available (workers fork from a server that already imported the graders)."""
    if sys.platform.startswith("linux"):
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["lrn.grading", "math_verify"])
        return ctx
    return multiprocessing.get_context("spawn")


def grade_many(completions: Sequence[str], golds: Sequence[str], grader_name: str,
               workers: int = 0) -> list[float]:
    """Grade a batch in order; ``workers > 0`` uses that many processes, with identical results.

    >>> grade_many(["#### 3", "#### 4"], ["3", "3"], "numeric")
    [1.0, 0.0]
    """
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
    pool = GradePool(grader_name, min(workers, len(golds)))
    try:
        return pool.grade(completions, golds)
    finally:
        pool.close()


class GradePool:
    """Grades batches in order: in ``workers`` persistent processes, or inline with ``workers=0``.

    Processes are for the ``math`` grader (math-verify: up to MATH_TIMEOUT_S per answer, a timeout
    scores 0; its signal-based timeouts need each worker's main thread); the others take microseconds.

    The pool starts on first use and lives until :meth:`close`, so a training run pays its start once.
    """

    def __init__(self, grader_name: str, workers: int = 0):
        if grader_name not in GRADERS:
            raise ValueError(f"unknown grader {grader_name!r}; choose one of {sorted(GRADERS)}")
        self.grader_name = grader_name
        self.workers = workers
        self._pool = None

    def grade(self, completions: Sequence[str], golds: Sequence[str]) -> list[float]:
        items = [(self.grader_name, c, g) for c, g in zip(completions, golds, strict=True)]
        if self.workers <= 0 or len(items) <= 1:
            return [_grade_one(item) for item in items]
        if self._pool is None:
            self._pool = _pool_context().Pool(self.workers)
        return self._pool.map(_grade_one, items, chunksize=max(1, len(items) // (4 * self.workers)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def final_answer(grader_name: str, completion: str) -> str | None:
    """The answer a grader would read from a completion, normalised for majority voting (maj@k); None
    when there is none (or, under ``math``, one too risky to parse, which would score 0 anyway).

    >>> final_answer("integer", " +0042"), final_answer("numeric", "so #### 1,200"), final_answer("math", r"\\boxed{x}")
    ('42', '1200', 'x')
    """
    text = completion[-MAX_COMPLETION_CHARS:]
    if grader_name == "integer":
        stripped = text.strip()
        return str(int(stripped)) if _INTEGER.fullmatch(stripped) and len(stripped) <= MAX_NUMBER_CHARS else None
    if grader_name == "numeric":
        answer = extract_numeric_answer(text)
        value = _to_fraction(answer) if answer is not None else None
        return str(value) if value is not None else answer
    boxed = last_boxed(text)
    return boxed.strip() if boxed is not None and boxed.strip() and not _too_risky(boxed) else None


def grade_answer(grader_name: str, answer: str, gold: str) -> float:
    r"""Grade an answer from :func:`final_answer` against a gold, as the grader grades a completion ending in it.

    >>> grade_answer("math", r"\frac{1}{2}", "0.5"), grade_answer("numeric", "1/2", "0.5")
    (1.0, 1.0)
    >>> grade_answer("integer", "7", "8")
    0.0
    """
    completion = {"integer": answer, "numeric": f"#### {answer}"}.get(grader_name, "\\boxed{" + answer + "}")
    return GRADERS[grader_name](completion, gold)


def same_answer(grader_name: str, a: str, b: str) -> bool:
    r"""Whether two answers from :func:`final_answer` are one vote: equal, or the grader accepts either
    as right against the other as gold.

    >>> same_answer("math", r"\frac{1}{2}", "0.5"), same_answer("math", "2", "0.5"), same_answer("integer", "2", "2")
    (True, False, True)
    """
    return a == b or grade_answer(grader_name, a, b) == 1.0 or grade_answer(grader_name, b, a) == 1.0
