"""The beyond-the-paper samplers (dynamic_filter, learnability_adaptive, learnability_history, mix)
against fake rollout functions whose success rates are known."""

import numpy as np
import pytest
from fakes import FakeRollouts, pool_with

from lrn.checkpoint import read_tree, write_tree
from lrn.config import AdaptiveSamplerConfig, DynamicFilterSamplerConfig, HistorySamplerConfig
from lrn.rollout import Rollout
from lrn.samplers import build_sampler
from lrn.samplers.adaptive import AdaptiveLearnabilitySampler
from lrn.samplers.base import beta_learnability, is_zero_signal
from lrn.samplers.dynamic_filter import DynamicFilterSampler
from lrn.samplers.history import HistorySampler
from lrn.samplers.learnability import LearnabilitySampler
from lrn.samplers.uniform import UniformSampler
from lrn.tasks import Problem


class BernoulliRollouts:
    """Each rollout of problem i is right with probability p_i (seeded); counts every rollout made."""

    def __init__(self, rates: dict[str, float], seed: int = 0):
        self.rates, self.rng, self.made, self.calls = rates, np.random.default_rng(seed), 0, []

    def __call__(self, problems, k):
        self.calls.append(([p.id for p in problems], k))
        self.made += len(problems) * k
        return [[Rollout(p, [1], [2], "x", float(self.rng.random() < self.rates[p.id]), False) for _ in range(k)]
                for p in problems]


# -- dynamic_filter -------------------------------------------------------------------------------

def test_dynamic_filter_keeps_only_mixed_groups_and_draws_until_full():
    problems, rates = pool_with([1.0] * 20 + [0.0] * 20 + [0.5] * 10)
    fake = FakeRollouts(rates)
    sel = DynamicFilterSampler(problems, batch_size=4, k=4, seed=0, max_draws=50).next_batch(1, fake)
    assert len(sel.problems) == 4 and not any(is_zero_signal(g) for g in sel.rollouts)
    assert all(rates[p.id] == 0.5 for p in sel.problems)
    drawn = [p.id for call, _ in fake.calls for p in call]
    assert len(drawn) == len(set(drawn))  # no question drawn twice in one step
    assert all(len(call) == 4 and k == 4 for call, k in fake.calls)
    assert sel.stats["sampler/draws"] == len(fake.calls)
    assert sel.stats["sampler/screening_rollouts"] == (len(drawn) - 4) * 4
    assert sel.stats["train/zero_signal_frac"] == 0.0 and sel.stats["sampler/filled_zero_signal"] == 0


def test_dynamic_filter_fills_with_flat_groups_only_when_out_of_draws():
    # one mixed question among 30 flat ones, 3 draws of 2: the batch of 2 cannot fill from mixed groups
    problems, rates = pool_with([0.0] * 30 + [0.5])
    for seed in range(5):
        fake = FakeRollouts(rates)
        sel = DynamicFilterSampler(problems, batch_size=2, k=4, seed=seed, max_draws=3).next_batch(1, fake)
        assert sel.stats["sampler/draws"] == 3 and len(fake.calls) == 3
        mixed = sum(not is_zero_signal(g) for g in sel.rollouts)
        assert sel.stats["sampler/filled_zero_signal"] == 2 - mixed
        assert sel.stats["train/zero_signal_frac"] == (2 - mixed) / 2
        if mixed:  # a mixed group, when drawn, comes first
            assert sel.problems[0].id == "q30"


@pytest.mark.parametrize("seed", range(10))
def test_dynamic_filter_never_returns_a_flat_group_unless_it_ran_out(seed):
    rng = np.random.default_rng(seed)
    problems, rates = pool_with(list(rng.choice([0.0, 0.2, 0.5, 1.0], size=200, p=[0.45, 0.1, 0.1, 0.35])))
    fake = BernoulliRollouts(rates, seed)
    sampler = DynamicFilterSampler(problems, batch_size=8, k=4, seed=seed, max_draws=3)
    for step in range(1, 6):
        sel = sampler.next_batch(step, fake)
        flat = sum(is_zero_signal(g) for g in sel.rollouts)
        assert flat == 0 or sel.stats["sampler/draws"] == 3
        assert flat == sel.stats["sampler/filled_zero_signal"] and len(sel.problems) == 8


