"""The trainable policy: scoring equals sampling, fp32 master weights under bf16 compute, completion-only
chunked logits, gradient checkpointing and dropout, the LoRA reference."""

import copy
import math

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from transformers import GenerationConfig

from lrn import policy as policy_module
from lrn.batch import collate
from lrn.config import ConfigError, LoraConfig, ModelConfig, PPOConfig, TinyModelConfig, to_config
from lrn.engines import HFEngine, SamplingSpec
from lrn.engines.hf import _own_generation_config, generation_config
from lrn.engines.vllm import full_state_dict
from lrn.models import build_char_tokenizer, build_tiny_model, load_policy
from lrn.policy import Policy, nucleus_candidates, nucleus_mask, nucleus_mask_by_sort, process_logits
from lrn.rollout import Rollout
from lrn.tasks import Problem
from lrn.update import ppo_update, prepare

HOSTILE = dict(repetition_penalty=3.0, no_repeat_ngram_size=2, do_sample=True, top_k=5, min_new_tokens=4)


def tiny(seed=0, layers=1, **kw):
    torch.manual_seed(seed)
    tok = build_char_tokenizer()
    return build_tiny_model(TinyModelConfig(layers=layers, width=32, heads=2, ffn=64, **kw), tok), tok


def test_process_logits_applies_temperature_then_top_k_then_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    # top-p 0.7: the smallest head of mass >= 0.7 is {0.5, 0.3}; renormalised 0.625, 0.375
    probs = process_logits(logits, SamplingSpec(max_new_tokens=1, top_p=0.7)).softmax(-1)
    assert torch.allclose(probs, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    # top-k 3, then top-p 0.9 of the renormalised (0.5, 0.3, 0.15)/0.95: 0.526 + 0.316 < 0.9, so all 3 stay
    probs = process_logits(logits, SamplingSpec(max_new_tokens=1, top_k=3, top_p=0.9)).softmax(-1)
    assert torch.allclose(probs, torch.tensor([[0.5, 0.3, 0.15, 0.0]]) / 0.95)
    # temperature 2 halves the logits: p ~ sqrt(p)
    probs = process_logits(logits, SamplingSpec(max_new_tokens=1, temperature=2.0)).softmax(-1)
    root = torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt()
    assert torch.allclose(probs, (root / root.sum())[None])
    # a token outside the mask that must be kept (it was sampled) stays finite
    kept = process_logits(logits, SamplingSpec(max_new_tokens=1, top_p=0.7), keep=torch.tensor([3]))
    assert math.isfinite(kept[0, 3].item()) and kept[0, 2].item() == -math.inf


def test_top_p_without_a_sort_masks_exactly_what_the_sort_masks():
    """Top-p from 256 candidates equals the engines' sort-based rule on every row, and decides peaked rows
    without the sort (else this test would only check the sort against itself)."""
    g = torch.Generator().manual_seed(0)
    vocab, n = 20_000, 32
    rows = []
    for scale in (0.5, 2.0, 4.0, 8.0):  # flat (a nucleus of thousands of tokens) to peaked (a few tokens)
        rows.append(torch.randn(n, vocab, generator=g) * scale)
    masked = torch.randn(4, vocab, generator=g) * 3  # a top-k mask already applied: -inf past the 10th
    rows.append(masked.masked_fill(masked < masked.topk(10, -1).values[:, -1:], -math.inf))
    logits = torch.cat(rows)
    for top_p in (0.5, 0.9, 0.95):
        expected = nucleus_mask_by_sort(logits, top_p)
        assert torch.equal(nucleus_mask(logits, top_p), expected), top_p
        _, decided = nucleus_candidates(logits, top_p)
        assert not decided[:n].any()  # the flat rows' nucleus lies far beyond 256 candidates: sorted
        assert decided[3 * n:4 * n].float().mean() > 0.9  # peaked rows: decided from the candidates
    # a hand-made tie at the boundary: 0.4, 0.3, 0.3 (tied), rest ~0; top-p 0.6 keeps 0.4 and ONE of the 0.3s
    tie = torch.full((1, 1000), -30.0)
    tie[0, :3] = torch.log(torch.tensor([0.4, 0.3, 0.3]))
    _, decided = nucleus_candidates(tie, 0.6)
    assert not decided.item()  # left to the sort, whose tie order is the engines' choice
    assert int((~nucleus_mask(tie, 0.6)).sum()) == 2


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.7, 0.9, 0), (0.6, 0.9, 8)])
def test_trainer_logprobs_equal_the_samplers_processed_scores(temperature, top_p, top_k):
    """The engine samples exactly what `generate` with the spec's config samples (a hostile checkpoint
    generation_config changes nothing), and the policy's log-probs of those tokens equal generate's
    processed scores: temperature, top-k and top-p included."""
    model, tok = tiny()
    model.generation_config = GenerationConfig(**HOSTILE)
    spec = SamplingSpec(max_new_tokens=6, temperature=temperature, top_p=top_p, top_k=top_k,
                        eos_ids=(tok.eos_token_id,))
    prompts = [tok(q, add_special_tokens=False)["input_ids"] for q in ("12+3=", "7-45=", "100+2000=")]
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    torch.manual_seed(3)
    with _own_generation_config(model), torch.no_grad():
        out = model.eval().generate(input_ids=ids, attention_mask=mask, output_scores=True,
                                    return_dict_in_generate=True, generation_config=generation_config(
                                        spec, tok.pad_token_id))
    torch.manual_seed(3)
    generated = HFEngine(model, tok).generate(prompts, spec)
    scores = torch.stack(out.scores, 1).log_softmax(-1)  # generate's processed distribution
    policy = Policy(model, with_value=False)
    rollouts = [Rollout(Problem("p", "q", "a"), g.prompt_ids, g.completion_ids, "", 0.0, g.truncated)
                for g in generated]
    logp = policy.score(collate(rollouts, tok.pad_token_id, policy.device), spec)[0]
    for i, g in enumerate(generated):
        n = len(g.completion_ids)
        assert g.completion_ids == out.sequences[i, width:width + n].tolist()
        expected = scores[i, torch.arange(n), torch.tensor(g.completion_ids)]
        assert torch.allclose(logp[i, :n], expected, atol=1e-4)


