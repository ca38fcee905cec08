"""The predictive sampler: its probe, its Thompson choice and its state, on fake features and rollouts."""

import numpy as np
import pytest
import torch
from fakes import FakeRollouts, pool_with
from test_samplers_beyond import BernoulliRollouts

from lrn.checkpoint import read_tree, write_tree
from lrn.config import ConfigError, PredictiveSamplerConfig, compose, to_config
from lrn.features import last_prompt_states, prompt_features
from lrn.samplers import build_sampler
from lrn.samplers.base import is_zero_signal
from lrn.samplers.predictive import PredictiveSampler, beta_binomial_strength, thompson_mixed
from lrn.samplers.probe import ReplayProbe
from lrn.samplers.uniform import UniformSampler
from lrn.tasks import Problem


def logit(p):
    p = np.asarray(p, float)
    return np.log(p / (1 - p))


def without_perf(stats):
    return {k: v for k, v in stats.items() if not k.startswith("perf/")}


class FixedFeatures:
    """Feature rows looked up by question id; records the candidates of every call, in order."""

    def __init__(self, problems, x):
        self.x, self.row, self.calls = np.asarray(x, np.float32), {p.id: i for i, p in enumerate(problems)}, []

    def __call__(self, problems):
        self.calls.append([p.id for p in problems])
        return self.x[[self.row[p.id] for p in problems]]


# -- Thompson scores and the prior strength, by hand ---------------------------------------------------

def test_thompson_scores_by_hand():
    rng = np.random.default_rng(0)
    # posteriors narrow enough to be points: 1 - p^8 - (1 - p)^8 at p = 0.5, 0.9, 0.3, 0.02
    strength = 1e7
    p = np.array([0.5, 0.9, 0.3, 0.02])
    scores = thompson_mixed(strength * p, strength * (1 - p), 8, rng)
    expected = [1 - 2 / 256, 1 - 0.9 ** 8 - 0.1 ** 8, 1 - 0.3 ** 8 - 0.7 ** 8, 1 - 0.98 ** 8 - 0.02 ** 8]
    assert scores == pytest.approx(expected, abs=1e-3)
    # p ~ Beta(1, 1), K = 2: E[1 - p^2 - (1 - p)^2] = 1 - 1/3 - 1/3 = 1/3 on average over draws
    draws = thompson_mixed(np.ones(200_000), np.ones(200_000), 2, rng)
    assert draws.mean() == pytest.approx(1 / 3, abs=0.003)


def test_thompson_choice_on_a_tiny_pool_by_hand():
    # the probe predicts exactly p for 4 questions (feature = logit p, theta 1, bias 0, no fit on an empty
    # buffer); a prior of strength 1e7 is a point: the top 2 of 0.992, 0.570, 0.942, 0.149 are q0 and q2
    problems, rates = pool_with([0.5, 0.9, 0.3, 0.02])
    features = FixedFeatures(problems, logit([[0.5], [0.9], [0.3], [0.02]]))
    sampler = PredictiveSampler(problems, batch_size=2, k=8, seed=0, features=features, pool_factor=2, mix=0.0,
                                prior_strength=1e7)
    sampler._features(problems[:1])  # builds the probe, then set it by hand
    sampler.probe.set_params((np.array([1.0]), 0.0, np.zeros(1), np.ones(1)))
    sel = sampler.next_batch(1, FakeRollouts(rates))
    assert sorted(p.id for p in sel.problems) == ["q0", "q2"]
    assert sorted(features.calls[-1]) == ["q0", "q1", "q2", "q3"]  # the whole pool, in one call


def test_posterior_adds_a_questions_own_decayed_counts_to_the_probe_prior():
    problems, rates = pool_with([1.0, 0.0, 0.5])
    sampler = PredictiveSampler(problems, batch_size=1, k=8, seed=0, features=FixedFeatures(problems, np.zeros((3, 1))),
                                decay=0.5)
    sampler.record(1, FakeRollouts(rates)([problems[0], problems[2]], 8))  # 8 of 8, 4 of 8
    a, b = sampler.posterior(2, np.array([0, 1, 2]), np.array([0.2, 0.2, 0.5]), strength=4.0)
    # prior Beta(0.8, 3.2) and Beta(2, 2); one step old: counts weigh 0.5
    assert a == pytest.approx([0.8 + 4, 0.8, 2 + 2]) and b == pytest.approx([3.2, 3.2, 2 + 2])


