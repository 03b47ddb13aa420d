"""Reusing the engine's behaviour log-probs as π_old / k1.5's reference (issue 11):
``reasonzoo.pg.behaviour_is_current`` on hand-built batches, the engines' declarations, and the
losses' ``rz_prepare_update``: no forward when reusing, the same update as the forward path on a
real rollout batch of the torch engine (parameters after ``reasonzoo.trainer.update`` within
``ATOL``), the forward kept at other temperatures / top-p and for stale partial-rollout segments.

The vLLM engine's agreement with the trainer's forward is tested in ``tests/test_engine_vllm.py``
(``-m vllm``), its declaration here without starting it."""
import copy
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from reasonzoo.config import validate
from reasonzoo.pg import behaviour_is_current
from reasonzoo.plugins.engine.torch import TorchEngine, TorchEngineConfig
from reasonzoo.plugins.engine.vllm import VllmEngine, VllmEngineConfig
from reasonzoo.plugins.loss.grpo import GRPOLoss, GRPOLossConfig
from reasonzoo.plugins.loss.k15 import K15Loss, K15LossConfig
from reasonzoo.plugins.loss.ppo import PPOLoss, PPOLossConfig
from reasonzoo.plugins.loss.reinforce import ReinforceLoss, ReinforceLossConfig
from reasonzoo.plugins.loss.rloo import RLOOLoss, RLOOLossConfig
from reasonzoo.registry import make_manager
from reasonzoo.trainer import collate, make_rollout, update
from reasonzoo.types import (FinishReason, GenerationRequest, Problem, RewardResult, Rollout, RolloutGroup,
                             SamplingParams, Segment)

#: Largest |parameter difference| after a multi-step update, behaviour log-probs vs the forward
#: (the two π_old differ by ~1e-6 in fp32; the update moves parameters by ~1e-2).
ATOL = 1e-5
#: Largest |behaviour − forward| log-prob on a response token of the torch engine (fp32).
LOGP_TOL = 1e-5
PROMPTS = ["1+2=", "3*4-5=", "7-2*2=", "9+9="]
MULTI = ["train.minibatch_size=4", "train.max_grad_norm=0"]  # 16 rows -> 4 optimizer steps


class CountingPolicy:
    """Wraps a Policy; counts ``token_logprobs`` calls (the forwards the reuse saves)."""

    def __init__(self, policy):
        self._policy, self.calls = policy, 0

    def token_logprobs(self, input_ids, attention_mask):
        self.calls += 1
        return self._policy.token_logprobs(input_ids, attention_mask)

    def __getattr__(self, name):
        return getattr(self._policy, name)


def _ctx(make_ctx, policy, overrides=(), engine=True):
    ctx = make_ctx(list(overrides), policy=CountingPolicy(policy))
    ctx.engine = TorchEngine(TorchEngineConfig(), policy) if engine else None
    return ctx


def _rollout_batch(ctx, k=4, seed=0, reward=lambda r: float(len(r.response_ids) % 2 == 0)):
    """A real batch: the torch engine samples k responses per prompt at T = 1 (current version);
    by default rewards 1 for an even response length, so groups have varied returns."""
    policy = ctx.policy
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=12)
    groups = []
    for i, text in enumerate(PROMPTS):
        prob = Problem(uid=f"p{i}", prompt=text, answer="0")
        prompt = policy.encode_prompt(text)
        gens = ctx.engine.generate([GenerationRequest(prompt)] * k, params, torch.Generator().manual_seed(seed + i))
        rolls = tuple(make_rollout(ctx, prob, prompt, g) for g in gens)
        rewards = tuple(RewardResult(reward(r), False) for r in rolls)
        groups.append(RolloutGroup(prob, rolls, rewards, (0.0,) * k))
    return collate(groups, policy.pad_token_id)


def _hand_batch(policy, versions=((0, 0),)):
    """Two responses; each response's segments given as (policy_version of the first half,
    of the second half)."""
    prob = Problem(uid="p", prompt="1+2=", answer="3")
    prompt = policy.encode_prompt(prob.prompt)
    rolls = []
    for text, (v1, v2) in zip(["1+2=3;#3", "#7;#7"], list(versions) * 2):
        ids = policy.encode_response(text)
        h = len(ids) // 2
        rolls.append(Rollout(prob, prompt, ids, (-1.0,) * len(ids), FinishReason.STOP,
                             (Segment(0, h, v1), Segment(h, len(ids), v2)), text))
    return collate([RolloutGroup(prob, tuple(rolls), (RewardResult(1.0, True), RewardResult(0.0, False)), (0.0, 0.0))],
                   policy.pad_token_id)


