"""engine/vllm: vLLM's offline engine gives the torch engine's greedy tokens, the sampling
distribution's log-probs (T=1, and T=0.7 with top-p 0.9), is seeded by the caller's generator and
leaves the global RNGs alone, cuts repeating responses like the in-loop rule, and serves the
trainer's weights after an in-place push (log-probs equal to the trainer's within ``TOL``).

Needs the extra (``pip install -e '.[vllm]'``, see README); run with ``pytest -m vllm``. Every test
fails (never skips) when vLLM is not importable. One engine serves the whole module (start-up
takes 10-35 s of import plus ~5 s).
"""
import gc
import os
import random
import re
import sys

import numpy as np
import pytest
import torch

from reasonzoo.plugins.engine.torch import TorchEngine, TorchEngineConfig
from reasonzoo.plugins.engine.vllm import (VllmEngine, VllmEngineConfig, VllmEnginePlugin, check_config,
                                           cut_repeats)
from reasonzoo.repeats import RepeatRule
from reasonzoo.types import FinishReason, Generation, GenerationRequest, SamplingParams

pytestmark = pytest.mark.vllm

#: Largest |engine - trainer| log-prob difference accepted (both fp32; measured ~1e-6).
TOL = 1e-4
PROMPTS = ["1+2=", "3*4-5+6=", "7=", "9-9*9=", "a3+4b*2="]
GREEDY = SamplingParams(temperature=0, max_new_tokens=30)


@pytest.fixture(scope="module")
def policy():
    """A tiny Llama with head size 32 (vLLM's CPU attention needs >= 32) and weights drawn with
    std 0.2, so greedy responses vary (the default init makes every row repeat one character)."""
    from reasonzoo.policy import Policy, build_char_tokenizer, build_tiny_model

    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), "llama", 64, 2, 2, 128, 256, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return Policy(model=model.eval(), tokenizer=tok)


@pytest.fixture(scope="module")
def engine(policy, tmp_path_factory):
    """One engine for the module; records what its start-up did to the process."""
    torch.manual_seed(11), random.seed(11), np.random.seed(11)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    set_threads, preload = torch.set_num_threads, os.environ.get("LD_PRELOAD")
    eng = VllmEngine(VllmEngineConfig(), policy, tmp_path_factory.mktemp("vllm"))  # fails here without vLLM
    eng.startup = {
        "rng_kept": torch.equal(before[0], torch.get_rng_state()) and before[1] == random.getstate()
        and bool((before[2] == np.random.get_state()[1]).all()),
        "set_num_threads_kept": torch.set_num_threads is set_threads,
        "ld_preload_kept": os.environ.get("LD_PRELOAD") == preload,
        "gc_frozen": gc.get_freeze_count(),
    }
    yield eng
    eng.close()


def _reqs(policy, prompts=PROMPTS):
    return [GenerationRequest(policy.encode_prompt(p)) for p in prompts]


def _teacher_forced(policy, prompt_ids, ids, temperature=1.0, top_p=1.0):
    """Log-probs of ``ids`` after ``prompt_ids`` under the processed distribution, from the HF logits."""
    seq = torch.tensor([list(prompt_ids) + list(ids)])
    with torch.no_grad():
        logits = policy.model(input_ids=seq).logits[0, len(prompt_ids) - 1 : -1].float()  # (len(ids), V)
    logp = torch.log_softmax(logits / temperature, -1)
    if top_p < 1.0:  # keep the smallest set of most likely tokens whose mass reaches top_p
        srt, idx = logp.sort(-1, descending=True)
        drop = (srt.exp().cumsum(-1) - srt.exp()) >= top_p
        logp = torch.log_softmax(logp.masked_fill(torch.zeros_like(drop).scatter(-1, idx, drop), float("-inf")), -1)
    return logp.gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)


def test_startup_leaves_the_process_alone(engine):
    assert engine.startup == {"rng_kept": True, "set_num_threads_kept": True, "ld_preload_kept": True, "gc_frozen": 0}