def test_beta_binomial_strength_by_hand():
    # p = 0.5, n = 4: binomial variance 1 a group, n (n - 1) p (1 - p) = 3. Right 0 and 2: squared residuals
    # 4 and 0, excess (4 - 1) + (0 - 1) = 2 over 6: rho = 1/3, s = 1 / rho - 1 = 2
    s = beta_binomial_strength(np.array([0.0, 2.0]), np.array([4.0, 4.0]), np.array([0.5, 0.5]), np.ones(2))
    assert s == pytest.approx(2.0)
    # weights scale out; no excess over the binomial variance: an infinitely strong prior
    assert beta_binomial_strength(np.array([0.0, 2.0]), np.array([4.0, 4.0]), np.array([0.5, 0.5]),
                                  np.full(2, 7.0)) == pytest.approx(2.0)
    assert beta_binomial_strength(np.array([1.0, 3.0]), np.array([4.0, 4.0]), np.array([.5, .5]), np.ones(2)) == np.inf
    assert beta_binomial_strength(np.array([1.0]), np.array([1.0]), np.array([0.5]), np.ones(1)) is None  # n = 1


# -- the probe ---------------------------------------------------------------------------------------

def test_probe_bias_alone_is_the_decayed_success_rate():
    # constant features: only the bias moves; its optimum is logit(decayed right / decayed made).
    # At step 2 with decay 0.5: (3 x 0.5 + 1) / (8 x 0.5 + 8) = 2.5 / 12
    probe = ReplayProbe(dim=2, capacity=8, decay=0.5, l2=1.0, fit_steps=50)
    probe.add(np.ones(2), 3, 8, step=1, pred=0.5, pred_probe=0.5)
    probe.add(np.ones(2), 1, 8, step=2, pred=0.5, pred_probe=0.5)
    probe.fit(2)
    assert probe.predict(np.ones((1, 2))) == pytest.approx([2.5 / 12], abs=1e-6)


def test_probe_recovers_a_planted_direction_and_forgets_an_old_one():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1600, 3))
    old, new = np.array([0.0, 2.0, 0.0]), np.array([1.5, 0.0, -1.0])
    probe = ReplayProbe(dim=3, capacity=2000, decay=0.5, l2=1.0, fit_steps=20)
    for i, xi in enumerate(x):  # 800 groups at step 1 from the old direction, 800 at step 20 from the new
        theta, step = (old, 1) if i < 800 else (new, 20)
        probe.add(xi, rng.binomial(8, 1 / (1 + np.exp(-(xi @ theta - 0.5)))), 8, step, 0.5, 0.5)
    probe.fit(20)  # the old groups weigh 0.5^19: gone
    truth = 1 / (1 + np.exp(-(x @ new - 0.5)))
    assert np.abs(probe.predict(x) - truth).max() < 0.06
    assert probe.rows().tolist() == list(range(1600))
    assert len(probe.rows(since=20)) == 800


def test_a_full_buffer_overwrites_its_oldest_rows():
    probe = ReplayProbe(dim=1, capacity=3, decay=1.0, l2=1.0, fit_steps=1)
    for step in range(1, 6):
        probe.add(np.array([step]), 0, 1, step, 0.5, 0.5)
    assert probe.step[probe.rows()].tolist() == [3, 4, 5]


# -- the sampler on a planted difficulty signal ------------------------------------------------------

