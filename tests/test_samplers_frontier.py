"""The frontier sampler against fake rollout functions whose success rates are known."""

from dataclasses import replace

import numpy as np
import pytest
from fakes import FakeRollouts, pool_with
from test_samplers_beyond import BernoulliRollouts

from lrn.checkpoint import read_tree, write_tree
from lrn.config import ConfigError, FrontierSamplerConfig
from lrn.samplers import build_sampler
from lrn.samplers.base import is_zero_signal
from lrn.samplers.frontier import FrontierSampler, beta_moment, p_mixed, p_mixed_after
from lrn.samplers.uniform import UniformSampler


def test_beta_moments_and_mixed_probabilities_by_hand():
    # Beta(2, 1): E[p] = 2/3, E[p^2] = 2/3 * 3/4 = 1/2, E[(1-p)^2] = 1/3 * 2/4 = 1/6
    assert beta_moment(np.array(2.0), np.array(1.0), 2) == pytest.approx(0.5)
    assert beta_moment(np.array(1.0), np.array(2.0), 2) == pytest.approx(1 / 6)
    assert p_mixed(np.array(2.0), np.array(1.0), 2) == pytest.approx(1 - 0.5 - 1 / 6)
    # a point-mass-like posterior at p = 0.5 (Beta(1e6, 1e6)): 1 - 2 * 0.5^8
    assert p_mixed(np.array(1e6), np.array(1e6), 8) == pytest.approx(1 - 2 / 256, abs=1e-5)
    # 2 wrong of 2 under Beta(1, 1): posterior Beta(1, 3); the 6 others all wrong with E[(1-p)^6]
    # = 3/4 * 4/5 * 5/6 * 6/7 * 7/8 * 8/9 = 3/9
    assert p_mixed_after(1.0, 1.0, 0, 2, 8) == pytest.approx(1 - 3 / 9)
    assert p_mixed_after(1.0, 1.0, 2, 2, 8) == pytest.approx(1 - 3 / 9)  # all right: symmetric
    assert p_mixed_after(1.0, 1.0, 1, 3, 8) == 1.0  # a mixed screen stays mixed
    assert p_mixed_after(1.0, 1.0, 0, 8, 8) == 0.0  # a whole group all wrong: nothing left to change it


def test_unseen_question_starts_from_its_levels_evidence():
    problems, rates = pool_with([1.0, 0.0, 1.0, 0.0])  # levels 1, 2, 1, 2
    sampler = FrontierSampler(problems, batch_size=1, k=8, seed=0, prior_strength=2.0, decay=0.5)
    sampler.record(1, FakeRollouts(rates)([problems[0]], 8))  # level 1: 8 right of 8
    a, b = sampler.posterior(1, np.array([0, 2, 1]))
    # level 1 mean (1 + 8) / (2 + 8) = 0.9 -> prior Beta(1.8, 0.2); question 0 adds its own 8 right
    assert a == pytest.approx([9.8, 1.8, 1.0]) and b == pytest.approx([0.2, 0.2, 1.0])  # level 2: no evidence
    a, b = sampler.posterior(2, np.array([0, 2]))  # one step later every count weighs 0.5
    mu = (1 + 4) / (2 + 4)
    assert a == pytest.approx([2 * mu + 4, 2 * mu]) and b == pytest.approx([2 * (1 - mu), 2 * (1 - mu)])


def test_trains_on_every_mixed_group_or_a_capped_top():
    problems, rates = pool_with([0.5] * 20 + [0.0] * 20)
    # the whole pool drawn and screened with whole groups: exactly the 20 mixed groups, 5 x the batch
    sel = FrontierSampler(problems, batch_size=4, k=8, seed=0, pool_factor=10, screen_factor=10,
                          screen_rollouts=8).next_batch(1, FakeRollouts(rates))
    assert sorted(p.id for p in sel.problems) == sorted(f"q{i}" for i in range(20))
    assert all(len(g) == 8 and not is_zero_signal(g) for g in sel.rollouts)
    assert sel.stats["sampler/trained_questions"] == 20 and sel.stats["sampler/screening_rollouts"] == 20 * 8
    capped = FrontierSampler(problems, batch_size=4, k=8, seed=0, pool_factor=10, screen_factor=10,
                             screen_rollouts=8, max_train_factor=1.5).next_batch(1, FakeRollouts(rates))
    assert len(capped.problems) == 6 and all(rates[p.id] == 0.5 for p in capped.problems)