# -- learnability_adaptive ------------------------------------------------------------------------

def test_adaptive_spends_its_budget_on_mixed_candidates():
    # 32 candidates = the whole pool (pool_factor 8 x batch 4): 8 mixed (p=.5), 24 flat; K=8, 2 first.
    problems, rates = pool_with([0.5] * 8 + [1.0] * 12 + [0.0] * 12)
    fake = FakeRollouts(rates)
    sampler = AdaptiveLearnabilitySampler(problems, 4, 8, seed=0, pool_factor=8, initial_rollouts=2,
                                          chunk_rollouts=2, budget_factor=3.0)  # 96 screening rollouts
    sel = sampler.next_batch(1, fake)
    # first screen: 32 x 2 = 64; every mixed one shows 1 of 2 (score .2), flat ones .15; rounds of 4 x 2
    # on the top four: 2 of 4 (.214), 3 of 6 (.222), 4 of 8 (.227), then all four have K and it stops
    assert [(len(c), k) for c, k in fake.calls] == [(32, 2), (4, 2), (4, 2), (4, 2)]
    assert all(rates[p.id] == 0.5 for call, k in fake.calls[1:] for p in call)
    assert {p.id for p in fake.calls[1][0]} == {p.id for p in sel.problems}
    assert all(len(g) == 8 and sum(r.reward for r in g) == 4 for g in sel.rollouts)
    assert sel.stats["sampler/adaptive_rounds"] == 3 and sel.stats["sampler/screen_spent"] == 88
    assert sel.stats["sampler/screening_rollouts"] == 28 * 2  # the 28 candidates not kept, 2 answers each
    assert sel.stats["train/zero_signal_frac"] == 0.0


def test_adaptive_tops_the_kept_candidates_up_to_k_when_the_budget_is_spent():
    problems, rates = pool_with([0.5] * 8 + [1.0] * 12 + [0.0] * 12)
    fake = FakeRollouts(rates)
    sel = AdaptiveLearnabilitySampler(problems, 4, 8, seed=0, pool_factor=8, budget_factor=2.0).next_batch(1, fake)
    assert [(len(c), k) for c, k in fake.calls] == [(32, 2), (4, 6)]  # budget 64 = the first screen
    assert all(rates[p.id] == 0.5 for p in sel.problems) and all(len(g) == 8 for g in sel.rollouts)
    # the kept groups are the screening answers plus the top-up, all trained on
    first = {g[0].problem.id: g for g in fake.made[:32]}
    assert all(g[:2] == first[g[0].problem.id] for g in sel.rollouts)


def test_adaptive_concentrates_rollouts_on_mixed_questions_within_its_bound():
    rng = np.random.default_rng(1)
    problems, rates = pool_with(list(rng.choice([0.0, 0.4, 1.0], size=400, p=[0.25, 0.5, 0.25])))
    mixed = {pid for pid, p in rates.items() if 0 < p < 1}  # half of the pool
    fake = BernoulliRollouts(rates, 1)
    sampler = AdaptiveLearnabilitySampler(problems, 8, 8, seed=1, pool_factor=4, budget_factor=1.5)
    after_screen = on_mixed = 0
    for step in range(1, 11):
        calls_before, made_before = len(fake.calls), fake.made
        sel = sampler.next_batch(step, fake)
        assert fake.made - made_before <= (1.5 + 1) * 8 * 8  # the documented bound
        assert all(len(g) == 8 for g in sel.rollouts)
        first, *rest = fake.calls[calls_before:]
        assert len(first[0]) == 32 and first[1] == 2
        after_screen += sum(len(ids) * k for ids, k in rest)
        on_mixed += sum(k for ids, k in rest for pid in ids if pid in mixed)
    assert on_mixed / after_screen > 0.85  # a uniform spend would put half there


# -- learnability_history -------------------------------------------------------------------------

