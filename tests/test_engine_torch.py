"""engine/torch: agrees with HF generate under greedy decoding, records the policy's log-probs,
is seeded, and honours EOS, stop strings, max tokens and top-p."""
import pytest
import torch

from reasonzoo.plugins.engine.torch import TorchEngine, TorchEngineConfig, TorchEnginePlugin, sample_next
from reasonzoo.types import FinishReason, GenerationRequest, SamplingParams

PROMPTS = ["1+2=", "3*4-5+6=", "7=", "9-9*9="]


def _reqs(policy):
    return [GenerationRequest(policy.encode_prompt(p)) for p in PROMPTS]


def test_greedy_matches_hf_generate(tiny_policy):
    policy = tiny_policy
    eng = TorchEngine(TorchEngineConfig(max_batch=3), policy)  # chunking exercised too
    outs = eng.generate(_reqs(policy), SamplingParams(temperature=0, max_new_tokens=20), torch.Generator())
    for prompt, out in zip(PROMPTS, outs):
        ids = torch.tensor([policy.encode_prompt(prompt)])
        hf = policy.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20,
                                   eos_token_id=policy.eos_token_id, pad_token_id=policy.pad_token_id)
        assert list(out.token_ids) == hf[0, ids.shape[1]:].tolist()


def test_logprobs_equal_teacher_forced(tiny_policy):
    policy = tiny_policy
    eng = TorchEngine(TorchEngineConfig(), policy)
    outs = eng.generate(_reqs(policy), SamplingParams(temperature=1.0, max_new_tokens=16), torch.Generator().manual_seed(0))
    for prompt, out in zip(PROMPTS, outs):
        seq = torch.tensor([list(policy.encode_prompt(prompt)) + list(out.token_ids)])
        with torch.no_grad():
            lp = policy.token_logprobs(seq, torch.ones_like(seq))[0, -len(out.token_ids):]
        torch.testing.assert_close(lp, torch.tensor(out.logprobs), atol=1e-5, rtol=1e-5)


def test_seeded_and_end_states(tiny_policy):
    policy = tiny_policy
    eng = TorchEngine(TorchEngineConfig(), policy)
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    a = eng.generate(_reqs(policy), params, torch.Generator().manual_seed(5))
    b = eng.generate(_reqs(policy), params, torch.Generator().manual_seed(5))
    c = eng.generate(_reqs(policy), params, torch.Generator().manual_seed(6))
    assert a == b and a != c
    for o in a:
        assert len(o.token_ids) <= 12
        if o.finish_reason is FinishReason.STOP:
            assert o.token_ids[-1] == policy.eos_token_id
        else:
            assert o.finish_reason is FinishReason.LENGTH and len(o.token_ids) == 12


def test_stop_strings_and_per_request_limit(tiny_policy):
    policy = tiny_policy
    eng = TorchEngine(TorchEngineConfig(), policy)
    reqs = [GenerationRequest(policy.encode_prompt("1+2="), max_new_tokens=3)] * 2
    outs = eng.generate(reqs, SamplingParams(temperature=1.0, max_new_tokens=50), torch.Generator().manual_seed(0))
    assert all(len(o.token_ids) <= 3 for o in outs)
    free = eng.generate(_reqs(policy), SamplingParams(temperature=1.5, max_new_tokens=30), torch.Generator().manual_seed(1))
    stop = policy.decode(free[0].token_ids[2:3])  # a character the unconstrained run produced at position 2
    outs = eng.generate(_reqs(policy), SamplingParams(temperature=1.5, max_new_tokens=30, stop_strings=(stop,)),
                        torch.Generator().manual_seed(1))  # same batch, same seed: same draws until the stop
    assert outs[0].finish_reason is FinishReason.STOP and policy.decode(outs[0].token_ids).endswith(stop)
    assert len(outs[0].token_ids) <= 3