def _vllm(dtype, policy):
    """A VllmEngine that is never started: only its declaration is read."""
    eng = object.__new__(VllmEngine)
    eng.cfg, eng.policy = VllmEngineConfig(dtype=dtype), policy
    return eng


# ---- the predicate ---------------------------------------------------------------------------------


def test_predicate_on_hand_built_batches(make_ctx, tiny_policy):
    batch = _hand_batch(tiny_policy)
    ctx = _ctx(make_ctx, tiny_policy)
    assert behaviour_is_current(ctx, batch)  # T = 1, top-p = 1, version 0 = current, fp32 torch engine
    for over in (["generation.temperature=0.7"], ["generation.top_p=0.9"], ["generation.temperature=1.1"]):
        assert not behaviour_is_current(_ctx(make_ctx, tiny_policy, over), batch), over
    ctx.policy_version = 1  # every token is now from an older policy
    assert not behaviour_is_current(ctx, batch)
    # a stale first segment (version 0) of a response continued by version 1 (partial rollouts)
    stale = _hand_batch(tiny_policy, versions=((0, 1),))
    assert not behaviour_is_current(ctx, stale)
    current_only = stale.response_mask * (stale.token_versions == 1)  # exclude_stale_segments' mask
    assert current_only.sum() > 0 and behaviour_is_current(ctx, stale, current_only)
    # padding and prompt columns (version -1) never count: only the mask's tokens do
    assert (stale.token_versions[stale.response_mask == 0] == -1).all()


def test_engine_declarations(make_ctx, tiny_policy):
    batch = _hand_batch(tiny_policy)
    ctx = _ctx(make_ctx, tiny_policy)
    assert ctx.engine.logprobs_match_policy is True
    for engine, expected in [(None, False), (SimpleNamespace(), False), (SimpleNamespace(logprobs_match_policy=False), False),
                             (_vllm("float32", tiny_policy), True), (_vllm("bfloat16", tiny_policy), False),
                             (_vllm("float16", tiny_policy), False), (_vllm("auto", tiny_policy), False)]:
        ctx.engine = engine
        assert behaviour_is_current(ctx, batch) is expected, engine
    half = copy.deepcopy(tiny_policy)
    half.model.to(torch.bfloat16)
    assert TorchEngine(TorchEngineConfig(), half).logprobs_match_policy is False
    assert _vllm("float32", half).logprobs_match_policy is False  # fp32 engine, bf16 trainer: they differ


@pytest.mark.parametrize("loss", ["k15", "grpo", "rloo", "reinforce", "ppo"])
def test_bad_value_names_the_key(loss):
    from reasonzoo.registry import PluginError, build_plugins
    from reasonzoo.train import compose

    with pytest.raises(PluginError, match=f"loss.reuse_behaviour_logprobs: invalid value for plugin loss/{loss}"):
        build_plugins(compose([f"loss={loss}", "loss.reuse_behaviour_logprobs=maybe"]))


# ---- prepare_update: which path runs -----------------------------------------------------------------

LOSSES = {
    "k15": (lambda **kw: K15Loss(K15LossConfig(**kw)), "k15/ref_logprob"),
    "grpo": (lambda **kw: GRPOLoss(GRPOLossConfig(**kw)), "pg/old_logprob"),
    "rloo": (lambda **kw: RLOOLoss(RLOOLossConfig(**kw)), "pg/old_logprob"),
    "reinforce": (lambda **kw: ReinforceLoss(ReinforceLossConfig(**kw)), "pg/old_logprob"),
}


def _prepared(make_ctx, policy, name, overrides=MULTI, batch=None, version=0, **kw):
    make, key = LOSSES[name]
    ctx = _ctx(make_ctx, policy, overrides)
    ctx.policy_version = version
    loss = make(**kw)
    with torch.no_grad():
        out = loss.rz_prepare_update(ctx, _rollout_batch(ctx) if batch is None else batch)
    return out.get(key), ctx.policy.calls, loss.reused_behaviour


