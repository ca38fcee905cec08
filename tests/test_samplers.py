"""Samplers against a fake rollout function whose success rates are known exactly."""

from collections import Counter

import pytest
from fakes import FakeRollouts, pool_with

from lrn.config import ConfigError, LearnabilitySamplerConfig, UniformSamplerConfig
from lrn.samplers import build_sampler
from lrn.samplers.learnability import LearnabilitySampler
from lrn.samplers.uniform import UniformSampler


def test_learnability_picks_the_mixed_questions_and_reuses_their_rollouts():
    # 16 candidates = pool_factor 4 x batch 4: six always right, six always wrong, four mixed
    problems, rates = pool_with([1.0] * 6 + [0.0] * 6 + [0.5, 0.5, 0.25, 0.25])
    fake = FakeRollouts(rates)
    sampler = LearnabilitySampler(problems, batch_size=4, k=8, seed=0, pool_factor=4, bessel=True)
    sel = sampler.next_batch(1, fake)
    assert len(fake.calls) == 1 and len(fake.calls[0][0]) == 16 and fake.calls[0][1] == 8
    assert sorted(p.id for p in sel.problems) == ["q12", "q13", "q14", "q15"]
    # the training rollouts are the very screening rollouts, not new ones
    made = {id(g) for g in fake.made}
    assert all(id(g) in made for g in sel.rollouts)
    assert [g[0].problem.id for g in sel.rollouts] == [p.id for p in sel.problems]
    # stats report plain p(1-p), comparable across samplers: batch (.25 + .25 + .1875 + .1875) / 4
    assert sel.stats["sampler/batch_learnability"] == pytest.approx(0.21875)
    assert sel.stats["sampler/pool_learnability"] == pytest.approx(0.875 / 16)
    assert sel.stats["sampler/screening_rollouts"] == 12 * 8
    assert sel.stats["train/zero_signal_frac"] == 0.0
    assert sel.stats["sampler/pool_size"] == 16


def test_learnability_orders_by_score_and_breaks_ties_at_random():
    problems, rates = pool_with([0.5, 0.5, 0.5, 0.125, 0.0, 1.0, 1.0, 0.0])
    picked = Counter()
    for seed in range(40):
        sampler = LearnabilitySampler(problems, batch_size=2, k=8, seed=seed, pool_factor=4)
        sel = sampler.next_batch(1, FakeRollouts(rates))
        assert all(rates[p.id] == 0.5 for p in sel.problems)  # the three p=.5 beat everything else
        picked.update(p.id for p in sel.problems)
    assert set(picked) == {"q0", "q1", "q2"} and min(picked.values()) >= 10


def test_learnability_reports_zero_signal_when_nothing_is_mixed():
    problems, rates = pool_with([1.0] * 4 + [0.0] * 4)
    sel = LearnabilitySampler(problems, batch_size=2, k=4, seed=0, pool_factor=4).next_batch(1, FakeRollouts(rates))
    assert sel.stats["train/zero_signal_frac"] == 1.0
    assert sel.stats["sampler/batch_learnability"] == 0.0


def test_uniform_draws_distinct_questions_and_spends_no_screening():
    problems, rates = pool_with([1.0] * 10 + [0.5] * 10)
    fake = FakeRollouts(rates)
    sel = UniformSampler(problems, batch_size=8, k=4, seed=3).next_batch(1, fake)
    assert len({p.id for p in sel.problems}) == 8
    assert len(fake.calls) == 1 and sel.rollouts == fake.made
    assert sel.stats["sampler/screening_rollouts"] == 0
    zero = sum(rates[p.id] == 1.0 for p in sel.problems) / 8
    assert sel.stats["train/zero_signal_frac"] == pytest.approx(zero)
    assert sel.stats["sampler/pool_learnability"] == sel.stats["sampler/batch_learnability"]
    fracs = [v for k, v in sel.stats.items() if k.startswith("sampler/level_frac/")]
    assert sum(fracs) == pytest.approx(1.0)


def test_sampler_state_round_trip_reproduces_draws():
    problems, rates = pool_with([0.5] * 50)
    a = UniformSampler(problems, 5, 2, seed=1)
    a.next_batch(1, FakeRollouts(rates))
    state = a.state_dict()
    expected = [p.id for p in a.next_batch(2, FakeRollouts(rates)).problems]
    b = UniformSampler(problems, 5, 2, seed=99)
    b.load_state_dict(state)
    assert [p.id for p in b.next_batch(2, FakeRollouts(rates)).problems] == expected


def test_build_sampler_and_batch_larger_than_pool():
    problems, _ = pool_with([0.5] * 8)
    assert isinstance(build_sampler(UniformSamplerConfig(), problems, 4, 2, 0), UniformSampler)
    s = build_sampler(LearnabilitySamplerConfig(pool_factor=2), problems, 4, 2, 0)
    assert isinstance(s, LearnabilitySampler) and s.pool_size == 8
    with pytest.raises(ConfigError, match="trainer.batch_size=9 exceeds the training pool"):
        UniformSampler(problems, 9, 2, 0)