@pytest.mark.parametrize("fast", [True, False])
def test_stop_string_on_the_last_allowed_token_is_stop(tiny_policy, fast):
    """Precedence EOS / stop string > repeat > length also on the token that reaches the limit."""
    policy = tiny_policy
    eng = TorchEngine(TorchEngineConfig(fast=fast), policy)
    req = _reqs(policy)[:1]
    free = eng.generate(req, SamplingParams(temperature=1.5, max_new_tokens=30), torch.Generator().manual_seed(1))[0]
    text = [policy.decode([t]) for t in free.token_ids]
    p = next(i for i in range(1, len(text)) if text[i] and text[i] not in "".join(text[:i]))  # first new character
    limited = [GenerationRequest(req[0].prompt_ids, max_new_tokens=p + 1)]
    out = eng.generate(limited, SamplingParams(temperature=1.5, max_new_tokens=30, stop_strings=(text[p],)),
                       torch.Generator().manual_seed(1))[0]  # same draws: the stop string completes on token p+1 = the limit
    assert out.token_ids == free.token_ids[: p + 1] and out.finish_reason is FinishReason.STOP


def test_prefix_continuation(tiny_policy):
    """A request with prefix_ids continues a response: greedy continuation = the tail of one run."""
    policy = tiny_policy
    eng = TorchEngine(TorchEngineConfig(), policy)
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    full = eng.generate(_reqs(policy)[:1], greedy, torch.Generator())[0]
    if len(full.token_ids) < 4:
        pytest.skip("random model stopped too early")  # deterministic for the fixed seed: never taken
    head = full.token_ids[:4]
    rest = eng.generate([GenerationRequest(policy.encode_prompt(PROMPTS[0]), prefix_ids=head, max_new_tokens=6)], greedy, torch.Generator())[0]
    assert head + rest.token_ids == full.token_ids


def test_top_p_keeps_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    toks = {int(sample_next(logits, SamplingParams(top_p=0.7), gen)[0]) for _ in range(200)}
    assert toks == {0, 1}
    tok, lp = sample_next(logits, SamplingParams(top_p=0.7), gen)
    assert float(lp.exp()) == pytest.approx([0.5 / 0.8, 0.3 / 0.8][int(tok)])
    tok, lp = sample_next(logits, SamplingParams(temperature=0), gen)
    assert int(tok) == 0 and float(lp) == pytest.approx(torch.log(torch.tensor(0.5)).item())


def test_bad_config():
    with pytest.raises(ValueError, match="engine.max_batch=0"):
        TorchEnginePlugin(TorchEngineConfig(max_batch=0))


@pytest.mark.parametrize("arch", ["llama", "qwen2_gqa"])
def test_fast_path_matches_hf_forward(tiny_policy, qwen2_gqa_policy, arch):
    """The lean decoder gives the HF forward's greedy tokens, and its sampled log-probs (with row
    dropping and per-request limits) equal teacher-forced HF log-probs."""
    policy = tiny_policy if arch == "llama" else qwen2_gqa_policy
    policy.model.eval()
    fast = TorchEngine(TorchEngineConfig(compact_at=0.1, max_batch=5), policy)  # 5 rows: refills too
    slow = TorchEngine(TorchEngineConfig(fast=False), policy)
    assert fast.fast is not None and slow.fast is None
    greedy = SamplingParams(temperature=0, max_new_tokens=24)
    for a, b in zip(fast.generate(_reqs(policy), greedy, torch.Generator()), slow.generate(_reqs(policy), greedy, torch.Generator())):
        assert a.token_ids == b.token_ids and a.finish_reason is b.finish_reason
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)
    reqs = [GenerationRequest(r.prompt_ids, max_new_tokens=m) for r in _reqs(policy) * 4 for m in (5, None)]
    outs = fast.generate(reqs, SamplingParams(temperature=1.3, max_new_tokens=40), torch.Generator().manual_seed(2))
    assert any(o.finish_reason is FinishReason.STOP for o in outs)  # rows did leave the batch early
    for r, out in zip(reqs, outs):
        assert len(out.token_ids) <= (r.max_new_tokens or 40)
        if not out.token_ids:
            continue
        seq = torch.tensor([list(r.prompt_ids) + list(out.token_ids)])
        with torch.no_grad():
            logits = policy.model(input_ids=seq).logits[0, len(r.prompt_ids) - 1 : -1] / 1.3
        lp = torch.log_softmax(logits, -1).gather(-1, seq[0, len(r.prompt_ids) :, None]).squeeze(-1)
        torch.testing.assert_close(lp, torch.tensor(out.logprobs), atol=1e-5, rtol=1e-5)


