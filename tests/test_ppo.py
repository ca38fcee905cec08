"""PPO maths against numbers computed by hand."""

import math

import pytest
import torch

from lrn import ppo


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_clipped_policy_loss_positive_advantage_is_capped_at_one_plus_eps():
    # log-prob up by 1: ratio e = 2.718..., clipped to 1.2, so the loss is -1.2 (torchtune's example)
    old, new, adv, mask = t([[0.0]]), t([[1.0]]), t([[1.0]]), t([[1.0]])
    loss, stats = ppo.policy_loss(new, old, adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(-1.2)
    assert stats["clipfrac"].item() == 1.0
    assert stats["approx_kl"].item() == pytest.approx(math.e - 2)  # (r - 1) - log r


def test_clipped_policy_loss_negative_advantage_keeps_the_pessimistic_term():
    # A = -1, ratio e: -A*r = e beats -A*1.2 = 1.2, so the unclipped term wins and nothing is clipped
    loss, stats = ppo.policy_loss(t([[1.0]]), t([[0.0]]), t([[-1.0]]), t([[1.0]]), clip=0.2)
    assert loss.item() == pytest.approx(math.e)
    assert stats["clipfrac"].item() == 0.0


def test_policy_loss_averages_over_unmasked_tokens_only():
    # token 1: ratio 0.5, A = 1 -> max(-0.5, -0.8) = -0.5; token 2: ratio 1, A = 2 -> -2; token 3 masked
    new = t([[math.log(0.5), 0.0, 5.0]])
    loss, _ = ppo.policy_loss(new, t([[0.0, 0.0, 0.0]]), t([[1.0, 2.0, 100.0]]), t([[1.0, 1.0, 0.0]]), 0.2)
    assert loss.item() == pytest.approx((-0.5 - 2.0) / 2)


def test_ratio_one_gives_plain_policy_gradient_loss():
    loss, stats = ppo.policy_loss(t([[0.3, -0.2]]), t([[0.3, -0.2]]), t([[0.5, -1.5]]), t([[1.0, 1.0]]), 0.2)
    assert loss.item() == pytest.approx((-0.5 + 1.5) / 2)
    assert stats["approx_kl"].item() == pytest.approx(0.0)


def test_gae_by_hand_with_padding():
    # seq 1: rewards [0,0,1], V [.5,.6,.7], gamma 1, lam .5
    #   A2 = 1 - .7 = .3; A1 = (.7 - .6) + .5*.3 = .25; A0 = (.6 - .5) + .5*.25 = .225
    # seq 2: two tokens then padding, reward 0, V [.2,.4,(9 ignored)]
    #   A1 = 0 - .4 = -.4; A0 = (.4 - .2) + .5*(-.4) = 0
    rewards = t([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    values = t([[0.5, 0.6, 0.7], [0.2, 0.4, 9.0]])
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert adv.flatten().tolist() == pytest.approx([0.225, 0.25, 0.3, 0.0, -0.4, 0.0])
    assert ret.flatten().tolist() == pytest.approx([0.725, 0.85, 1.0, 0.2, 0.0, 0.0])


def test_gae_discount():
    # one token of reward 1 after two of 0, V = 0: A_t = gamma^(T-1-t) with lam = 1
    adv, _ = ppo.gae(t([[0.0, 0.0, 1.0]]), t([[0.0, 0.0, 0.0]]), t([[1.0, 1.0, 1.0]]), gamma=0.5, lam=1.0)
    assert adv.flatten().tolist() == pytest.approx([0.25, 0.5, 1.0])


def test_terminal_rewards_land_on_the_last_real_token():
    out = ppo.terminal_rewards(t([1.0, 2.0]), t([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert out.tolist() == [[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]


def test_group_advantages_subtract_the_question_mean():
    adv = ppo.group_advantages(t([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1]), k=4)
    assert adv.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -0.25, -0.25, -0.25, 0.75])


def test_masked_whiten():
    out = ppo.masked_whiten(t([[1.0, 2.0, 3.0, 50.0]]), t([[1.0, 1.0, 1.0, 0.0]]))
    s = math.sqrt(2 / 3)
    assert out.flatten().tolist() == pytest.approx([-1 / s, 0.0, 1 / s, 0.0], abs=1e-5)


def test_value_loss_clipped_and_unclipped():
    # V=1, old=.5, R=2, clip .2: unclipped (1-2)^2 = 1, clipped V .7 -> 1.69; loss = .5 * 1.69
    assert ppo.value_loss(t([[1.0]]), t([[0.5]]), t([[2.0]]), t([[1.0]]), clip=0.2).item() == pytest.approx(0.845)
    assert ppo.value_loss(t([[1.0]]), t([[0.5]]), t([[2.0]]), t([[1.0]]), clip=0.0).item() == pytest.approx(0.5)


def test_kl_k3_by_hand():
    # pi = .5, ref = .25: d = log .5; exp(d) - d - 1 = .5 + ln 2 - 1
    kl = ppo.kl_to_reference(t([[math.log(0.5)]]), t([[math.log(0.25)]]), t([[1.0]]))
    assert kl.item() == pytest.approx(math.log(2) - 0.5)
    assert ppo.kl_to_reference(t([[-1.0]]), t([[-1.0]]), t([[1.0]])).item() == 0.0


def test_token_logprobs_and_entropy():
    logits = torch.log(t([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]]))
    assert ppo.token_logprobs(logits, torch.tensor([[1, 2]])).flatten().tolist() == pytest.approx(
        [math.log(0.25), math.log(1 / 3)])
    assert ppo.entropy(logits).flatten().tolist() == pytest.approx([1.5 * math.log(2), math.log(3)])


def test_truncated_importance_weights_by_hand():
    # trainer old log-prob 0, engine -1: weight e = 2.718 capped at 2; trainer -1, engine 0: e^-1 = 0.368
    w = ppo.tis_weights(t([[0.0, -1.0, -2.0]]), t([[-1.0, 0.0, -2.0]]), cap=2.0)
    assert torch.allclose(w, t([[2.0, math.exp(-1.0), 1.0]]))
    # ratio 1 (new = old), A = 1: each token's loss -1 times its weight; mean over the 3 tokens
    old = t([[0.0, -1.0, -2.0]])
    new = old.clone().requires_grad_(True)
    loss, _ = ppo.policy_loss(new, old, t([[1.0, 1.0, 1.0]]), t([[1.0, 1.0, 1.0]]), 0.2, w)
    assert loss.item() == pytest.approx(-(2.0 + math.exp(-1.0) + 1.0) / 3)
    loss.backward()  # the weights are constants: d loss / d logp = -A * r * w / 3
    assert torch.allclose(new.grad, -w / 3)


def test_truncated_importance_weights_are_detached():
    engine = t([[-0.5]])
    old = t([[0.0]]).requires_grad_(True)
    assert not ppo.tis_weights(old, engine, 10.0).requires_grad