def test_greedy_matches_torch_engine(engine, policy):
    """Greedy tokens, end states and log-probs (of the unscaled distribution, as engine/torch
    records at T=0) equal the torch engine's, for fresh and continued requests."""
    torch_engine = TorchEngine(TorchEngineConfig(), policy)
    full = torch_engine.generate(_reqs(policy), GREEDY, torch.Generator())
    p0 = policy.encode_prompt(PROMPTS[0])
    reqs = _reqs(policy) + [GenerationRequest(p0, prefix_ids=full[0].token_ids[:7], max_new_tokens=10),
                            GenerationRequest(p0, max_new_tokens=3)]
    ours, ref = engine.generate(reqs, GREEDY, torch.Generator()), torch_engine.generate(reqs, GREEDY, torch.Generator())
    assert len({o.token_ids for o in ours}) >= 4  # the responses differ from each other
    for a, b in zip(ours, ref):
        assert a.token_ids == b.token_ids and a.finish_reason is b.finish_reason
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=TOL, rtol=0)
    assert ours[-2].token_ids == full[0].token_ids[7:17]  # the continuation is the tail of one run
    assert len(ours[-1].token_ids) == 3 and ours[-1].finish_reason is FinishReason.LENGTH


def test_sampled_logprobs_and_eos(engine, policy):
    """At T=1 the recorded log-probs are the policy's; a response that stops on EOS includes it."""
    reqs = _reqs(policy) * 6
    outs = engine.generate(reqs, SamplingParams(temperature=1.0, max_new_tokens=40), torch.Generator().manual_seed(1))
    for r, o in zip(reqs, outs):
        torch.testing.assert_close(torch.tensor(o.logprobs), _teacher_forced(policy, r.prompt_ids, o.token_ids), atol=TOL, rtol=0)
        if o.finish_reason is FinishReason.STOP:
            assert o.token_ids[-1] == policy.eos_token_id
        else:
            assert o.finish_reason is FinishReason.LENGTH and len(o.token_ids) == 40
    assert any(o.finish_reason is FinishReason.STOP for o in outs)


def test_temperature_top_p_logprobs(engine, policy):
    """T=0.7, top-p 0.9: log-probs are those of the temperature-scaled, top-p-renormalised
    distribution computed from the HF model's logits (the Engine protocol's convention)."""
    reqs = _reqs(policy) * 4
    outs = engine.generate(reqs, SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=24), torch.Generator().manual_seed(2))
    for r, o in zip(reqs, outs):
        ref = _teacher_forced(policy, r.prompt_ids, o.token_ids, temperature=0.7, top_p=0.9)
        assert torch.isfinite(ref).all()  # every sampled token is inside the nucleus
        torch.testing.assert_close(torch.tensor(o.logprobs), ref, atol=TOL, rtol=0)


# ---- issue 11 (behaviour log-probs reused as pi_old / the k1.5 reference; tests/test_behaviour_logprobs.py) ----


def test_float32_declares_logprobs_match_policy_and_collated_batch_agrees(engine, policy):
    """engine.dtype=float32 declares ``logprobs_match_policy`` (reasonzoo.pg.behaviour_is_current):
    the collated batch's behaviour log-probs at T=1 equal the trainer's forward within TOL."""
    from reasonzoo.trainer import collate
    from reasonzoo.types import Problem, RewardResult, Rollout, RolloutGroup, Segment

    assert engine.logprobs_match_policy is True
    reqs = _reqs(policy) * 3
    outs = engine.generate(reqs, SamplingParams(temperature=1.0, max_new_tokens=30), torch.Generator().manual_seed(4))
    prob = Problem(uid="p", prompt="", answer="")
    rolls = tuple(Rollout(prob, r.prompt_ids, o.token_ids, o.logprobs, o.finish_reason, (Segment(0, len(o.token_ids), 0),), "")
                  for r, o in zip(reqs, outs))
    batch = collate([RolloutGroup(prob, rolls, (RewardResult(0.0, False),) * len(rolls), (0.0,) * len(rolls))], policy.pad_token_id)
    with torch.no_grad():
        trainer = policy.token_logprobs(batch.input_ids, batch.attention_mask)
    assert batch.response_mask.sum() > 50
    assert float(((trainer - batch.behaviour_logprobs) * batch.response_mask).abs().max()) < TOL


