"""rollout/partial (§2.6.2): a response longer than one iteration's segment is completed across
iterations with exactly the tokens of one uninterrupted generation (greedy, fixed policy); each
segment carries the policy version that produced it; the token budget is honoured, continuations
first; in-flight responses survive rz_checkpoint_state / rz_load_state; a run with rollout=partial
completes end to end, and a killed one resumes to the same metrics as an uninterrupted one."""
import io

import pytest
import torch

from reasonzoo.plugins.engine.torch import TorchEngine, TorchEngineConfig
from reasonzoo.plugins.rollout.partial import Partial, PartialConfig
from reasonzoo.types import FinishReason, GenerationRequest, Problem, SamplingParams, Segment



GREEDY = SamplingParams(temperature=0, max_new_tokens=30)
PROBLEMS = [Problem(uid=f"p{i}", prompt=q, answer="0") for i, q in enumerate(["1+2=", "3*4-5+6=", "7="])]


def _run(plugin, ctx, eng, problems, k=2, sampling=GREEDY):
    out = plugin.rz_rollout(ctx=ctx, problems=problems, engine=eng, samples_per_problem=k, sampling=sampling)
    metrics = plugin.rz_iteration_end(ctx=ctx, groups=out)
    ctx.iteration += 1
    ctx.policy_version += 1
    return out, metrics


@pytest.mark.parametrize("length_ratio", [0, 1.2])  # one engine call; one call per length group (5 vs 9-token prompts)
def test_continued_equals_uninterrupted_with_versions(make_ctx, tiny_policy, length_ratio):
    ctx = make_ctx(policy=tiny_policy)
    eng = TorchEngine(TorchEngineConfig(), tiny_policy)
    ref = eng.generate([GenerationRequest(tiny_policy.encode_prompt(p.prompt)) for p in PROBLEMS[:2]], GREEDY, torch.Generator())
    calls = []
    generate = eng.generate
    eng.generate = lambda reqs, *a: calls.append(len(reqs)) or generate(reqs, *a)
    part = Partial(PartialConfig(segment_tokens=7, length_ratio=length_ratio))
    got, m = [], []
    for it in range(5):  # 7 + 7 + 7 + 7 + 2 = 30 tokens
        groups, mi = _run(part, ctx, eng, PROBLEMS[:2] if it == 0 else [])
        got += groups
        m.append(mi)
    assert [m_["rollout/groups_returned"] for m_ in m] == [0, 0, 0, 0, 2]
    assert calls[:4] == ([4] * 4 if length_ratio == 0 else [2] * 4)  # requests per engine call, iterations 1-2
    assert [m_["rollout/tokens"] for m_ in m] == [28, 28, 28, 28, 8]
    assert m[0]["rollout/frac_carried"] == 1.0 and m[4]["rollout/frac_length"] == 1.0
    assert m[3]["rollout/buffer_groups"] == 2 and m[4]["rollout/buffer_groups"] == 0
    # versions 0..4 produced the segments; at return (version 4) the oldest is 4 versions old
    assert m[4]["rollout/stale_age_max"] == 4 and m[4]["rollout/stale_age_mean"] == pytest.approx(2.5)
    assert m[4]["rollout/stale_token_frac"] == pytest.approx(28 / 30)
    for g, want in zip(got, ref):
        assert g.problem in PROBLEMS
        for r in g.rollouts:
            assert r.response_ids == want.token_ids and r.finish_reason is FinishReason.LENGTH
            assert r.logprobs == pytest.approx(want.logprobs, abs=1e-5)
            assert r.segments == (Segment(0, 7, 0), Segment(7, 14, 1), Segment(14, 21, 2), Segment(21, 28, 3), Segment(28, 30, 4))
            assert r.text == tiny_policy.decode(want.token_ids)


def test_short_responses_return_at_once_with_repeat(make_ctx, tiny_policy):
    """With repeat detection the looping greedy responses end (REPEAT) within one segment."""
    from reasonzoo.repeats import RepeatRule

    ctx = make_ctx(policy=tiny_policy)
    eng = TorchEngine(TorchEngineConfig(), tiny_policy)
    params = SamplingParams(temperature=0, max_new_tokens=100, repeat=RepeatRule(min_run=32))  # one token 32x: inside a segment
    groups, m = _run(Partial(PartialConfig(segment_tokens=40)), ctx, eng, PROBLEMS[:2], sampling=params)
    assert len(groups) == 2 and m["rollout/frac_repeat"] == 1.0 and m["rollout/stale_age_max"] == 0
    assert all(r.finish_reason is FinishReason.REPEAT and r.segments == (Segment(0, r.length, 0),)
               for g in groups for r in g.rollouts)


