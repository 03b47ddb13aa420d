"""Repeat detection (§2.6.2): the rule on hand-made token lists, the incremental tracker against
the rule, the torch engine (both decode paths) stopping a looping response with REPEAT, and the
repeat penalty of the length-penalty plugins against hand-computed values."""
import random

import pytest
import torch

from reasonzoo.plugins.engine.torch import TorchEngine, TorchEngineConfig
from reasonzoo.plugins.length_penalty.k15 import K15LengthPenalty, K15LengthPenaltyConfig
from reasonzoo.plugins.length_penalty.none import NoLengthPenalty, NoLengthPenaltyConfig
from reasonzoo.repeats import RepeatRule, RepeatTracker, repeat_period
from reasonzoo.types import (FinishReason, GenerationRequest, Problem, RewardResult, Rollout, RolloutGroup,
                             SamplingParams, Segment)

RULE = RepeatRule()  # defaults: period <= 32, 3 repeats, >= 32 tokens; one token: >= 96


def test_rule_on_hand_made_lists():
    assert repeat_period([7] * 96, RULE) == 1  # one token over and over
    assert repeat_period([7] * 95, RULE) is None  # below min_run (and p >= 2 ignores runs of one token)
    assert repeat_period([1, 2] * 16, RULE) == 2  # 32 tokens of period 2
    assert repeat_period([1, 2] * 15 + [1], RULE) is None  # 31 tokens
    assert repeat_period([1, 2, 3] * 11, RULE) == 3
    assert repeat_period([1, 2, 3] * 10 + [1], RULE) is None  # 31 tokens
    block = list(range(11))
    assert repeat_period([99] + block * 3, RULE) == 11  # 3 repeats of an 11-token block (33 >= 32)
    assert repeat_period(block * 2 + block[:10], RULE) is None  # 32 < 3 * 11
    assert repeat_period(block * 3 + [5], RULE) is None  # the loop was broken by the last token
    assert repeat_period([1, 2] * 3, RepeatRule(max_period=4, min_repeats=3, min_length=6)) == 2
    assert repeat_period([7] * 6, RepeatRule(max_period=4, min_repeats=3, min_length=6, min_run=6)) == 1
    assert repeat_period([7] * 6, RepeatRule(max_period=4, min_repeats=3, min_length=6)) is None
    with pytest.raises(ValueError, match="repeat_min_repeats"):
        RepeatRule(min_repeats=1)
    with pytest.raises(ValueError, match="repeat_min_run"):
        RepeatRule(min_run=1)


#: Legitimate text with long periodic runs (issue 8 item 14): the previous rule (L >= max(3p, 16)
#: for every period) cut each of them; ``#100000000000000000`` came out as ``#10000000000000000``.
LEGIT = ["#100000000000000000", "100000000000000000", "0.00000000000000001", "|----------------|",
         "0.3333333333333333", "1/3 = 0.33333333333333333333 and 1/7 = 0.14285714285714285", "0.1212121212121212",
         "|---|---|---|---|", "| --- | --- | --- | --- |", "x = [0, 0, 0, 0, 0, 0, 0, 0]",
         "# " + "=" * 78, "1" + "0" * 60]
#: Real loops: each must fire, at the given number of characters.
LOOPS = [("!" * 200, 96), ("the the the the the the the the the ", 32), ("ab" * 40, 32),
         ("a1-4=2;" * 6, 32), ("We check the sum again. " * 4, 72), ("x" + "ho" * 30, 33)]


def _chars(text):
    from reasonzoo.policy import build_char_tokenizer

    ids = build_char_tokenizer().encode(text, add_special_tokens=False)
    assert len(ids) == len(text)  # one character = one token
    return ids


@pytest.mark.parametrize("text", LEGIT)
def test_legit_periodic_text_is_not_a_repeat(text):
    ids = _chars(text)
    assert [n for n in range(1, len(ids) + 1) if repeat_period(ids[:n], RULE)] == []
    tr = RepeatTracker(RULE, [()])  # the engines' incremental form agrees
    assert not any(bool(tr.update(torch.tensor([t]), torch.tensor([0]))[0]) for t in ids)


@pytest.mark.parametrize("text, fires_at", LOOPS)
def test_real_loops_still_stop(text, fires_at):
    ids = _chars(text)
    assert next(n for n in range(1, len(ids) + 1) if repeat_period(ids[:n], RULE)) == fires_at


def test_task_steps_are_not_repeats():
    """The built-in task's worked solutions, even degenerate all-zero ones, never fire."""
    for text in ["a0+0=0;b0+0=0;c0+0=0;d0+0=0;e0+0=0;f0+0=0;g0+0=0;h0+0=0;#0",
                 "a3*0=0;b0*1=0;c0*0=0;d0*0=0;e0*0=0;#0", "a1-4=2;b2+1=3;c3-4=4;d4*2=3;#3", "1111111111"]:
        ids = _chars(text)
        assert all(repeat_period(ids[:n], RULE) is None for n in range(1, len(ids) + 1)), text


@pytest.mark.parametrize("rule", [RepeatRule(max_period=5, min_repeats=3, min_length=6, min_run=9),
                                  RepeatRule(max_period=5, min_repeats=3, min_length=6, min_run=4),
                                  RepeatRule(max_period=6, min_repeats=2, min_length=8, min_run=20)])
