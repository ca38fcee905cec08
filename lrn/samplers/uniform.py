"""The baseline: batch_size questions uniformly at random, K rollouts each."""

from __future__ import annotations

from lrn.rollout import RolloutFn
from lrn.samplers.base import Sampler, Selection, selection_stats


class UniformSampler(Sampler):
    def next_batch(self, step: int, rollout_fn: RolloutFn) -> Selection:
        problems = self.draw(self.batch_size)
        groups = rollout_fn(problems, self.k)
        stats = selection_stats(groups, groups, 0, [p.level for p in problems])
        return Selection(problems, groups, stats)