def test_history_posterior_converges_to_the_true_success_rate():
    problems, rates = pool_with([0.2, 0.5, 0.9])
    sampler = HistorySampler(problems, 1, 8, seed=0, decay=1.0)
    fake = BernoulliRollouts(rates, 0)
    for step in range(1, 201):
        sampler.record(step, fake(problems, 8))
    a, b = sampler.posterior(200)
    assert np.allclose(a / (a + b), [0.2, 0.5, 0.9], atol=0.02)
    assert (a + b).min() == 2 + 1600  # the prior plus every rollout


def test_history_decays_old_evidence_by_age():
    problems, rates = pool_with([1.0, 0.0])
    sampler = HistorySampler(problems, 1, 8, seed=0, decay=0.5, prior=(1.0, 1.0))
    sampler.record(1, FakeRollouts(rates)(problems[:1], 8))  # 8 right of 8 at step 1
    a, b = sampler.posterior(3)  # two steps later each answer weighs 0.25
    assert (a[0], b[0]) == (1.0 + 8 * 0.25, 1.0)
    sampler.record(3, FakeRollouts({problems[0].id: 0.0})(problems[:1], 4))  # then 0 of 4
    a, b = sampler.posterior(4)
    assert (a[0], b[0]) == (1.0 + 2.0 * 0.5, 1.0 + 4 * 0.5)
    assert (a[1], b[1]) == (1.0, 1.0)  # never seen: the prior


def test_history_expected_score_prefers_mixed_then_unseen_then_flat():
    problems, rates = pool_with([0.5, 1.0, 0.0, 0.5, 0.5])  # q3, q4 unseen
    sampler = HistorySampler(problems, 2, 8, seed=0, score="expected")
    sampler.record(1, FakeRollouts(rates)(problems[:3], 8))
    fake = FakeRollouts(rates)
    sel = sampler.next_batch(2, fake)
    # q0 (4 of 8: 25/110) first, then an unseen one (1/6) over q1, q2 (1 of 9 twice: 9/110)
    assert sel.problems[0].id == "q0" and sel.problems[1].id in {"q3", "q4"}
    assert beta_learnability(5, 5) > beta_learnability(1, 1) > beta_learnability(9, 1)
    assert fake.calls == [(sel.problems, 8)]  # no screening: exactly K rollouts per trained question
    assert sel.stats["sampler/screening_rollouts"] == 0 and sel.stats["sampler/history_seen"] == 3


@pytest.mark.parametrize(("score", "pool_factor", "at_most"),
                         [("expected", 4, 0.35), ("expected", 19, 0.1), ("thompson", 19, 0.5)])
def test_history_trains_on_fewer_zero_signal_questions_than_uniform(score, pool_factor, at_most):
    rng = np.random.default_rng(0)
    problems, rates = pool_with(list(rng.choice([0.0, 0.5, 1.0], size=300, p=[0.4, 0.2, 0.4])))
    flat, distinct = {}, {}
    for name, sampler in (("uniform", UniformSampler(problems, 16, 8, seed=0)),
                          ("history", HistorySampler(problems, 16, 8, seed=0, score=score, decay=0.95,
                                                     pool_factor=pool_factor))):
        fake = BernoulliRollouts(rates, 0)
        selections = [sampler.next_batch(step, fake) for step in range(1, 41)]
        assert fake.made == 40 * 16 * 8  # the same cost per step
        flat[name] = float(np.mean([s.stats["train/zero_signal_frac"] for s in selections[20:]]))
        distinct[name] = len({p.id for s in selections for p in s.problems})
    # uniform: 0.8 of questions are flat. Ranking the whole pool (19 x 16 >= 300) nearly removes them but
    # trains on few distinct questions; a uniform candidate draw of 4x keeps most of the variety.
    assert flat["uniform"] > 0.7 and flat["history"] < at_most
    if pool_factor == 4:
        assert distinct["history"] > 0.6 * distinct["uniform"]


