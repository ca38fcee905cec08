"""The rollout engine and collation: padding layout, answers' ends, counting and reproducibility."""

import torch

from lrn.batch import collate
from lrn.config import ArithmeticConfig, TinyModelConfig
from lrn.engines import HFEngine, SamplingSpec, finish
from lrn.grading import GradePool
from lrn.models import build_char_tokenizer, build_tiny_model
from lrn.rollout import Rollout, RolloutEngine, longest_prompt
from lrn.tasks import Problem, Task, build_task


def make_engine(seed=0, **spec):
    torch.manual_seed(seed)
    tok = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(layers=1, width=32, heads=2, ffn=64), tok)
    task = build_task(ArithmeticConfig(train_size=20, test_per_level=2))
    sampling = SamplingSpec(max_new_tokens=task.max_new_tokens, eos_ids=(tok.eos_token_id,), **spec)
    engine = RolloutEngine(HFEngine(model, tok, batch_size=7), tok, task, sampling, GradePool("integer"))
    return engine, tok, model, task


def test_collate_left_pads_prompts_and_right_pads_completions():
    p = Problem("a", "1+1", "2")
    rs = [Rollout(p, [5, 6], [7, 1], "", 1.0, False), Rollout(p, [5, 6, 8], [9], "", 0.0, False)]
    b = collate(rs, pad_id=0, device=torch.device("cpu"))
    assert b.input_ids.tolist() == [[0, 5, 6, 7, 1], [5, 6, 8, 9, 0]]
    assert b.attention_mask.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert b.completion_mask.tolist() == [[1, 1], [1, 0]]
    assert b.rewards.tolist() == [1.0, 0.0] and b.prompt_len == 3
    assert b.rows(torch.tensor([1])).input_ids.tolist() == [[5, 6, 8, 9, 0]]


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


def test_finish_never_keeps_an_unsampled_pad_that_is_also_an_eos():
    """pad == EOS (id 9): after a stop string ends an answer, generate pads with 9; that 9 was never
    sampled, so it is not part of the answer. A 9 sampled before any stop string ends the answer."""
    decode = {1: "a", 2: "b", 3: "STOP", 9: ""}.get
    spec = SamplingSpec(max_new_tokens=6, stop=("STOP",), eos_ids=(9,))

    def text(ids):
        return "".join(decode(i) for i in ids)

    assert finish([1, 2, 3, 9, 9, 9], spec, text) == ([1, 2, 3], False)
    assert finish([1, 9, 3, 9, 9, 9], spec, text) == ([1, 9], False)
    assert finish([1, 2, 1, 2, 1, 2], spec, text) == ([1, 2, 1, 2, 1, 2], True)


def test_longest_prompt_counts_the_rendered_prompts_of_both_splits():
    """What rollout.vllm.max_model_len=auto starts from: the character tokenizer gives one id per character."""
    tok = build_char_tokenizer()
    task = Task("t", [Problem("a", "1+1", "2"), Problem("b", "12+30", "42")], [Problem("c", "100-7", "93")],
                "Q: {question}=", 9, lambda answer, gold: 0.0)
    assert longest_prompt(task, tok) == len("Q: 12+30=") == 9
    task.test.append(Problem("d", "1000-999", "1"))  # the held-out set counts too
    assert longest_prompt(task, tok) == len("Q: 1000-999=") == 12
    task.render = lambda text: f"<user>{text}</user>"  # and the chat rendering around it
    assert longest_prompt(task, tok) == 12 + len("<user></user>") == 25