@pytest.mark.parametrize("name", list(LOSSES))
def test_prepare_reuses_without_a_forward_and_agrees_with_it(make_ctx, tiny_policy, name):
    ctx = _ctx(make_ctx, tiny_policy, MULTI)
    batch = _rollout_batch(ctx)
    reused, calls, flag = _prepared(make_ctx, tiny_policy, name, batch=batch)
    assert (calls, flag) == (0, True)
    forward, calls, flag = _prepared(make_ctx, tiny_policy, name, batch=batch, reuse_behaviour_logprobs=False)
    assert (calls, flag) == (1, False)
    if name != "k15":
        reused, forward = reused * batch.response_mask, forward * batch.response_mask  # pad columns: masked out
    assert batch.response_mask.sum() > 20
    torch.testing.assert_close(reused, forward, atol=LOGP_TOL * (batch.response_mask.sum(-1).max() if name == "k15" else 1), rtol=0)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("over", [["generation.temperature=0.7"], ["generation.top_p=0.9"]])
def test_prepare_keeps_the_forward_when_sampling_is_not_the_policy(make_ctx, tiny_policy, name, over):
    _, calls, flag = _prepared(make_ctx, tiny_policy, name, MULTI + over)
    assert (calls, flag) == (1, False)


@pytest.mark.parametrize("name", list(LOSSES))
def test_partial_rollouts_keep_the_forward(make_ctx, tiny_policy, name):
    """Stale segments (version 0) in a batch trained at version 1: the forward runs; with
    exclude_stale_segments they leave the loss and the current tokens' behaviour log-probs are
    reused."""
    stale, steps = _hand_batch(tiny_policy, versions=((0, 1),)), ["train.minibatch_size=1"]  # 2 rows: 2 steps
    _, calls, flag = _prepared(make_ctx, tiny_policy, name, steps, batch=stale, version=1)
    assert (calls, flag) == (1, False)
    ref, calls, flag = _prepared(make_ctx, tiny_policy, name, steps, batch=stale, version=1, exclude_stale_segments=True)
    assert (calls, flag) == (0, True)
    if name == "k15":  # the hand batch's behaviour log-probs are all -1: ref = -(current tokens)
        assert ref.tolist() == (-(stale.response_mask * (stale.token_versions == 1)).sum(-1)).tolist()


def test_single_step_needs_neither(make_ctx, tiny_policy):
    for name in LOSSES:
        out, calls, flag = _prepared(make_ctx, tiny_policy, name, ["train.minibatch_size=64"])
        assert (out, calls, flag) == (None, 0, False), name


def test_ppo_reuses_pi_old_but_keeps_its_critic_forward(make_ctx, tiny_policy):
    ctx = _ctx(make_ctx, tiny_policy, MULTI)
    batch = _rollout_batch(ctx)
    for reuse, want in [(True, 0), (False, 1)]:
        loss = PPOLoss(PPOLossConfig(reuse_behaviour_logprobs=reuse))
        loss.rz_trainable_parameters(ctx, tiny_policy)
        ctx.policy.calls = 0
        with torch.no_grad():
            out = loss.rz_prepare_update(ctx, batch)
        assert ctx.policy.calls == want and loss.reused_behaviour is reuse
        assert out["ppo/old_value"].shape == batch.response_mask.shape  # V_old: the critic's own forward
        m = batch.response_mask
        torch.testing.assert_close(out["pg/old_logprob"] * m, batch.behaviour_logprobs * m, atol=LOGP_TOL, rtol=0)


# ---- the whole update: same parameters either way ------------------------------------------------------


def _update(make_ctx, policy, batch, plugin, overrides=MULTI):
    policy = copy.deepcopy(policy)
    ctx = _ctx(make_ctx, policy, overrides)
    ctx.hook = make_manager({"loss": plugin}).hook
    ctx.optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.5)
    metrics = update(ctx, batch, validate(ctx.cfg))
    return [p.detach().clone() for p in policy.model.parameters()], metrics, ctx.policy.calls


