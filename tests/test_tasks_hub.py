"""Dataset loaders on the real GSM8K / MATH-500 files, a generic field mapping, and user mistakes."""

import doctest
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lrn.tasks.hub
from lrn.config import ConfigError
from lrn.tasks.hub import (
    gsm8k_problems,
    jsonl_problems,
    load_records,
    math_problems,
    parse_level,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="real data not at ../shared/data")


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_doctests():
    assert doctest.testmod(lrn.tasks.hub).failed == 0


@needs_data
def test_gsm8k_test_split():
    source = str(DATA / "gsm8k" / "test.jsonl")
    problems = gsm8k_problems(load_records(source, "test", None), "gsm8k-test", source)
    assert len(problems) == 1319
    assert all(int(p.answer) == float(p.answer) for p in problems)  # numeric golds
    assert len({p.id for p in problems}) == 1319
    first = problems[0]
    assert first.question.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert first.answer == "18" and first.level is None and first.id == "gsm8k-test/0"
    assert "<<" not in first.meta["solution"] and "16 - 3 - 4 = 9 duck eggs" in first.meta["solution"]
    assert first.meta["solution"].endswith("#### 18")


@needs_data
def test_math500():
    source = str(DATA / "math500" / "test.jsonl")
    problems = math_problems(load_records(source, "test", None), "math500", source)
    assert len(problems) == 500
    assert {p.level for p in problems} == {1, 2, 3, 4, 5}
    assert {p.meta["subject"] for p in problems} == {
        "Algebra", "Counting & Probability", "Geometry", "Intermediate Algebra", "Number Theory",
        "Prealgebra", "Precalculus"}
    first = problems[0]
    assert first.question.startswith("Convert the point $(0,3)$ in rectangular coordinates")
    assert first.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert first.id == "math500/test/precalculus/807.json"


def test_math_gold_from_boxed_and_string_levels():
    records = [
        {"problem": "What is 1+1?", "solution": r"It is $\boxed{2}$.", "level": "Level 3", "type": "Algebra"},
        {"problem": "Half?", "solution": r"$\boxed{1}$ then $\boxed{\frac{1}{2}}$", "level": "Level ?",
         "type": "Prealgebra"},
        {"problem": "Given?", "answer": "7", "solution": r"\boxed{8}", "level": 5, "subject": "Geometry"},
    ]
    problems = math_problems(records, "math-train", "train.jsonl")
    assert [p.answer for p in problems] == ["2", r"\frac{1}{2}", "7"]  # 'answer' beats the boxed solution
    assert [p.level for p in problems] == [3, None, 5]
    assert [p.meta["subject"] for p in problems] == ["Algebra", "Prealgebra", "Geometry"]
    assert [p.id for p in problems] == ["math-train/0", "math-train/1", "math-train/2"]


def test_generic_jsonl_field_mapping(tmp_path):
    path = _write_jsonl(tmp_path / "mine.jsonl", [
        {"q": "2+2?", "sol": "2+2=<<2+2=4>>4\n#### 4", "difficulty": 1, "topic": "add", "key": "a"},
        {"q": "1000+234?", "sol": "#### 1,234", "difficulty": "2", "topic": "add", "key": "b"},
    ])
    (tmp_path / "blank.jsonl").write_text('\n{"q": "x", "sol": "#### 1"}\n\n', encoding="utf-8")
    records = load_records(str(path), "train", None)
    assert len(records) == 2
    problems = jsonl_problems(records, "q", "sol", "gsm8k", level_field="difficulty",
                              subject_field="topic", id_field="key", id_prefix="mine")
    assert [(p.id, p.question, p.answer, p.level, p.meta["subject"]) for p in problems] == [
        ("mine/a", "2+2?", "4", 1, "add"), ("mine/b", "1000+234?", "1234", 2, "add")]
    raw = jsonl_problems([{"question": "Q", "final": 12}], "question", "final")
    assert raw[0].answer == "12" and raw[0].level is None and raw[0].id == "row/0"
    boxed = jsonl_problems([{"question": "Q", "final": r"so \boxed{x^2}"}], "question", "final", "boxed")
    assert boxed[0].answer == "x^2"
    assert len(load_records(str(tmp_path / "blank.jsonl"), "train", None)) == 1  # blank lines skipped


def test_json_list_file(tmp_path):
    path = tmp_path / "list.json"
    rows = [{"question": "Q1", "answer": "#### 3"}, {"question": "Q2", "answer": "#### 5"}]
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    problems = gsm8k_problems(load_records(str(path), "train", None), "l", str(path))
    assert [p.answer for p in problems] == ["3", "5"]