def _one_by_one(policy, reqs, params):
    eng = TorchEngine(TorchEngineConfig(), policy)
    return [eng.generate([r], params, torch.Generator())[0] for r in reqs]


@pytest.mark.parametrize("max_batch", [1, 2, 3])
def test_continuous_batching_matches_one_by_one(tiny_policy, max_batch):
    """Rows admitted at different steps, from prefill buckets of different widths, decode side by
    side: greedy tokens and log-probs equal each request generated on its own."""
    policy = tiny_policy
    long_ctx = policy.encode_prompt("1+2*3-4+5*6-7+8*9-1+2*3-4+5=")  # > 2x the short ones: its own prefill bucket
    reqs = [GenerationRequest(long_ctx, max_new_tokens=7), *(GenerationRequest(r.prompt_ids, max_new_tokens=m)
            for r, m in zip(_reqs(policy), (3, 12, 1, 5))),
            GenerationRequest(policy.encode_prompt("7="), prefix_ids=policy.encode_response("12", eos=False), max_new_tokens=4)]
    params = SamplingParams(temperature=0, max_new_tokens=20)
    eng = TorchEngine(TorchEngineConfig(max_batch=max_batch), policy)
    outs = eng.generate(reqs, params, torch.Generator())
    for a, b in zip(outs, _one_by_one(policy, reqs, params)):
        assert a.token_ids == b.token_ids and a.finish_reason is b.finish_reason
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)
    assert [len(o.token_ids) for o in outs] == [7, 3, 12, 1, 5, 4]
    if max_batch < len(reqs):
        assert eng.fast.stats["admissions"] > 1  # finished rows were refilled


def test_continuous_batching_refills_finished_slots(tiny_policy):
    """One long request and six short ones on two rows: the short ones cycle through the second row
    while the long one runs, so the call takes the long request's 29 decode steps (a static batch
    of two would take 29 + 3 more)."""
    policy = tiny_policy
    reqs = [GenerationRequest(r.prompt_ids, max_new_tokens=30 if i == 0 else 2) for i, r in enumerate((_reqs(policy) * 2)[:7])]
    eng = TorchEngine(TorchEngineConfig(max_batch=2), policy)
    params = SamplingParams(temperature=0, max_new_tokens=30)
    outs = eng.generate(reqs, params, torch.Generator())
    assert eng.fast.stats["decode_steps"] == 29
    assert eng.fast.stats["admissions"] == 6  # the first two rows, then each short request as a row frees
    assert eng.fast.stats["rows_decoded"] <= 2 * 29
    assert [o.token_ids for o in outs] == [o.token_ids for o in _one_by_one(policy, reqs, params)]