def test_budget_continuations_first(make_ctx, tiny_policy):
    ctx = make_ctx(policy=tiny_policy)
    eng = TorchEngine(TorchEngineConfig(), tiny_policy)
    part = Partial(PartialConfig(segment_tokens=7, tokens_per_iteration=28))  # two groups of k=2
    _, m1 = _run(part, ctx, eng, PROBLEMS)
    assert m1["rollout/problems_skipped"] == 1 and m1["rollout/requests"] == 4 and m1["rollout/tokens"] == 28
    _, m2 = _run(part, ctx, eng, PROBLEMS)  # the budget goes to the two carried-over groups
    assert m2["rollout/problems_skipped"] == 3 and m2["rollout/buffer_groups"] == 2
    assert [g["problem"].uid for g in part.buffer] == ["p0", "p1"]
    with pytest.raises(ValueError, match="rollout.tokens_per_iteration=10"):
        Partial(PartialConfig(segment_tokens=7, tokens_per_iteration=10)).rz_rollout(
            ctx=ctx, problems=PROBLEMS, engine=eng, samples_per_problem=2, sampling=GREEDY)
    with pytest.raises(ValueError, match="rollout.segment_tokens=0"):
        Partial(PartialConfig(segment_tokens=0))


def test_state_round_trip_with_in_flight_responses(make_ctx, tiny_policy):
    ctx = make_ctx(policy=tiny_policy)
    eng = TorchEngine(TorchEngineConfig(), tiny_policy)
    sampled = SamplingParams(temperature=1.0, max_new_tokens=30)
    a = Partial(PartialConfig(segment_tokens=7))
    _run(a, ctx, eng, PROBLEMS[:2], sampling=sampled)
    _run(a, ctx, eng, PROBLEMS[2:], sampling=sampled)
    state = a.rz_checkpoint_state(ctx=ctx)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    b = Partial(PartialConfig(segment_tokens=7))
    b.rz_load_state(ctx=ctx, state=torch.load(buf, weights_only=False))
    assert b.rz_checkpoint_state(ctx=ctx) == state and len(b.buffer) == 3
    it, ver = ctx.iteration, ctx.policy_version
    outs = []
    for plugin in (a, b):
        ctx.iteration, ctx.policy_version = it, ver
        outs.append([_run(plugin, ctx, eng, [], sampling=sampled)[0] for _ in range(4)])
    assert outs[0] == outs[1] and sum(len(x) for x in outs[0]) == 3
    with pytest.raises(KeyError, match="rollout/partial"):
        Partial(PartialConfig()).rz_load_state(ctx=ctx, state={})


PARTIAL = ["rollout=partial", "rollout.segment_tokens=8", "rollout.tokens_per_iteration=256"]  # new groups start while others continue


def test_partial_run_end_to_end(tmp_path, tiny_overrides, run_metrics):
    from reasonzoo.train import compose
    from reasonzoo.trainer import train

    train(compose(tiny_overrides + PARTIAL + ["iterations=4", "eval.every=0", "generation.repeat_detection=true"]), tmp_path)
    recs = run_metrics(tmp_path)[1:]
    assert [r["iteration"] for r in recs] == [1, 2, 3, 4]
    assert all("rollout/tokens" in r and "rollout/buffer_groups" in r for r in recs)
    trained = [r for r in recs if r["response/groups"] > 0]
    assert trained and all("loss/k15" in r for r in trained)
    assert all("loss/k15" not in r for r in recs if r["response/groups"] == 0)
    assert recs[-1]["policy_version"] == len(trained)  # only iterations with groups update
    assert max(r["rollout/stale_age_max"] for r in recs) >= 1  # some returned group spanned iterations


def test_partial_kill_and_resume_matches_uninterrupted(tiny_overrides, kill_and_resume, run_metrics):
    def in_flight_saved(killed):
        state = torch.load(killed / "checkpoints" / "iter_000002" / "state.pt", weights_only=False)
        assert state["plugins"]["rollout/partial"], "in-flight responses are checkpointed"

    ref, killed = kill_and_resume(tiny_overrides + PARTIAL + ["iterations=5", "eval.every=0", "sampler=prioritized"],
                                  before_resume=in_flight_saved)
    assert run_metrics(killed) == run_metrics(ref)