# ------------------------------------------------------------------------------------ mistakes


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ConfigError) as err:
        load_records(str(missing), "train", None)
    message = str(err.value)
    assert "dataset.path" in message and "nope.jsonl" in message and "\n" not in message


def test_bad_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a", "answer": "#### 1"}\n{"question": "b", "answer": "#### 2"}\n'
                    '{"question": "c", "answer": #### 3}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_records(str(path), "train", None)
    message = str(err.value)
    assert "bad.jsonl:3:" in message and "invalid JSON" in message and "\n" not in message


def test_non_object_line(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"question": "a"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"list\.jsonl:2: expected a JSON object, got list"):
        load_records(str(path), "train", None)


def test_bad_json_list_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n {"question": "a"},\n {"question": }\n]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.json:3: invalid JSON"):
        load_records(str(path), "train", None)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no records"):
        load_records(str(path), "train", None)


def test_missing_fields():
    with pytest.raises(ConfigError) as err:
        gsm8k_problems([{"question": "a", "answer": "#### 1"}, {"question": "b"}], "g", "gsm.jsonl")
    message = str(err.value)
    assert message.startswith("gsm.jsonl: row 2: missing field 'answer'") and "question" in message
    with pytest.raises(ConfigError, match=r"row 1: field 'answer' has no '#### <answer>' line"):
        gsm8k_problems([{"question": "a", "answer": "it is 1"}], "g", "gsm.jsonl")
    with pytest.raises(ConfigError, match="row 1: missing field 'problem'"):
        math_problems([{"question": "a", "answer": "1"}], "m", "m.jsonl")
    with pytest.raises(ConfigError, match=r"row 1: field 'solution' has no \\boxed"):
        math_problems([{"problem": "a", "solution": "no box"}], "m", "m.jsonl")
    with pytest.raises(ConfigError, match="row 1: missing field 'answer'"):
        math_problems([{"problem": "a"}], "m", "m.jsonl")
    with pytest.raises(ConfigError, match="row 1: missing field 'lvl'"):
        jsonl_problems([{"q": "a", "a": "1"}], "q", "a", level_field="lvl", source="x.jsonl")
    with pytest.raises(ConfigError, match="row 1: field 'q' is empty"):
        jsonl_problems([{"q": "  ", "a": "1"}], "q", "a")
    with pytest.raises(ConfigError, match="dataset.answer_rule='latex' is invalid"):
        jsonl_problems([{"q": "a", "a": "1"}], "q", "a", "latex")
    with pytest.raises(ConfigError, match="level 'hard' is not an integer"):
        parse_level("hard", "x.jsonl:4")


