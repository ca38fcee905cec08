"""The rollout engine and collation: padding layout, and log-probs that match the sampler's."""

import pytest
import torch

from lrn.config import ArithmeticConfig, TinyModelConfig
from lrn.models import PolicyWithValue, build_char_tokenizer, build_tiny_model
from lrn.rollout import Rollout, RolloutEngine, collate
from lrn.tasks import Problem, build_task
from lrn.trainer import completion_view


def make_engine(seed=0):
    torch.manual_seed(seed)
    tok = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(layers=1, width=32, heads=2, ffn=64), tok).eval()
    task = build_task(ArithmeticConfig(train_size=20, test_per_level=2))
    return RolloutEngine(model, tok, task, temperature=1.0, batch_size=7), tok, model, task


def test_collate_left_pads_prompts_and_right_pads_completions():
    p = Problem("a", "1+1", "2")
    rs = [Rollout(p, [5, 6], [7, 1], "", 1.0, False), Rollout(p, [5, 6, 8], [9], "", 0.0, False)]
    b = collate(rs, pad_id=0, device=torch.device("cpu"))
    assert b["input_ids"].tolist() == [[0, 5, 6, 7, 1], [5, 6, 8, 9, 0]]
    assert b["attention_mask"].tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert b["completion_mask"].tolist() == [[1, 1], [1, 0]]
    assert b["rewards"].tolist() == [1.0, 0.0] and int(b["prompt_len"]) == 3


def test_rollouts_are_counted_graded_and_reproducible():
    engine, tok, _, task = make_engine()
    problems = task.train[:5]
    torch.manual_seed(1)
    groups = engine.rollout(problems, 3)
    assert [len(g) for g in groups] == [3] * 5
    assert all(r.problem is p for p, g in zip(problems, groups, strict=True) for r in g)
    for r in (r for g in groups for r in g):
        assert r.truncated == (tok.eos_token_id not in r.completion_ids)
        assert r.reward == (0.0 if r.truncated else task.grade(r.text, r.problem.answer))
    assert engine.counters.rollouts == 15
    assert engine.counters.tokens == sum(len(r.completion_ids) for g in groups for r in g)
    engine.rollout(problems, 1, greedy=True, count=False)
    assert engine.counters.rollouts == 15  # evaluation is not training compute
    torch.manual_seed(1)
    again = engine.rollout(problems, 3)
    assert [r.completion_ids for g in again for r in g] == [r.completion_ids for g in groups for r in g]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_training_forward_reproduces_the_sampling_distribution(temperature):
    """Log-probs from the trainer's left-padded forward equal those generate() sampled with."""
    engine, tok, model, task = make_engine()
    prompts = [task.prompt(p) for p in task.test[:6]]  # different lengths -> real left padding
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    out = model.generate(**enc, do_sample=True, top_k=0, temperature=temperature, max_new_tokens=5, pad_token_id=0,
                         eos_token_id=tok.eos_token_id, output_scores=True, return_dict_in_generate=True)
    width = enc["input_ids"].shape[1]
    sampled = torch.stack(out.scores, 1).log_softmax(-1)
    rollouts = []
    for i in range(len(prompts)):
        seq = out.sequences[i, width:].tolist()
        comp = seq[: seq.index(tok.eos_token_id) + 1] if tok.eos_token_id in seq else seq
        row, mask = enc["input_ids"][i].tolist(), enc["attention_mask"][i].tolist()
        prompt_ids = [t for t, m in zip(row, mask, strict=True) if m]
        rollouts.append(Rollout(task.test[i], prompt_ids, comp, "", 0.0, False))
    batch = collate(rollouts, 0, torch.device("cpu"))
    with torch.no_grad():
        logits, _ = PolicyWithValue(model, with_value=False)(batch["input_ids"], batch["attention_mask"])
    logp, _, _ = completion_view(batch, logits, None, temperature)
    for i, r in enumerate(rollouts):
        expected = sampled[i, torch.arange(len(r.completion_ids)), torch.tensor(r.completion_ids)]
        assert torch.allclose(logp[i, : len(r.completion_ids)], expected, atol=1e-4)
