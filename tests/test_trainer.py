"""Advantages and the PPO update as the trainer uses them."""

import torch

from lrn.batch import collate
from lrn.config import PPOConfig, TinyModelConfig
from lrn.engines import SamplingSpec
from lrn.models import build_char_tokenizer, build_tiny_model
from lrn.policy import Policy
from lrn.rollout import Rollout
from lrn.tasks import Problem
from lrn.update import compute_advantages, ppo_update, prepare

SPEC = SamplingSpec(max_new_tokens=4)


def test_group_advantages_keep_zero_signal_questions_at_zero():
    cfg = PPOConfig(advantage="group", whiten=True)
    batch = collate([Rollout(Problem("p", "q", "a"), [1], [2, 3], "", r, False) for r in (1, 0, 1, 1, 0, 0)],
                    0, torch.device("cpu"))
    adv, returns = compute_advantages(cfg, batch, None, k=2)
    # groups (1,0) (1,1) (0,0): raw advantages (.5,-.5,0,0,0,0), population std sqrt(.5/6) = sqrt(1/12)
    scale = 12**0.5
    assert torch.allclose(adv[:, 0], torch.tensor([0.5, -0.5, 0, 0, 0, 0]) * scale)
    assert torch.equal(adv[:, 0], adv[:, 1]) and returns is None


def answer_rollouts(tok, answers):
    problems = [Problem(str(i), f"{i}+0", str(i)) for i in range(4)]
    rollouts = []
    for p in problems:
        prompt = tok(f"{p.question}=", add_special_tokens=False)["input_ids"]
        for text, reward in answers:
            ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            rollouts.append(Rollout(p, prompt, ids, text, reward, False))
    return rollouts


def test_ppo_update_moves_probability_towards_rewarded_answers():
    """Two answers per question, '7' rewarded and '3' not: PPO must make '7' likelier and '3' rarer."""
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    policy = Policy(build_tiny_model(TinyModelConfig(layers=1, width=32, heads=2, ffn=64), tok), with_value=False)
    batch = collate(answer_rollouts(tok, (("7", 1.0), ("3", 0.0))), tok.pad_token_id, policy.device)
    cfg = PPOConfig(lr=1e-3)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    before = policy.score(batch, SPEC)[0][:, 0]
    for _ in range(5):  # fresh "old" policy each step, as in training
        prepare(policy, cfg, batch, SPEC, k=2)
        ppo_update(policy, optimizer, cfg, batch, SPEC)
    after = policy.score(batch, SPEC)[0][:, 0]
    rewarded, unrewarded = slice(0, None, 2), slice(1, None, 2)
    assert (after[rewarded] > before[rewarded] + 0.1).all()
    assert (after[unrewarded] < before[unrewarded] - 0.1).all()


def test_micro_batches_accumulate_to_the_same_update_and_scores():
    """Gradient accumulation over micro-batches, token-weighted, must give the unsplit update."""
    tok = build_char_tokenizer()
    rollouts = answer_rollouts(tok, (("7", 1.0), ("31", 0.0), ("123", 1.0)))  # micro-batches of unequal tokens
    spec = SamplingSpec(max_new_tokens=4, temperature=0.7)
    results = []
    for micro in (None, 2):
        torch.manual_seed(0)
        policy = Policy(build_tiny_model(TinyModelConfig(layers=1, width=32, heads=2, ffn=64), tok), with_value=True)
        initial = [p.detach().clone() for p in policy.parameters()]
        batch = collate(rollouts, tok.pad_token_id, policy.device)
        cfg = PPOConfig(lr=1e-2, advantage="gae", minibatches=2, epochs=1, ent_coef=0.01, micro_batch_size=micro)
        prepare(policy, cfg, batch, spec, k=3)
        optimizer = torch.optim.SGD(policy.parameters(), lr=cfg.lr)  # Adam would amplify rounding of ~0 grads
        torch.manual_seed(1)  # the same mini-batch order
        stats = ppo_update(policy, optimizer, cfg, batch, spec)
        results.append((batch.old_logp, stats, [p.detach().clone() for p in policy.parameters()]))
    (logp_a, stats_a, params_a), (logp_b, stats_b, params_b) = results
    assert torch.allclose(logp_a, logp_b, atol=1e-6)
    assert stats_a.keys() == stats_b.keys()
    assert all(abs(stats_a[k] - stats_b[k]) < 1e-5 for k in stats_a)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(params_a, params_b, strict=True))
    assert max((a - p0).abs().max().item() for a, p0 in zip(params_a, initial, strict=True)) > 1e-4  # it moved