def test_hub_name_failure_is_one_line():
    # As an offline user (HF_HUB_OFFLINE=1, read at import, hence a fresh interpreter): a Hub name fails
    # with one line that says how to use a local file instead.
    code = ("from lrn.tasks.hub import load_records\n"
            "try:\n    load_records('lrn-test-no-owner/no-dataset', 'test', None)\n"
            "except Exception as e:\n    print(type(e).__name__, '|', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    kind, _, message = proc.stdout.strip().partition(" | ")
    assert kind == "ConfigError", proc.stdout + proc.stderr
    assert "dataset.path=" in message and "lrn-test-no-owner/no-dataset" in message and "\n" not in message


@needs_data
def test_build_task_splits_from_local_files():
    from lrn.config import HubDatasetConfig
    from lrn.tasks import build_task

    train, test = str(DATA / "gsm8k" / "train.jsonl"), str(DATA / "gsm8k" / "test.jsonl")
    task = build_task(HubDatasetConfig(path=train, test_path=test, train_limit=100))
    assert (len(task.train), len(task.test)) == (100, 1319)
    assert task.train[0].id == "gsm8k/train/0" and task.test[0].id == "gsm8k/test/0"
    assert task.test[0].answer == "18" and task.grade("so #### 18", "18") == 1.0
    evaluated = build_task(HubDatasetConfig(path=test), evaluation=True)  # lrn eval: path is the evaluated set
    assert evaluated.train == [] and [p.answer for p in evaluated.test] == [p.answer for p in task.test]
    math500 = build_task(HubDatasetConfig(name="math500", hub=None, train_split=None, format="math", grader="math",
                                          path=str(DATA / "math500" / "test.jsonl")), evaluation=True)
    assert len(math500.test) == 500 and {p.level for p in math500.test} == {1, 2, 3, 4, 5}


def test_build_task_with_a_field_mapping(tmp_path):
    from lrn.config import HubDatasetConfig
    from lrn.tasks import build_task

    train = _write_jsonl(tmp_path / "train.jsonl", [{"q": f"{i}+1", "sol": f"x\n#### {i + 1}", "lvl": "Level 2"}
                                                    for i in range(5)])
    test = _write_jsonl(tmp_path / "test.jsonl", [{"q": "9+1", "sol": "#### 10", "lvl": 3}])
    cfg = HubDatasetConfig(name="jsonl", hub=None, format="fields", question_field="q", answer_field="sol",
                           answer_rule="gsm8k", level_field="lvl", path=str(train), test_path=str(test))
    task = build_task(cfg)
    assert [p.answer for p in task.train] == ["1", "2", "3", "4", "5"] and task.test[0].level == 3
    assert task.prompt(task.test[0]) == "9+1"
    with pytest.raises(ConfigError, match=r"held-out question\(s\) also appear in the training pool"):
        build_task(HubDatasetConfig(name="jsonl", hub=None, format="fields", question_field="q", answer_field="sol",
                                    answer_rule="gsm8k", path=str(train), test_path=str(train)))


WILD = [{"ID": "a1", "Body": "Tom has 5 apples and buys 4 more.", "Question": "How many apples does he have?",
         "Answer": "9 (apples)"},
        {"ID": "a2", "Body": "A pen costs $1,200.", "Question": "What do 2 pens cost?", "Answer": "$2,400.00"}]


def test_a_set_in_the_wild_is_evaluable_by_config_alone(tmp_path):
    from lrn.config import compose, to_config
    from lrn.tasks import build_task

    path = _write_jsonl(tmp_path / "wild.jsonl", WILD)
    cfg = to_config(compose(["dataset=jsonl", "model=qwen2.5-0.5b-instruct", f"dataset.path={path}",
                             'dataset.question_template="{Body} {Question}"', "dataset.answer_field=Answer",
                             "dataset.id_field=ID"]))
    task = build_task(cfg.dataset, evaluation=True)  # what lrn eval builds
    apples, pens = task.test
    assert apples.question == "Tom has 5 apples and buys 4 more. How many apples does he have?"
    assert task.prompt(apples).startswith(apples.question + "\nSolve the problem step by step.")
    assert (apples.id, apples.answer, pens.answer) == ("jsonl/test/a1", "9", "2400.00")  # read as answers are
    for right in (r"5 + 4 = 9, so \boxed{9}", "The answer is 9", "The answer is 9 apples."):
        assert task.grade(right, apples.answer) == 1.0, right
    for wrong in (r"\boxed{8}", "The answer is 10 (apples)", "I don't know"):
        assert task.grade(wrong, apples.answer) == 0.0, wrong
    assert task.grade(r"2 pens cost \boxed{\$2400}", pens.answer) == 1.0
    assert task.grade("#### 2,400", "$2,400.00") == 1.0  # raw golds grade too (e.g. lrn grade)


def test_wild_set_mistakes_name_file_line_and_field(tmp_path):
    lines = [json.dumps(WILD[0]), "", json.dumps({"Question": "No body?", "Answer": "3"})]
    path = tmp_path / "wild.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    fields = dict(question_template="{Body} {Question}", answer_field="Answer")
    with pytest.raises(ConfigError) as err:
        load(path, **fields)
    assert str(err.value).startswith(f"{path}:3: missing field 'Body' (fields present: ")  # line 3, not row 2
    _write_jsonl(path, [WILD[0], {**WILD[1], "Answer": "twelve"}])
    with pytest.raises(ConfigError) as err:
        load(path, **fields)
    assert str(err.value).startswith(f"{path}:2: field 'Answer': gold 'twelve' cannot be read by "
                                     "dataset.grader=numeric; fix that row") and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"wild.jsonl:1: field 'Answer': gold '9 \(apples\)' cannot be read by "
                                          r"dataset.grader=integer"):
        load(path, grader="integer", **fields)
    _write_jsonl(path, [{**WILD[0], "Answer": "9^{9^{9}}"}])
    with pytest.raises(ConfigError, match=r"wild.jsonl:1: field 'Answer': gold '9\^\{9\^\{9\}\}' cannot be read by "
                                          r"dataset.grader=math"):
        load(path, grader="math", **fields)


def load(path: Path, **fields):
    """lrn eval's held-out set of dataset=jsonl on ``path`` with these dataset fields."""
    from lrn.config import HubDatasetConfig
    from lrn.tasks import build_task

    cfg = HubDatasetConfig(name="jsonl", hub=None, format="fields", path=str(path), **fields)
    return build_task(cfg, evaluation=True).test