def test_attention_spans_hand_computed():
    from reasonzoo.fastdecode import _spans

    live = [True] * 20
    assert _spans([5] * 20, live) == [(0, 20, 6)]
    # 8 short rows, then 8 long ones: two spans, each scanning only its own rows' columns
    assert _spans([5] * 8 + [100] * 8, live[:16]) == [(0, 8, 6), (8, 16, 101)]
    # a span holds >= min_rows rows before it may end; lengths within 2x stay together
    assert _spans([5] * 4 + [100] * 4, live[:8]) == [(0, 8, 101)]
    assert _spans([40] * 8 + [70] * 8, live[:16]) == [(0, 16, 71)]
    # finished rows fit any span and do not widen it
    assert _spans([5] * 8 + [900] + [5] * 3, live[:8] + [False] + live[:3]) == [(0, 12, 6)]
    # at most `most` spans: the cheapest adjacent merge first, in rows x columns scanned: spans
    # 1+2 cost 16*11 - 8*1 - 8*11 = 80 more, 2+3 16*41 - 8*11 - 8*41 = 240, ...: 1+2 merge
    cols = [0] * 8 + [10] * 8 + [40] * 8 + [200] * 8 + [1000] * 8
    assert _spans(cols, [True] * 40, most=4) == [(0, 16, 11), (16, 24, 41), (24, 32, 201), (32, 40, 1001)]


def test_mixed_lengths_decode_exactly(tiny_policy):
    """Short prompts beside long continuations in one call (separate prefill buckets and attention
    spans): greedy tokens equal each request alone, sampled log-probs equal teacher forcing."""
    policy = tiny_policy
    short = [GenerationRequest(policy.encode_prompt(p), max_new_tokens=10) for p in PROMPTS * 3]  # 12 rows
    head = policy.encode_response("3a+4b*2c-2=" * 4, eos=False)  # ~45-token response so far
    long = [GenerationRequest(policy.encode_prompt(p), prefix_ids=head[: 40 + i], max_new_tokens=10)
            for i, p in enumerate(PROMPTS * 3)]
    reqs = short + long  # rows 0-11 short, 12-23 long: two spans
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    eng = TorchEngine(TorchEngineConfig(), policy)
    outs = eng.generate(reqs, greedy, torch.Generator())
    assert eng.fast.stats["prefills"] == 3  # buckets: prompts of 3-5 and 7-9 tokens, continuations of 43-55
    for a, b in zip(outs, _one_by_one(policy, reqs, greedy)):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)
    outs = eng.generate(reqs, SamplingParams(temperature=1.0, max_new_tokens=10), torch.Generator().manual_seed(0))
    for r, out in zip(reqs, outs):
        seq = torch.tensor([list(r.prompt_ids) + list(r.prefix_ids) + list(out.token_ids)])
        with torch.no_grad():
            lp = policy.token_logprobs(seq, torch.ones_like(seq))[0, -len(out.token_ids):]
        torch.testing.assert_close(lp, torch.tensor(out.logprobs), atol=1e-5, rtol=1e-5)


def test_fast_path_seeded_with_compaction(tiny_policy):
    eng = TorchEngine(TorchEngineConfig(compact_at=0.1), tiny_policy)
    params = SamplingParams(temperature=1.5, max_new_tokens=30)
    reqs = _reqs(tiny_policy) * 8
    a = eng.generate(reqs, params, torch.Generator().manual_seed(3))
    assert a == eng.generate(reqs, params, torch.Generator().manual_seed(3))
    assert a != eng.generate(reqs, params, torch.Generator().manual_seed(4))


def test_unsupported_model_uses_hf_forward():
    from transformers import GPT2Config, GPT2LMHeadModel

    from reasonzoo.fastdecode import unsupported
    from reasonzoo.policy import Policy, build_char_tokenizer

    tok = build_char_tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                       eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)).eval()
    policy = Policy(model=model, tokenizer=tok)
    assert "GPT2LMHeadModel" in unsupported(model)
    eng = TorchEngine(TorchEngineConfig(), policy)
    assert eng.fast is None
    outs = eng.generate(_reqs(policy), SamplingParams(max_new_tokens=5), torch.Generator().manual_seed(0))
    assert all(1 <= len(o.token_ids) <= 5 for o in outs)


def test_bad_compact_at():
    with pytest.raises(ValueError, match="engine.compact_at=0"):
        TorchEnginePlugin(TorchEngineConfig(compact_at=0))
