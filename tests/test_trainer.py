"""Advantages and the PPO update as the trainer uses them."""

import pytest
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


@pytest.mark.parametrize("micro", [{"micro_batch_size": 2}, {"micro_batch_tokens": 12},
                                   {"micro_batch_size": 2, "micro_batch_tokens": 9}])
def test_micro_batches_accumulate_to_the_same_update_and_scores(micro):
    """Gradient accumulation over micro-batches (by rows, by a token budget, or both), token-weighted and
    each micro-batch as wide as its own rows, must give the unsplit update and scores."""
    tok = build_char_tokenizer()
    rollouts = answer_rollouts(tok, (("7", 1.0), ("31", 0.0), ("123", 1.0)))  # micro-batches of unequal tokens
    rollouts[0].prompt_ids = tok("1000+10=", add_special_tokens=False)["input_ids"]  # one longer prompt
    spec = SamplingSpec(max_new_tokens=4, temperature=0.7)
    results = []
    for options in ({}, micro):
        torch.manual_seed(0)
        policy = Policy(build_tiny_model(TinyModelConfig(layers=1, width=32, heads=2, ffn=64), tok), with_value=True)
        initial = [p.detach().clone() for p in policy.parameters()]
        batch = collate(rollouts, tok.pad_token_id, policy.device)
        cfg = PPOConfig(lr=1e-2, advantage="gae", minibatches=2, epochs=1, ent_coef=0.01, **options)
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


def test_a_micro_batch_is_as_wide_as_its_own_rows_and_fits_the_token_budget(monkeypatch):
    """One long answer and one long prompt in the batch: only the micro-batches holding them are wide. With
    a token budget, rows x (longest prompt + longest answer) stays within it (a row over it goes alone)."""
    tok = build_char_tokenizer()
    rollouts = answer_rollouts(tok, (("7", 1.0), ("31", 0.0)))  # 4 questions x 2 answers: prompts of 4 tokens
    rollouts[5].completion_ids = [5] * 30 + [tok.eos_token_id]  # a truncated-looking long answer: 31 tokens
    rollouts[2].prompt_ids = [7] * 12  # a long prompt
    torch.manual_seed(0)
    policy = Policy(build_tiny_model(TinyModelConfig(layers=1, width=32, heads=2, ffn=64), tok), with_value=False)
    batch = collate(rollouts, tok.pad_token_id, policy.device)
    assert batch.input_ids.shape[1] == 12 + 31  # the whole batch: longest prompt + longest answer
    shapes = []
    forward = Policy.forward

    def recording(self, mb, *args, **kwargs):
        shapes.append((len(mb), mb.prompt_len, mb.completion_mask.shape[1], mb.input_ids.shape[1]))
        return forward(self, mb, *args, **kwargs)

    monkeypatch.setattr(Policy, "forward", recording)
    cfg = PPOConfig(minibatches=1, epochs=1, micro_batch_tokens=20)
    prepare(policy, cfg, batch, SPEC, k=2)
    ppo_update(policy, torch.optim.Adam(policy.parameters()), cfg, batch, SPEC)
    # rows (prompt, answer tokens): 0,4,6 (4, 2); 1,3,7 (4, 3); 5 (4, 31); 2 (12, 2). Sorted and packed to
    # 20 tokens: 3 x 6 = 18; 2 x 7 = 14 (a third would be 21); 1 x 7 (next to the 35-wide row: 70); the
    # 35-wide row alone, over the budget; the long prompt's row, 14 wide
    expected = sorted([(3, 4, 2, 6), (2, 4, 3, 7), (1, 4, 3, 7), (1, 4, 31, 35), (1, 12, 2, 14)])
    assert sorted(shapes[:5]) == expected and sorted(shapes[5:]) == expected  # scoring, then the update
    assert all(width == prompt + answer for _, prompt, answer, width in shapes)