@pytest.mark.parametrize("name", ["k15", "grpo"])
@pytest.mark.parametrize("epochs", [1, 2])
def test_update_with_reuse_equals_the_forward_path(make_ctx, tiny_policy, name, epochs):
    over = MULTI + [f"train.epochs={epochs}"]
    batch = _rollout_batch(_ctx(make_ctx, tiny_policy))
    make = LOSSES[name][0]
    a, ma, calls_a = _update(make_ctx, tiny_policy, batch, make(), over)
    b, mb, calls_b = _update(make_ctx, tiny_policy, batch, make(reuse_behaviour_logprobs=False), over)
    steps = 4 * epochs
    assert calls_a == steps * 2 and calls_b == steps * 2 + 1  # 2 micro-batches per step; + the prepare forward
    assert ma["loss/reused_behaviour_logprobs"] == 1.0 and mb["loss/reused_behaviour_logprobs"] == 0.0
    before = list(tiny_policy.model.parameters())
    assert max(float((p - q).abs().max()) for p, q in zip(a, (p.detach() for p in before))) > 1e-3  # the update moved the policy
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, atol=ATOL, rtol=0)
    # the comparison can fail: behaviour log-probs off by 0.05 per token give another update
    bad = replace(batch, behaviour_logprobs=batch.behaviour_logprobs - 0.05)
    c, _, _ = _update(make_ctx, tiny_policy, bad, make(), over)
    assert max(float((p - q).abs().max()) for p, q in zip(c, b)) > 10 * ATOL


def test_update_at_another_temperature_runs_the_forward(make_ctx, tiny_policy):
    batch = _rollout_batch(_ctx(make_ctx, tiny_policy))
    _, metrics, calls = _update(make_ctx, tiny_policy, batch, K15Loss(K15LossConfig()), MULTI + ["generation.temperature=0.8"])
    assert metrics["loss/reused_behaviour_logprobs"] == 0.0 and calls == 4 * 2 + 1


# ---- end to end: the metric says which path ran ------------------------------------------------------


def test_training_runs_report_the_path(tmp_path, tiny_overrides, run_metrics):
    """Sync rollouts at T = 1 (4 optimizer steps): every update reuses. Partial rollouts: an
    update whose groups hold stale segments (``rollout/stale_token_frac`` > 0) runs the forward,
    one without reuses. The length reward from iteration 1 makes returns vary within groups
    (the 10-step warm-up answers nothing correctly; all-equal returns would take the forward)."""
    from reasonzoo.train import compose
    from reasonzoo.trainer import train

    base = tiny_overrides + ["iterations=4", "eval.every=0", "eval.before=false", "checkpoint.keep=0",
                             "train.minibatch_size=4", "length_penalty.warmup_iterations=0"]
    train(compose(base), tmp_path / "sync")
    recs = run_metrics(tmp_path / "sync")[1:]
    assert [r["loss/reused_behaviour_logprobs"] for r in recs] == [1.0] * 4
    train(compose(base + ["rollout=partial", "rollout.segment_tokens=8", "rollout.tokens_per_iteration=256"]),
          tmp_path / "partial")
    recs = [r for r in run_metrics(tmp_path / "partial")[1:] if r["response/groups"] > 0]
    seen = [(r["rollout/stale_token_frac"] > 0, r["loss/reused_behaviour_logprobs"]) for r in recs]
    assert sorted(set(seen)) == [(False, 1.0), (True, 0.0)], seen  # both kinds of iteration, each on its path


def test_k15_with_every_advantage_zero_keeps_the_forward(make_ctx, tiny_policy):
    """All returns equal: the exact k1.5 update is zero; k15 takes the forward, which keeps it
    zero under AdamW (whose first step g / (|g| + eps) would turn any ~1e-6 difference between
    the engine's log-probs and the trainer's into lr-sized steps). GRPO needs no such guard: a
    zero advantage zeroes its surrogate's gradient whatever π_old is."""
    batch = _rollout_batch(_ctx(make_ctx, tiny_policy), reward=lambda r: 1.0)
    out, calls, flag = _prepared(make_ctx, tiny_policy, "k15", batch=batch)
    assert (calls, flag) == (1, False)
    for name in ("k15", "grpo"):
        policy = copy.deepcopy(tiny_policy)
        ctx = _ctx(make_ctx, policy, MULTI)
        ctx.hook = make_manager({"loss": LOSSES[name][0]()}).hook
        ctx.optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-3, weight_decay=0.0)
        before = [p.detach().clone() for p in policy.model.parameters()]
        metrics = update(ctx, batch, validate(ctx.cfg))
        assert metrics["loss/reused_behaviour_logprobs"] == (1.0 if name == "grpo" else 0.0)
        assert all(torch.equal(a, b) for a, b in zip(before, policy.model.parameters())), name
