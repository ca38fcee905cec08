"""Fake rollout functions with known success rates, for sampler tests."""

from lrn.rollout import Rollout
from lrn.tasks import Problem


class FakeRollouts:
    """Problem i answers exactly round(p_i * K) of its K rollouts correctly; records every call."""

    def __init__(self, rates: dict[str, float]):
        self.rates, self.calls, self.made = rates, [], []

    def __call__(self, problems, k):
        self.calls.append((list(problems), k))
        groups = []
        for p in problems:
            right = round(self.rates[p.id] * k)
            group = [Rollout(p, [1], [2, 3], "x", float(i < right), False) for i in range(k)]
            self.made.append(group)
            groups.append(group)
        return groups


def pool_with(rates):
    problems = [Problem(f"q{i}", f"{i}+0", str(i), level=1 + i % 2) for i in range(len(rates))]
    return problems, {p.id: r for p, r in zip(problems, rates, strict=True)}