def test_few_rollout_screen_continues_only_where_a_mixed_group_is_likely():
    # 10 questions at p = 0.5 (a screen of 2 shows 1 right, 1 wrong) and 10 at p = 0 (0 of 2).
    # Under the first step's prior Beta(1, 1) (no evidence), 0 of 2 leaves P(mixed) = 1 - 3/9 = 0.67:
    # a threshold of 0.7 stops those, 0.6 continues them.
    problems, rates = pool_with([0.5] * 10 + [0.0] * 10)
    for threshold, continued in ((0.7, 10), (0.6, 20)):
        fake = FakeRollouts(rates)
        sel = FrontierSampler(problems, batch_size=4, k=8, seed=0, pool_factor=5, screen_factor=5, screen_rollouts=2,
                              continue_threshold=threshold, prior_strength=2.0).next_batch(1, fake)
        assert [k for _, k in fake.calls] == [2, 6]  # one screen call, one top-up call
        assert len(fake.calls[1][0]) == continued
        assert sel.stats["sampler/rollouts"] == 20 * 2 + continued * 6
        assert sorted(p.id for p in sel.problems) == sorted(f"q{i}" for i in range(10))
        assert all(len(g) == 8 for g in sel.rollouts)  # every trained group has exactly K answers


def test_nothing_mixed_still_trains_on_one_whole_group():
    problems, rates = pool_with([0.0] * 12)
    fake = FakeRollouts(rates)
    sel = FrontierSampler(problems, batch_size=4, k=8, seed=0, screen_rollouts=2, continue_threshold=1.0
                          ).next_batch(1, fake)
    assert len(sel.problems) == 1 and len(sel.rollouts[0]) == 8
    assert sel.stats["train/zero_signal_frac"] == 1.0


def test_screens_the_level_where_mixed_groups_are():
    # level 1 (even ids): p = 0.5; level 2 (odd ids): p = 0.02. After a few steps of evidence the screen
    # goes to level 1, and a mixed group costs far fewer rollouts than uniform's.
    problems, rates = pool_with([0.5 if i % 2 == 0 else 0.02 for i in range(2000)])
    frontier = FrontierSampler(problems, batch_size=8, k=8, seed=0, screen_factor=2, screen_rollouts=8)
    uniform = UniformSampler(problems, batch_size=8, k=8, seed=0)
    cost = {}
    for name, sampler in (("frontier", frontier), ("uniform", uniform)):
        fake = BernoulliRollouts(rates, seed=1)
        mixed = 0
        for step in range(1, 21):
            sel = sampler.next_batch(step, fake)
            mixed += sum(not is_zero_signal(g) for g in sel.rollouts)
        cost[name] = fake.made / mixed
        if name == "frontier":
            assert sel.stats["sampler/level_frac/L1"] == 1.0
    # uniform: 8 / (0.5 * (1 - 2/256) + 0.5 * (1 - 0.98^8)) ~ 14 rollouts per mixed group; frontier ~ 8
    assert cost["uniform"] == pytest.approx(8 / (0.5 * (1 - 2 / 256) + 0.5 * (1 - 0.98**8 - 0.02**8)), rel=0.15)
    assert cost["frontier"] < 9.5


def test_state_round_trips_through_a_checkpoint_tree(tmp_path):
    problems, rates = pool_with(list(np.linspace(0, 1, 60)))
    a = FrontierSampler(problems, batch_size=4, k=8, seed=3)
    fake = BernoulliRollouts(rates, seed=0)
    for step in range(1, 4):
        a.next_batch(step, fake)
    write_tree(tmp_path, "state", {"sampler": a.state_dict()})
    b = FrontierSampler(problems, batch_size=4, k=8, seed=99)
    b.load_state_dict(read_tree(tmp_path, "state")["sampler"])
    idx = np.arange(60)
    assert np.array_equal(a.posterior(4, idx)[0], b.posterior(4, idx)[0]) and a.levels.right.sum() > 0
    ids = [[p.id for p in s.next_batch(4, BernoulliRollouts(rates, seed=5)).problems] for s in (a, b)]
    assert ids[0] == ids[1]
    with pytest.raises(ValueError, match="history covers 60 questions, the pool has 50"):
        FrontierSampler(problems[:50], 4, 8, seed=0).load_state_dict(a.state_dict())
    # the same 60 questions regrouped into 3 levels (the checkpoint's have 2): the message counts levels
    regrouped = [replace(p, level=1 + i % 3) for i, p in enumerate(problems)]
    with pytest.raises(ValueError, match="history covers 2 levels, the pool has 3"):
        FrontierSampler(regrouped, 4, 8, seed=0).load_state_dict(a.state_dict())


def test_config_builds_it_and_refuses_bad_values():
    problems, _ = pool_with([0.5] * 40)
    sampler = build_sampler(FrontierSamplerConfig(screen_factor=3, screen_rollouts=4), problems, 4, 8, 0)
    assert isinstance(sampler, FrontierSampler) and sampler.m == 4 and sampler.screen_factor == 3
    with pytest.raises(ConfigError, match="sampler.screen_factor"):
        FrontierSamplerConfig(pool_factor=2, screen_factor=3).validate("sampler")
    with pytest.raises(ConfigError, match="sampler.max_train_factor"):
        FrontierSamplerConfig(max_train_factor=0).validate("sampler")