def test_history_screen_spends_screen_rollouts_on_extra_candidates_and_tops_up():
    problems, rates = pool_with([0.5] * 4 + [0.0] * 8)
    fake = FakeRollouts(rates)
    sampler = HistorySampler(problems, 4, 8, seed=0, screen_factor=0.5, screen_rollouts=2, score="expected")
    sel = sampler.next_batch(1, fake)
    assert [(len(c), k) for c, k in fake.calls] == [(6, 2), (4, 6)]
    assert all(len(g) == 8 for g in sel.rollouts)
    assert sel.stats["sampler/screening_rollouts"] == 2 * 2
    assert sampler.posterior(1)[0].sum() + sampler.posterior(1)[1].sum() == 2 * 12 + 6 * 2 + 4 * 6


def test_history_state_round_trips_through_a_checkpoint_tree(tmp_path):
    rng = np.random.default_rng(0)
    problems, rates = pool_with(list(rng.choice([0.0, 0.5, 1.0], size=100)))
    a = HistorySampler(problems, 8, 4, seed=3)
    fake = BernoulliRollouts(rates, 0)
    for step in range(1, 4):
        a.next_batch(step, fake)
    write_tree(tmp_path, "state", {"sampler": a.state_dict()})
    b = HistorySampler(problems, 8, 4, seed=99)
    b.load_state_dict(read_tree(tmp_path, "state")["sampler"])
    assert np.array_equal(a.posterior(4)[0], b.posterior(4)[0]) and np.array_equal(a.counts.last, b.counts.last)
    fa, fb = BernoulliRollouts(rates, 7), BernoulliRollouts(rates, 7)
    assert [p.id for p in a.next_batch(4, fa).problems] == [p.id for p in b.next_batch(4, fb).problems]
    with pytest.raises(ValueError, match="history covers 100 questions, the pool has 50"):
        HistorySampler(problems[:50], 8, 4, seed=0).load_state_dict(a.state_dict())


# -- mix --------------------------------------------------------------------------------------------

def test_mix_draws_a_share_of_the_batch_uniformly_and_fresh():
    problems, rates = pool_with([0.5] * 4 + [1.0] * 60)
    fake = FakeRollouts(rates)
    sampler = LearnabilitySampler(problems, 4, 4, seed=0, pool_factor=16, mix=0.5)  # screens the whole pool
    sel = sampler.next_batch(1, fake)
    assert [(len(c), k) for c, k in fake.calls] == [(64, 4), (2, 4)]
    assert [rates[p.id] for p in sel.problems[:2]] == [0.5, 0.5]  # the learnability half
    assert len({p.id for p in sel.problems}) == 4 and sel.stats["sampler/mix_questions"] == 2
    assert sel.rollouts[2:] == fake.made[64:]  # the uniform half has its own rollouts
    all_uniform = DynamicFilterSampler(problems, 4, 4, seed=0, mix=1.0).next_batch(1, FakeRollouts(rates))
    assert all_uniform.stats["sampler/mix_questions"] == 4 and "sampler/draws" not in all_uniform.stats


def test_mix_is_seen_by_the_history_posterior():
    problems, rates = pool_with([1.0] * 20)
    sampler = HistorySampler(problems, 4, 2, seed=0, mix=0.5)
    sampler.next_batch(1, FakeRollouts(rates))
    assert (sampler.counts.right > 0).sum() == 4  # 2 chosen by the posterior + 2 drawn uniformly


def test_build_sampler_builds_each_new_sampler_from_its_config():
    problems, _ = pool_with([0.5] * 40)
    assert isinstance(build_sampler(DynamicFilterSamplerConfig(max_draws=3), problems, 4, 4, 0), DynamicFilterSampler)
    adaptive = build_sampler(AdaptiveSamplerConfig(budget_factor=1.0), problems, 4, 4, 0)
    assert isinstance(adaptive, AdaptiveLearnabilitySampler) and adaptive.budget == 16
    history = build_sampler(HistorySamplerConfig(prior=[2.0, 3.0], decay=0.8), problems, 4, 4, 0)
    assert isinstance(history, HistorySampler) and history.prior == (2.0, 3.0) and history.decay == 0.8
    assert Problem("x", "1+1", "2") not in problems