def test_stop_strings_like_torch_engine(engine, policy):
    """Stop strings end a response (STOP, the completing token included) as in engine/torch's HF
    path, including a stop string completed by the token that reaches the length limit (STOP wins;
    row 0 below ends so)."""
    torch_engine = TorchEngine(TorchEngineConfig(fast=False), policy)
    free = torch_engine.generate(_reqs(policy), GREEDY, torch.Generator())
    # an ASCII character the second prompt's response has at position >= 2 (the byte tokenizer's
    # other ids are single UTF-8 bytes, which decode to U+FFFD alone: no stop string)
    at = next(i for i in range(2, 30) if len(policy.decode(free[1].token_ids[i : i + 1])) == 1 and free[1].token_ids[i] < 100)
    stop = policy.decode(free[1].token_ids[at : at + 1])
    params = SamplingParams(temperature=0, max_new_tokens=30, stop_strings=(stop,))
    ours, ref = engine.generate(_reqs(policy), params, torch.Generator()), torch_engine.generate(_reqs(policy), params, torch.Generator())
    assert [(o.token_ids, o.finish_reason, o.text) for o in ours] == [(o.token_ids, o.finish_reason, o.text) for o in ref]
    assert ours[1].finish_reason is FinishReason.STOP and len(ours[1].token_ids) <= at + 1
    assert ours[1].text.endswith(stop)  # the stop string is kept in the text


def test_seeded_by_generator_and_global_rng_untouched(engine, policy):
    params = SamplingParams(temperature=1.0, max_new_tokens=20)
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    state = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    a = engine.generate(_reqs(policy) * 4, params, torch.Generator().manual_seed(5))
    b = engine.generate(_reqs(policy) * 4, params, torch.Generator().manual_seed(5))
    c = engine.generate(_reqs(policy) * 4, params, torch.Generator().manual_seed(6))
    engine.sync_weights()
    assert a == b and a != c
    assert len({o.token_ids for o in a[: len(PROMPTS)]}) > 1  # sampled rows differ
    assert torch.equal(torch.get_rng_state(), state[0]) and random.getstate() == state[1]
    assert (np.random.get_state()[1] == state[2]).all()


def test_repeat_detection_cuts_like_the_in_loop_rule(engine, policy):
    """Repeat detection applied to vLLM's output gives the torch engine's in-loop result."""
    # a small rule: this random model's greedy rows hold short loops (one token 5-7 times, a 2-token block twice)
    rule = RepeatRule(max_period=8, min_repeats=2, min_length=4, min_run=4)
    torch_engine = TorchEngine(TorchEngineConfig(), policy)
    params = SamplingParams(temperature=0, max_new_tokens=40, repeat=rule)
    free = torch_engine.generate(_reqs(policy), SamplingParams(temperature=0, max_new_tokens=40), torch.Generator())
    p2 = policy.encode_prompt(PROMPTS[2])
    reqs = _reqs(policy) + [GenerationRequest(p2, prefix_ids=free[2].token_ids[:12])]  # the prefix already loops
    ours, ref = engine.generate(reqs, params, torch.Generator()), torch_engine.generate(reqs, params, torch.Generator())
    assert [(o.token_ids, o.finish_reason) for o in ours] == [(o.token_ids, o.finish_reason) for o in ref]
    assert sum(o.finish_reason is FinishReason.REPEAT for o in ours) >= 2
    for o in ours:
        assert len(o.logprobs) == len(o.token_ids)


def test_cut_repeats_precedence():
    """Unit test of the cut: first firing token, prefix counted, stop beats repeat on one token."""
    rule = RepeatRule(max_period=4, min_repeats=3, min_length=4, min_run=4)  # period 1: 4 tokens; period 2: 6 tokens
    gens = [Generation((1, 2, 5, 5, 5, 5, 9), (-0.5,) * 7, FinishReason.LENGTH),  # fires on the 6th token
            Generation((5, 5, 5, 5), (-0.5,) * 4, FinishReason.STOP),  # fires on its stopping token: STOP wins
            Generation((3, 4, 7), (-1.0, -2.0, -3.0), FinishReason.LENGTH)]  # prefix 3 4 3 4: fires on the 2nd token
    out = cut_repeats(gens, [(), (), (3, 4, 3, 4)], rule)
    assert out == [Generation((1, 2, 5, 5, 5, 5), (-0.5,) * 6, FinishReason.REPEAT), gens[1],
                   Generation((3, 4), (-1.0, -2.0), FinishReason.REPEAT)]


