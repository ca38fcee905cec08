"""Held-out evaluation: greedy accuracy, pass@k and maj@k, overall and per level / subject.

`lrn train` (periodic evaluation) and `lrn eval` call the same :func:`evaluate`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from lrn.grading import final_answer, grade_answer, same_answer
from lrn.rollout import Rollout, RolloutEngine
from lrn.tasks import Problem


@dataclass
class EvalResult:
    """Metrics named ``eval/<set>/...`` and one record per question."""

    metrics: dict[str, float]
    records: list[dict]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are right (Chen et al. 2021): 1 - C(n-c, k) / C(n, k).

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 2), pass_at_k(4, 0, 4), pass_at_k(4, 3, 2)
    (0.25, 0.5, 0.0, 1.0)
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least k samples, got n={n}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):  # prod (1 - k/i), numerically stable form of the binomial ratio
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def majority_correct(group: list[Rollout], k: int, grader_name: str) -> float:
    r"""maj@k: is the most frequent final answer among the first k samples right?

    Only untruncated samples vote. Answers the grader deems equivalent are one vote (``\frac{1}{2}`` and
    ``0.5`` under ``math``); a tie goes to the answer seen first. The majority answer itself is graded
    against the gold, whichever sample carried it.
    """
    votes: list[list] = []  # [answer, count] in the order first seen
    for rollout in group[:k]:
        answer = None if rollout.truncated else final_answer(grader_name, rollout.text)
        if answer is None:
            continue
        for vote in votes:
            if same_answer(grader_name, vote[0], answer):
                vote[1] += 1
                break
        else:
            votes.append([answer, 1])
    if not votes:
        return 0.0
    top = max(votes, key=lambda vote: vote[1])  # the first of equal counts
    return grade_answer(grader_name, top[0], group[0].problem.answer)


def _breakdown(problem: Problem) -> list[str]:
    keys = []
    if problem.level is not None:
        keys.append(f"L{problem.level}")
    if problem.meta.get("subject"):
        keys.append(str(problem.meta["subject"]))
    return keys


def evaluate(engine: RolloutEngine, problems: list[Problem], name: str, grader_name: str = "integer",
             samples: int = 0, ks: list[int] | tuple[int, ...] = ()) -> EvalResult:
    """Greedy accuracy, plus pass@k and maj@k from ``samples`` sampled answers per question.

    Nothing here counts as training compute. Per-level and per-subject accuracies are greedy.
    """
    greedy = engine.rollout(problems, 1, greedy=True, count=False)
    sampled = engine.rollout(problems, samples, count=False) if samples else [[] for _ in problems]
    scores: dict[str, list[float]] = defaultdict(list)
    records = []
    for problem, (g,), group in zip(problems, greedy, sampled, strict=True):
        scores["accuracy"].append(g.reward)
        for key in _breakdown(problem):
            scores[f"accuracy/{key}"].append(g.reward)
        record = {"id": problem.id, "level": problem.level, "subject": problem.meta.get("subject"),
                  "prompt": engine.task.prompt(problem), "answer": problem.answer,
                  "completion": g.text, "reward": g.reward,
                  "truncated": g.truncated, "completion_tokens": len(g.completion_ids)}
        if group:
            right = int(sum(r.reward for r in group))
            for k in ks:
                scores[f"pass@{k}"].append(pass_at_k(len(group), right, k))
                scores[f"maj@{k}"].append(majority_correct(group, k, grader_name))
            record.update(samples=[r.text for r in group], sample_rewards=[r.reward for r in group])
        records.append(record)
    metrics = {f"eval/{name}/{key}": sum(v) / len(v) for key, v in sorted(scores.items(), key=_order)}
    return EvalResult(metrics, records)


def _order(item: tuple[str, list[float]]) -> tuple[int, str]:
    key = item[0]
    return (0 if key == "accuracy" else 1 if "@" in key else 2, key)


def write_results(result: EvalResult, out_dir, config: dict) -> None:
    """records.jsonl (one line per question) and summary.json (metrics + config) into ``out_dir``."""
    import json
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "records.jsonl").open("w") as f:
        for record in result.records:
            f.write(json.dumps(record) + "\n")
    (out / "summary.json").write_text(json.dumps({"metrics": result.metrics, "config": config}, indent=2))