def planted(n=2000, d=16, seed=0):
    """Questions whose success rate is a logistic function of one direction of their random features."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    z = 3.0 * x[:, 0] - 2.0
    problems = [Problem(f"q{i}", f"{i}", "0") for i in range(n)]
    p = 1 / (1 + np.exp(-z))
    return problems, {q.id: float(pi) for q, pi in zip(problems, p, strict=True)}, x, p


def test_probe_learns_a_planted_difficulty_signal_and_finds_more_mixed_groups_than_uniform():
    problems, rates, x, p = planted()
    k, steps = 8, 40
    uniform_expected = float(np.mean(1 - p ** k - (1 - p) ** k))  # uniform's mixed fraction, exactly
    assert uniform_expected == pytest.approx(0.486, abs=0.001)
    features = FixedFeatures(problems, x)
    sampler = PredictiveSampler(problems, batch_size=32, k=k, seed=0, features=features)
    fake = BernoulliRollouts(rates, seed=1)
    uniform, fake_u = UniformSampler(problems, 32, k, seed=0), BernoulliRollouts(rates, seed=1)
    mixed, mixed_u, stats = [], [], []
    for step in range(1, steps + 1):
        sel = sampler.next_batch(step, fake)
        mixed.append(np.mean([not is_zero_signal(g) for g in sel.rollouts]))
        stats.append(sel.stats)
        mixed_u.append(np.mean([not is_zero_signal(g) for g in uniform.next_batch(step, fake_u).rollouts]))
    # its cost: uniform's rollouts, and one features call of pool_factor x batch candidates per step
    assert fake.made == steps * 32 * k and all(k_ == k for _, k_ in fake.calls)
    assert [len(c) for c in features.calls] == [128] * steps
    # the probe found the planted direction: its logits against the true ones over the whole pool
    pred = sampler.probe.predict(x)
    assert np.corrcoef(logit(pred), 3.0 * x[:, 0] - 2.0)[0, 1] > 0.99
    # uniform's realised mixed fraction is the expectation; the predictive sampler's is far above it
    assert np.mean(mixed_u) == pytest.approx(uniform_expected, abs=0.05)
    assert np.mean(mixed[steps // 2:]) > uniform_expected + 0.3
    assert [s["sampler/mixed_frac"] for s in stats] == pytest.approx(mixed)
    last = stats[-1]
    assert last["sampler/calibration/ece"] < 0.1
    assert last["sampler/trained_questions"] == 32 and last["sampler/screening_rollouts"] == 0
    assert last["sampler/mix_questions"] == 3 and 0 <= last["sampler/mixed_frac_uniform"] <= 1
    # calibration by decile of the prediction: the deciles' predictions rise, and so do the observed rates
    preds = [last[f"sampler/calibration/d{i}_pred"] for i in range(10)]
    obs = [last[f"sampler/calibration/d{i}_obs"] for i in range(10)]
    assert preds == sorted(preds) and np.corrcoef(preds, obs)[0, 1] > 0.8


def test_the_uniform_share_is_the_head_of_the_candidate_draw():
    problems, rates, x, _ = planted(n=400)
    features = FixedFeatures(problems, x)
    sampler = PredictiveSampler(problems, batch_size=8, k=4, seed=3, features=features, mix=0.25)
    for step in range(1, 4):
        sel = sampler.next_batch(step, BernoulliRollouts(rates))
        assert [p.id for p in sel.problems[:2]] == features.calls[-1][:2]
        assert len({p.id for p in sel.problems}) == 8 and set(p.id for p in sel.problems) <= set(features.calls[-1])


def test_brier_score_of_the_generated_groups_by_hand():
    # a point prior at p = 0.25 for every question, observed 2 of 4 right and 0 of 4 right:
    # mean over answers of (0.25 - y)^2 = (2 x 0.5625 + 2 x 0.0625) / 4 = 0.3125 and 0.0625, mean 0.1875
    problems, rates = pool_with([0.5, 0.0])
    sampler = PredictiveSampler(problems, batch_size=2, k=4, seed=0, mix=0.0, prior_strength=1e9,
                                features=FixedFeatures(problems, logit([[0.25], [0.25]])))
    sampler._features(problems[:1])
    sampler.probe.set_params((np.array([1.0]), 0.0, np.zeros(1), np.ones(1)))
    stats = sampler.next_batch(1, FakeRollouts(rates)).stats
    assert stats["sampler/brier"] == pytest.approx(0.1875) and stats["sampler/brier_probe"] == pytest.approx(0.1875)
    assert stats["sampler/mixed_frac"] == 0.5 and stats["sampler/pred_mixed_frac"] == pytest.approx(
        1 - 0.25 ** 4 - 0.75 ** 4, abs=1e-6)


# -- checkpoint state, config, building -------------------------------------------------------------

def test_state_round_trips_through_a_checkpoint_tree_and_continues_identically(tmp_path):
    problems, rates, x, _ = planted(n=600)

    def make():
        return PredictiveSampler(problems, batch_size=8, k=4, seed=0, features=FixedFeatures(problems, x))

    sampler = make()
    for step in range(1, 6):
        sampler.next_batch(step, BernoulliRollouts(rates, seed=step))
    write_tree(tmp_path, "state", {"sampler": sampler.state_dict()})
    restored = make()
    restored.load_state_dict(read_tree(tmp_path, "state")["sampler"])
    assert restored.probe.size == 5 * 8 and np.array_equal(restored.probe.x, sampler.probe.x)
    for step in range(6, 9):
        a = sampler.next_batch(step, BernoulliRollouts(rates, seed=step))
        b = restored.next_batch(step, BernoulliRollouts(rates, seed=step))
        assert [p.id for p in a.problems] == [p.id for p in b.problems]
        assert without_perf(a.stats) == without_perf(b.stats)
    small = PredictiveSampler(problems, batch_size=8, k=4, seed=0, features=FixedFeatures(problems, x), replay_size=16)
    with pytest.raises(ValueError, match="replay buffer holds 4096 rows of 16 features, this run's 16 of 16"):
        small.load_state_dict(sampler.state_dict())


@pytest.mark.parametrize("override, key", [
    ("sampler.pool_factor=0.5", "sampler.pool_factor"), ("sampler.mix=1.5", "sampler.mix"),
    ("sampler.prior_strength=0", "sampler.prior_strength"), ("sampler.prior_strength=often", "sampler.prior_strength"),
    ("sampler.decay=0", "sampler.decay"), ("sampler.replay_decay=1.5", "sampler.replay_decay"),
    ("sampler.replay_size=0", "sampler.replay_size"), ("sampler.l2=-1", "sampler.l2"),
    ("sampler.features_dim=-1", "sampler.features_dim"), ("sampler.fit_steps=0", "sampler.fit_steps"),
])
def test_config_refusals_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key}=") as e:
        to_config(compose(["sampler=predictive", override]))
    assert "\n" not in str(e.value)


def test_build_sampler_passes_the_config_and_needs_features():
    problems, _ = pool_with([0.5] * 40)
    cfg = to_config(compose(["sampler=predictive", "sampler.prior_strength=3", "sampler.mix=0.25"])).sampler
    features = FixedFeatures(problems, np.zeros((40, 2)))
    sampler = build_sampler(cfg, problems, 8, 4, 0, features=features)
    assert isinstance(sampler, PredictiveSampler) and sampler.strength(1) == 3.0 and sampler.share == 0.25
    assert sampler.n_candidates == 32
    with pytest.raises(ValueError, match="needs a features function"):
        build_sampler(PredictiveSamplerConfig(), problems, 8, 4, 0)
    assert isinstance(build_sampler(to_config(compose(["sampler=uniform"])).sampler, problems, 8, 4, 0,
                                    features=features), UniformSampler)  # the others ignore it


def test_wide_features_are_projected_by_a_matrix_fixed_by_the_seed():
    problems, rates = pool_with([0.5] * 40)
    x = np.random.default_rng(0).standard_normal((40, 300))
    a, b, c = (PredictiveSampler(problems, 8, 4, seed, FixedFeatures(problems, x), features_dim=32)
               for seed in (0, 0, 1))
    fa, fb, fc = (s._features(problems) for s in (a, b, c))
    assert fa.shape == (40, 32) and a.probe.dim == 32
    assert np.array_equal(fa, fb) and not np.array_equal(fa, fc)
    assert PredictiveSampler(problems, 8, 4, 0, FixedFeatures(problems, x), features_dim=0)._features(
        problems).shape == (40, 300)


# -- the trainer's features hook ----------------------------------------------------------------------

def test_prompt_features_are_the_last_prompt_tokens_hidden_state_whatever_the_padding():
    from lrn.config import ArithmeticConfig, TinyModelConfig
    from lrn.models import build_char_tokenizer, build_tiny_model
    from lrn.policy import Policy
    from lrn.tasks import build_task

    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    policy = Policy(build_tiny_model(TinyModelConfig(layers=2, width=32, heads=2, ffn=64), tokenizer), with_value=False)
    task = build_task(ArithmeticConfig(train_size=50, test_per_level=2, val_per_level=2))
    problems = [task.train[0], task.train[1], Problem("long", "123456+654321", "0"), Problem("short", "1+2", "3")]
    together = prompt_features(policy, tokenizer, task, batch_size=3)(problems)  # two forwards: 3 + 1 prompts
    assert together.shape == (4, 32) and together.dtype == np.float32
    for i, problem in enumerate(problems):  # each alone, unpadded: the model's own last hidden state
        ids = torch.tensor(tokenizer([task.prompt(problem)])["input_ids"])
        with torch.no_grad():
            alone = policy.lm(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1].numpy()
        assert together[i] == pytest.approx(alone, abs=1e-5)
    assert last_prompt_states(policy, [], 0, 4).shape == (0, 32)