def test_weight_push_logprobs_match_trainer(engine, policy):
    """After an optimizer step the engine serves stale weights (log-probs off by more than TOL);
    after sync_weights its log-probs for a fixed sequence equal the trainer's within TOL, both
    teacher-forced (prompt log-probs) and sampled at T=1 from a prompt whose KV blocks were cached
    before the push (so the prefix cache must have been reset)."""
    model = policy.model
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = policy.encode_prompt("3a+4b*2c-2=a3+4=2;b2*2=4;c4-2=2;#2 " * 4)  # 141 tokens: one full KV block (128) cached
    seq = list(prompt) + list(policy.encode_response("c3*4=2;d2-3=4;#4"))

    def trainer():
        with torch.no_grad():
            return policy.token_logprobs(torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))[0]

    def sampled():  # T=1 sampled tokens from `prompt` and their recorded log-probs
        return engine.generate([GenerationRequest(prompt)] * 3, SamplingParams(max_new_tokens=20), torch.Generator().manual_seed(4))

    try:
        assert (torch.tensor(engine.score([seq])[0]) - trainer()).abs().max() < TOL
        sampled()  # caches the prompt's KV blocks under the old weights
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        (-policy.token_logprobs(torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long)).sum()).backward()
        opt.step()
        stale = (torch.tensor(engine.score([seq])[0]) - trainer()).abs().max()
        assert stale > 10 * TOL, stale  # so the check below can fail
        engine.sync_weights()
        fresh = (torch.tensor(engine.score([seq])[0]) - trainer()).abs().max()
        assert fresh < TOL, fresh
        for o in sampled():
            torch.testing.assert_close(torch.tensor(o.logprobs), _teacher_forced(policy, prompt, o.token_ids), atol=TOL, rtol=0)
    finally:
        with torch.no_grad():
            model.load_state_dict(saved)
        engine.sync_weights()


def test_bad_config_names_the_key(tiny_policy, engine):
    for cfg, key in [(VllmEngineConfig(dtype="float64"), "engine.dtype='float64': allowed values are float32"),
                     (VllmEngineConfig(max_num_seqs=0), "engine.max_num_seqs=0"),
                     (VllmEngineConfig(kv_cache_memory_bytes=-1), "engine.kv_cache_memory_bytes=-1"),
                     (VllmEngineConfig(gpu_memory_utilization=1.5), "engine.gpu_memory_utilization=1.5"),
                     (VllmEngineConfig(llm_kwargs={"dtype": "half"}), "engine.llm_kwargs.dtype: set by the engine")]:
        with pytest.raises(ValueError, match=re.escape(key)):
            check_config(cfg)
        with pytest.raises(ValueError, match=re.escape(key)):
            VllmEnginePlugin(cfg)
    # head size 16 (conftest's tiny_policy): vLLM's CPU attention kernel cannot run it; say so before starting
    with pytest.raises(ValueError, match="engine=vllm: vLLM's CPU attention supports head sizes 32, 64.*this model's is 16.*model.tiny.num_heads"):
        VllmEngine(VllmEngineConfig(), tiny_policy, engine.workdir.parent / "bad")


def test_missing_vllm_is_a_clear_error(monkeypatch, policy, tmp_path):
    """Without vLLM the plugin still loads (``reasonzoo plugins``, config validation); building
    the engine fails with the extra's install command."""
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    plugin = VllmEnginePlugin(VllmEngineConfig())
    ctx = type("Ctx", (), {"run_dir": tmp_path, "cfg": {"cache_dir": str(tmp_path / "cache")}})()
    with pytest.raises(ImportError, match="engine=vllm needs vLLM.*" + re.escape("pip install -e '.[vllm]'")):
        plugin.rz_build_engine(ctx=ctx, policy=policy)


def test_end_to_end_training_run(engine, policy, tmp_path, tiny_overrides, run_metrics):
    """reasonzoo-train with engine=vllm: rollouts and evaluations come from vLLM, weights are
    pushed after every update (rz_build_engine ... rz_run_end), the run completes, and a second
    run with the same seed gives the same metrics."""
    from reasonzoo.train import compose
    from reasonzoo.trainer import train

    cfg = compose(tiny_overrides + ["engine=vllm", "model.tiny.num_heads=2", "iterations=2", "eval.every=0"])
    summary = train(cfg, tmp_path / "a")
    recs = run_metrics(tmp_path / "a")
    assert [r["iteration"] for r in recs] == [0, 1, 2]
    for r in recs[1:]:
        assert r["response/tokens"] > 0 and "loss/k15" in r
    assert recs[-1]["policy_version"] == 2 and "eval/accuracy" in summary["final_eval"]
    train(cfg, tmp_path / "b")
    assert run_metrics(tmp_path / "b") == recs
    # the run's engine closed at rz_run_end; the module's engine still serves (teardown deferred)
    assert engine.generate(_reqs(policy)[:1], GREEDY, torch.Generator())[0].token_ids
