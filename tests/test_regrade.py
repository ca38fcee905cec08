"""lrn grade: saved completions re-graded with the training graders; bad rows named by file and line."""

import doctest
import json

import pytest

import lrn.regrade
from lrn.config import ConfigError
from lrn.regrade import Fields, regrade


def test_doctests():
    assert doctest.testmod(lrn.regrade).failed == 0


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_regrade_scores_single_and_multiple_samples_and_keeps_other_fields(tmp_path):
    src = write(tmp_path / "vllm.jsonl", [
        {"id": "a", "question": "2+3?", "outputs": ["so #### 5", "it is 6", "The answer is 5."], "gold": "5"},
        {"id": "b", "outputs": "Total: $1,200.00", "gold": "1200"},
        {"id": "c", "outputs": "\\boxed{7}", "gold": "8"},
    ])
    out = tmp_path / "graded.jsonl"
    summary = regrade(src, "numeric", Fields("outputs", "gold"), out)
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["rewards"] for g in graded] == [[1.0, 0.0, 1.0], [1.0], [0.0]]
    assert graded[0]["reward"] == pytest.approx(2 / 3) and graded[0]["question"] == "2+3?"
    assert summary["accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3) and summary["completions"] == 5
    assert json.loads((tmp_path / "graded.summary.json").read_text())["rows"] == 3


def test_regrade_math_answers_with_math_verify_and_boxed_golds(tmp_path):
    src = write(tmp_path / "m.jsonl", [
        {"completion": "thus \\boxed{\\frac{1}{2}}", "answer": "The answer is \\boxed{0.5}."},
        {"completion": "thus \\boxed{2}", "answer": "so \\boxed{\\sqrt{4}}"},
        {"completion": "thus \\boxed{3}", "answer": "so \\boxed{\\sqrt{4}}"},
    ])
    summary = regrade(src, "math", Fields(answer_rule="boxed"), tmp_path / "o.jsonl", workers=0)
    graded = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [g["reward"] for g in graded] == [1.0, 1.0, 0.0] and graded[1]["gold"] == "\\sqrt{4}"
    assert summary["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(("rows", "fields", "message"), [
    (['{"completion": "1", "answer": "1"}', "{oops"], Fields(), r"x.jsonl:2: invalid JSON"),
    ([{"text": "1", "answer": "1"}], Fields(), r"x.jsonl:1: missing field 'completion' \(fields present: answer, "
                                               r"text\); name the right one with --completion-field"),
    ([{"completion": "1"}], Fields(), r"x.jsonl:1: missing field 'answer'.*--answer-field"),
    ([{"completion": 3, "answer": "1"}], Fields(), r"x.jsonl:1: field 'completion' must be a string or a list"),
    ([{"completion": "1", "answer": "no hashes"}], Fields(answer_rule="gsm8k"), r"x.jsonl:1: field 'answer'"),
    ([], Fields(), r"x.jsonl: no rows to grade"),
])
def test_bad_input_is_one_line_naming_file_line_and_field(tmp_path, rows, fields, message):
    with pytest.raises(ConfigError, match=message) as err:
        regrade(write(tmp_path / "x.jsonl", rows), "numeric", fields, tmp_path / "out.jsonl")
    assert "\n" not in str(err.value) and not (tmp_path / "out.jsonl").exists()


def test_lrn_grade_cli_takes_the_grader_from_the_dataset(run_lrn, tmp_path):
    src = write(tmp_path / "c.jsonl", [{"completion": "#### 4", "answer": "4"}, {"completion": "5", "answer": "4"}])
    proc = run_lrn("grade", str(src), "dataset=gsm8k")
    assert proc.stdout.startswith("accuracy 0.5000 over 2 rows (2 completions, grader numeric)")
    proc = run_lrn("grade", str(src), check=False)
    assert proc.returncode == 2 and "needs a grader" in proc.stderr
    proc = run_lrn("grade", str(tmp_path / "missing.jsonl"), "--grader", "numeric", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "missing.jsonl: cannot read" in proc.stderr