def test_greedy_answers_ignore_a_hostile_checkpoint_generation_config():
    model, tok = tiny(seed=1)
    spec = SamplingSpec(max_new_tokens=8, eos_ids=(tok.eos_token_id,), greedy=True)
    prompts = [tok(q, add_special_tokens=False)["input_ids"] for q in ("1+1=", "22-5=", "300+12=")]
    clean = HFEngine(model, tok).generate(prompts, spec)
    model.generation_config = GenerationConfig(**HOSTILE)
    assert [g.completion_ids for g in HFEngine(model, tok).generate(prompts, spec)] == \
        [g.completion_ids for g in clean]
    assert model.generation_config.repetition_penalty == 3.0  # restored after generating


def answer_batch(tok, device):
    rollouts = []
    for i, (text, reward) in enumerate((("7", 1.0), ("31", 0.0), ("123", 1.0), ("9", 0.0))):
        prompt = tok(f"{i}+{i}=", add_special_tokens=False)["input_ids"]
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rollouts.append(Rollout(Problem(str(i // 2), "q", "a"), prompt, ids, text, reward, False))
    return collate(rollouts, tok.pad_token_id, device)


def test_bf16_compute_keeps_fp32_master_weights_that_move_at_lr_1e_6():
    """Two Adam steps at lr 1e-6 under bf16 autocast: weights stay float32 and nearly all of them move
    (bf16 weights would round most such steps away)."""
    model, tok = tiny()
    policy = Policy(model, with_value=False, dtype=torch.bfloat16)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    cfg = PPOConfig(lr=1e-6, epochs=1, minibatches=1)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
    batch = answer_batch(tok, policy.device)
    for _ in range(2):
        prepare(policy, cfg, batch, SamplingSpec(max_new_tokens=4), k=2)
        ppo_update(policy, optimizer, cfg, batch, SamplingSpec(max_new_tokens=4))
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    moved = sum(int((p != before[n]).sum()) for n, p in policy.named_parameters())
    assert moved / sum(p.numel() for p in policy.parameters()) >= 0.9


def test_bf16_forward_runs_in_bf16():
    model, tok = tiny()
    seen = []
    model.model.layers[0].mlp.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    Policy(model, with_value=False, dtype=torch.bfloat16).score(answer_batch(tok, "cpu"), SamplingSpec(4))
    assert seen == [torch.bfloat16]


def test_logits_only_at_answer_tokens_in_chunks(monkeypatch):
    """The output layer sees the answer tokens alone (never prompt or padding), at most CHUNK_ELEMENTS
    logits at a time, also in the backward pass (each chunk is recomputed)."""
    model, tok = tiny()
    policy = Policy(model, with_value=False)
    vocab = model.config.vocab_size
    monkeypatch.setattr(policy_module, "CHUNK_ELEMENTS", 3 * vocab)
    rows = []
    policy.head.register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    batch = answer_batch(tok, policy.device)
    answer_tokens = int(batch.completion_mask.sum())  # 2 + 3 + 4 + 2 = 11
    logp, entropy, _ = policy(batch, SamplingSpec(max_new_tokens=4))
    assert answer_tokens == 11 and sum(rows) == 11 and max(rows) <= 3
    logp.sum().backward()
    assert sum(rows) == 22  # recomputed chunk by chunk in the backward pass
    assert logp.requires_grad and not entropy.requires_grad  # entropy without a graph when ent_coef = 0


def test_gradient_checkpointing_acts_in_updates_and_dropout_is_off(tmp_path):
    """HF layers checkpoint only in train mode: the policy stays in train mode, so a checkpointed layer
    recomputes its attention in the backward pass; dropout is zero, so passes are deterministic."""
    model, tok = tiny(layers=2)
    model.config.attention_dropout = 0.3
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    for checkpointing, calls_expected in ((False, 1), (True, 2)):
        lm, _ = load_policy(ModelConfig(name_or_path=str(tmp_path), gradient_checkpointing=checkpointing), None)
        policy = Policy(lm, with_value=False)
        calls = []
        lm.model.layers[0].self_attn.register_forward_hook(lambda m, i, o, calls=calls: calls.append(1))
        batch = answer_batch(tok, policy.device)
        logp, _, _ = policy(batch, SamplingSpec(max_new_tokens=4))
        logp.sum().backward()
        assert lm.training and len(calls) == calls_expected
        assert all(m.attention_dropout == 0.0 for m in lm.modules() if hasattr(m, "attention_dropout"))
        again, _, _ = policy(batch, SamplingSpec(max_new_tokens=4))
        assert torch.equal(logp, again)


def test_lora_reference_is_the_base_model_with_adapters_off(tmp_path):
    model, tok = tiny()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    base = Policy(tiny()[0], with_value=False)
    lm, _ = load_policy(ModelConfig(name_or_path=str(tmp_path), lora=LoraConfig(enabled=True, r=2)), None)
    policy = Policy(lm, with_value=False, reference=True)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)  # the adapters now change the outputs
    batch = answer_batch(tok, policy.device)
    spec = SamplingSpec(max_new_tokens=4)
    with policy.reference() as reference:
        ref = reference.score(batch, spec)[0]
    assert torch.allclose(ref, base.score(batch, spec)[0], atol=1e-5)
    assert not torch.allclose(policy.score(batch, spec)[0], ref, atol=1e-3)
    assert policy._frozen is None  # no copy of the model was made


def test_lora_adapters_start_from_the_run_seed_whatever_was_drawn_before(tmp_path):
    """LoRA's A matrices are random: drawn from the run's seed, not from whatever state the global RNG was
    left in by the imports and the loading before them (which made same-config LoRA runs differ)."""
    model, tok = tiny()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = ModelConfig(name_or_path=str(tmp_path), lora=LoraConfig(enabled=True, r=2))

    def adapters(seed, drawn):
        torch.manual_seed(1000 + drawn)  # the caller's RNG state, which must not matter
        lm, _ = load_policy(cfg, None, seed=seed)
        return {n: p.detach().clone() for n, p in lm.named_parameters() if "lora_A" in n}, torch.rand(1)

    (first, after), (second, _) = adapters(0, 1), adapters(0, 2)
    assert first.keys() == second.keys() and all(torch.equal(first[n], second[n]) for n in first)
    assert not torch.equal(adapters(1, 1)[0][next(iter(first))], first[next(iter(first))])  # the seed counts
    torch.manual_seed(1001)
    assert torch.equal(after, torch.rand(1))  # and the caller's stream is left as it was


def test_frozen_weights_are_kept_in_the_compute_dtype():
    """The KL reference and a LoRA base are bf16 under bf16 compute (no fp32 copy re-cast on every forward);
    the trained weights stay fp32 masters and their gradients fp32."""
    model, tok = tiny()
    policy = Policy(model, with_value=True, dtype=torch.bfloat16, reference=True)
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    assert {p.dtype for p in policy._frozen.parameters()} == {torch.bfloat16}
    batch = answer_batch(tok, policy.device)
    spec = SamplingSpec(max_new_tokens=4)
    with policy.reference() as reference:
        ref = reference.score(batch, spec)[0]
    # the same weights, rounded once to bf16 either way: equal up to bf16 arithmetic
    assert (ref - policy.score(batch, spec)[0]).abs().max() < 0.05
    lora = get_peft_model(tiny()[0], PeftLoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    policy = Policy(lora, with_value=False, dtype=torch.bfloat16)
    dtypes = {(p.requires_grad, p.dtype) for p in policy.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
    logp, _, _ = policy(batch, spec)
    logp.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in policy.parameters() if p.requires_grad)


def test_lora_weights_reach_the_engine_merged_without_touching_the_bf16_base():
    """vLLM receives base + delta for every adapted weight (what merge_and_unload gives), computed out of
    place: merging into a bf16 base and unmerging would leave rounding residue after every push."""
    lora = get_peft_model(tiny()[0], PeftLoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                    init_lora_weights=False))
    Policy(lora, with_value=False, dtype=torch.bfloat16)  # the base becomes bf16, the adapters stay fp32
    before = {n: t.clone() for n, t in lora.state_dict().items()}
    pushed = dict(full_state_dict(lora))
    assert all(torch.equal(before[n], t) for n, t in lora.state_dict().items())  # nothing modified
    merged = copy.deepcopy(lora).float().merge_and_unload().state_dict()
    assert pushed.keys() == merged.keys()
    for name, tensor in merged.items():
        torch.testing.assert_close(pushed[name].float(), tensor, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(pushed["model.layers.0.self_attn.q_proj.weight"].float(),
                           before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"].float())


def test_float16_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"model.dtype='float16' is invalid: .*needs? loss scaling"):
        to_config({"model": {"dtype": "float16"}})