def test_tracker_agrees_with_rule(rule):
    """Random rows of few distinct tokens with long runs of one token: the tracker fires exactly
    where the reference does (period 1's own threshold, periods >= 2 never on a run of one token)."""
    rng = random.Random(0)
    fired_at = set()
    for _ in range(20):
        seqs = [[rng.choice([1, 2, 3]) if rng.random() < 0.5 else 1 for _ in range(40)] for _ in range(4)]
        seqs[3][5:30] = [2] * 25  # a long run of one token
        pre = [s[:k] for s, k in zip(seqs, (0, 3, 10, 1))]
        tr = RepeatTracker(rule, pre)
        for t in range(40):
            rows = torch.tensor([i for i in range(4) if t >= len(pre[i])])
            fired = tr.update(torch.tensor([seqs[i][t] for i in rows.tolist()]), rows)
            ref = [repeat_period(seqs[i][: t + 1], rule) for i in rows.tolist()]
            assert fired.tolist() == [p is not None for p in ref]
            fired_at.update(p for p in ref if p is not None)
    assert 1 in fired_at and len(fired_at) > 1  # both kinds of firing were exercised


@pytest.mark.parametrize("fast", [True, False])
def test_engine_stops_looping_response(tiny_policy, fast):
    """The tiny random model's greedy output loops ('=' forever): with detection it stops at the
    first token (the 96th: a run of one token) where the rule fires, with REPEAT and exactly the tokens before that point."""
    eng = TorchEngine(TorchEngineConfig(fast=fast), tiny_policy)
    reqs = [GenerationRequest(tiny_policy.encode_prompt(p)) for p in ["1+2=", "3*4-5+6="]]
    off = eng.generate(reqs, SamplingParams(temperature=0, max_new_tokens=120), torch.Generator())
    on = eng.generate(reqs, SamplingParams(temperature=0, max_new_tokens=120, repeat=RULE), torch.Generator())
    for a, b in zip(off, on):
        first = next(n for n in range(1, 121) if repeat_period(a.token_ids[:n], RULE))
        assert a.finish_reason is FinishReason.LENGTH and len(a.token_ids) == 120
        assert b.finish_reason is FinishReason.REPEAT and b.token_ids == a.token_ids[:first] and first < 120
        assert b.logprobs == pytest.approx(a.logprobs[:first], abs=1e-6)
    # a continued response: the prefix counts, so the loop is caught after fewer new tokens
    pre = off[0].token_ids[:10]
    cont = eng.generate([GenerationRequest(reqs[0].prompt_ids, prefix_ids=pre)],
                        SamplingParams(temperature=0, max_new_tokens=110, repeat=RULE), torch.Generator())[0]
    assert cont.finish_reason is FinishReason.REPEAT and pre + cont.token_ids == on[0].token_ids
    # a rule longer than the output: nothing fires, behaviour as without detection
    long = eng.generate(reqs, SamplingParams(temperature=0, max_new_tokens=120, repeat=RepeatRule(min_length=121, min_run=121)), torch.Generator())
    assert long == off


def _group(reasons, correct):
    p = Problem(uid="p", prompt="x", answer="1")
    rolls = tuple(Rollout(p, (1,), (5,) * n, (0.0,) * n, r, (Segment(0, n, 0),), "") for n, r in reasons)
    return RolloutGroup(p, rolls, tuple(RewardResult(float(c), c) for c in correct))


def test_repeat_penalty_hand_values(make_ctx):
    g = _group([(10, FinishReason.STOP), (30, FinishReason.REPEAT), (20, FinishReason.LENGTH)], [True, False, False])
    none = NoLengthPenalty(NoLengthPenaltyConfig(repeat_penalty=0.5))
    assert none.rz_length_penalty(make_ctx(), [g]) == [[0.0, -0.5, 0.0]]
    # k15, w = 0.2: lambda = [0.5, -0.5, 0]; wrong ones get min(0, lambda) -> [0.1, -0.1, 0]; REPEAT -0.5
    k15 = K15LengthPenalty(K15LengthPenaltyConfig(weight=0.2, warmup_iterations=0, repeat_penalty=0.5))
    assert k15.rz_length_penalty(make_ctx(iteration=1), [g])[0] == pytest.approx([0.1, -0.6, 0.0])
    # during the length warm-up only the repeat penalty applies
    k15w = K15LengthPenalty(K15LengthPenaltyConfig(weight=0.2, warmup_iterations=5, repeat_penalty=0.5))
    assert k15w.rz_length_penalty(make_ctx(iteration=1), [g])[0] == pytest.approx([0.0, -0.5, 0.0])
    assert K15LengthPenalty(K15LengthPenaltyConfig(weight=0.2, warmup_iterations=0)).rz_length_penalty(
        make_ctx(iteration=1), [g])[0] == pytest.approx([0.1, -0.1, 0.0])


def test_repeat_config_reaches_sampling(make_ctx):
    from reasonzoo.config import validate

    assert validate(make_ctx().cfg).generation.sampling().repeat is None  # off by default
    cfg = make_ctx(["generation.repeat_detection=true", "generation.repeat_min_length=20"]).cfg
    assert validate(cfg).generation.sampling().repeat == RepeatRule(32, 3, 20)
