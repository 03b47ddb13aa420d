"""How every loss treats samples from an older policy (issue 12): ``loss.stale`` = ``ignore``,
``exclude`` or ``truncated_is`` on hand-built batches with known token versions and behaviour
log-probs, each loss and its gradient against a computation written out here; with no stale
token the three choices give the same loss and gradient bit for bit.

The batch (policy version 2 is being updated; μ = behaviour log-prob, π_θi = the forward at the
iteration's start weights; behaviour log-probs are set to log π_θi − log r so each stale token's
ratio π_θi/μ is the r chosen here)::

    row 0 "3#3"       4 tokens, versions 1 1 2 2          r = 0.5, 3.0 on its stale tokens
    row 1 "#4"        3 tokens, all version 2
    row 2 "1+2=3;#3"  9 tokens, versions 0 0 0 0 2 2 2 2 2   r = 1.5 on each stale token
    row 3 "#9"        3 tokens, all version 2

Per token (policy-gradient losses) with C = 2: w = 0.5, 2 (the cap binds on 3.0), 1.5 x 4.
Per row (k1.5): w_0 = min(0.5·3, 2) = 1.5, w_2 = min(1.5⁴ = 5.06, 2) = 2 (binds).
"""
import copy
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from reasonzoo.pg import STALE, stale_choice, truncated_is_weights
from reasonzoo.plugins.loss.grpo import GRPOLoss, GRPOLossConfig
from reasonzoo.plugins.loss.k15 import K15Loss, K15LossConfig
from reasonzoo.plugins.loss.ppo import PPOLoss, PPOLossConfig
from reasonzoo.plugins.loss.reinforce import ReinforceLoss, ReinforceLossConfig
from reasonzoo.plugins.loss.rest import ReSTLoss, ReSTLossConfig
from reasonzoo.plugins.loss.rloo import RLOOLoss, RLOOLossConfig
from reasonzoo.testing import scored_group
from reasonzoo.trainer import collate

TEXTS = ["3#3", "#4", "1+2=3;#3", "#9"]
REWARDS = [1.0, 0.0, 1.0, 0.0]
VERSION = 2  # ctx.policy_version: the policy being updated
VERSIONS = [[1, 1, 2, 2], 2, [0, 0, 0, 0, 2, 2, 2, 2, 2], 2]
RATIOS = {(0, 0): 0.5, (0, 1): 3.0, **{(2, j): 1.5 for j in range(4)}}  # (row, response token) -> π_θi/μ
CAP = 2.0
MULTI = ["train.minibatch_size=2"]  # 4 rows, 2 optimizer steps: π_θi from the prepare forward
SINGLE = ["train.minibatch_size=64"]  # one step: the loss's own forward is π_θi

PG = {
    "grpo": lambda **kw: GRPOLoss(GRPOLossConfig(**kw)),
    "reinforce": lambda **kw: ReinforceLoss(ReinforceLossConfig(**kw)),
    "rloo": lambda **kw: RLOOLoss(RLOOLossConfig(**kw)),
    "rest": lambda **kw: ReSTLoss(ReSTLossConfig(**kw)),
}
ALL = {**PG, "k15": lambda **kw: K15Loss(K15LossConfig(**kw)),
       "ppo": lambda **kw: PPOLoss(PPOLossConfig(**kw))}


class CountingPolicy:
    """Wraps a Policy; counts ``token_logprobs`` calls."""

    def __init__(self, policy):
        self._policy, self.calls = policy, 0

    def token_logprobs(self, input_ids, attention_mask):
        self.calls += 1
        return self._policy.token_logprobs(input_ids, attention_mask)

    def __getattr__(self, name):
        return getattr(self._policy, name)


def _batch(policy, ratios=RATIOS, versions=VERSIONS):
    """The module docstring's batch: behaviour log-probs log π_θi − log r on stale tokens, log π_θi
    on current ones (what an engine running π_θi records)."""
    plain = collate([scored_group(policy, REWARDS, TEXTS, versions=versions)], policy.pad_token_id)
    with torch.no_grad():
        lp0 = policy.token_logprobs(plain.input_ids, plain.attention_mask)  # (N, T-1) at θ_i
    logprobs = []
    for i in range(len(TEXTS)):
        cols = plain.response_mask[i].nonzero().flatten()
        logprobs.append([float(lp0[i, c]) - math.log(ratios.get((i, j), 1.0)) for j, c in enumerate(cols.tolist())])
    batch = collate([scored_group(policy, REWARDS, TEXTS, versions=versions, logprobs=logprobs)], policy.pad_token_id)
    return batch, lp0


def _stale_mask(batch):
    return (batch.response_mask > 0) & (batch.token_versions < VERSION)


def _ctx(make_ctx, policy, overrides):
    """A context updating version 2, with an engine that declares its log-probs equal to the
    trainer's (so only staleness can stop the behaviour log-probs standing in for π_θi)."""
    ctx = make_ctx(list(overrides), policy=CountingPolicy(policy))
    ctx.policy_version = VERSION
    ctx.engine = SimpleNamespace(logprobs_match_policy=True)
    return ctx


def _perturb(policy, seed=1, scale=0.05):
    """Move θ away from θ_i (so ρ = π_θ/π_θi != 1 and the clip and the KL-like terms act)."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in policy.model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def _loss_and_grad(plugin, ctx, batch, perturb=True, critic=False):
    """rz_prepare_update at θ_i, then (θ moved when ``perturb``) rz_loss on the whole batch:
    ``(LossOutput, gradient of the policy's parameters)``."""
    policy = ctx.policy._policy
    if critic:
        plugin.rz_trainable_parameters(ctx, policy)
    with torch.no_grad():
        extras = plugin.rz_prepare_update(ctx, batch)
    if perturb:
        _perturb(policy)
    out = plugin.rz_loss(ctx, replace(batch, extras=extras))
    grads = torch.autograd.grad(out.loss, list(policy.model.parameters()), allow_unused=True)
    return out, [torch.zeros_like(p) if g is None else g for p, g in zip(policy.model.parameters(), grads)]


# ---- the option itself -------------------------------------------------------------------------------


def test_scored_group_sets_versions_and_behaviour_logprobs(tiny_policy):
    batch, lp0 = _batch(tiny_policy)
    resp = batch.response_mask > 0
    assert [int(x) for x in resp.sum(-1)] == [4, 3, 9, 3]
    assert batch.token_versions[0][resp[0]].tolist() == [1, 1, 2, 2]
    assert batch.token_versions[2][resp[2]].tolist() == [0] * 4 + [2] * 5
    assert (batch.token_versions[~resp] == -1).all()
    ratio = torch.exp(lp0 - batch.behaviour_logprobs)[resp]
    expected = torch.tensor([RATIOS.get((i, j), 1.0) for i in range(4) for j in range(int(resp[i].sum()))])
    torch.testing.assert_close(ratio, expected, rtol=1e-5, atol=0)
    g = scored_group(tiny_policy, [1.0], ["#4"], versions=[[3, 4, 4]])
    assert [(s.start, s.end, s.policy_version) for s in g.rollouts[0].segments] == [(0, 1, 3), (1, 3, 4)]
    with pytest.raises(ValueError, match="has 3 response tokens but 2 versions"):
        scored_group(tiny_policy, [1.0], ["#4"], versions=[[3, 4]])


def test_defaults_alias_and_bad_values():
    for name, make in ALL.items():
        loss = make()
        stale = loss.stale if name == "k15" else loss.s["stale"]
        assert stale == ("ignore" if name == "rest" else "truncated_is"), name
        old = make(exclude_stale_segments=True)  # the old key keeps working: stale = exclude
        assert (old.stale if name == "k15" else old.s["stale"]) == "exclude", name
        with pytest.raises(ValueError, match=r"loss.exclude_stale_segments=true .* conflicts with loss.stale="):
            make(exclude_stale_segments=True, stale="ignore" if name != "rest" else "truncated_is")
        with pytest.raises(ValueError, match=r"loss.stale='sometimes': allowed values are ignore, exclude, truncated_is"):
            make(stale="sometimes")
        with pytest.raises(ValueError, match=r"loss.stale_is_cap=0.0: out of range; allowed: > 0"):
            make(stale_is_cap=0.0)
    assert STALE == ("ignore", "exclude", "truncated_is")
    assert stale_choice(GRPOLossConfig(stale="exclude", exclude_stale_segments=True), "truncated_is") == ("exclude", 2.0)


@pytest.mark.parametrize("name", list(ALL))
def test_config_errors_name_the_key(name):
    from reasonzoo.registry import PluginError, build_plugins
    from reasonzoo.train import compose

    with pytest.raises(PluginError, match=rf"loss.stale_is_cap=0.0: out of range; allowed: > 0 \(plugin loss/{name}\)"):
        build_plugins(compose([f"loss={name}", "loss.stale_is_cap=0"]))
    with pytest.raises(PluginError, match=f"loss={name}: loss.stale='never': allowed values are ignore, exclude, truncated_is"):
        build_plugins(compose([f"loss={name}", "loss.stale=never"]))
    build_plugins(compose([f"loss={name}", "loss.exclude_stale_segments=true"]))  # the old key still composes


def test_truncated_is_weights_hand_values():
    prox = torch.tensor([[0.0, -1.0, -2.0, -0.5]])
    behaviour = prox - torch.log(torch.tensor([[0.5, 3.0, 1.5, 7.0]]))
    stale = torch.tensor([[True, True, True, False]])
    w, stats = truncated_is_weights(prox, behaviour, stale, 2.0)
    torch.testing.assert_close(w, torch.tensor([[0.5, 2.0, 1.5, 1.0]]), rtol=1e-6, atol=0)
    assert stats["stale_is_weight_mean"] == pytest.approx((0.5 + 2.0 + 1.5) / 3, rel=1e-6)
    assert stats["stale_is_clipped_frac"] == pytest.approx(1 / 3)
    prox.requires_grad_(True)
    assert not truncated_is_weights(prox, behaviour, stale, 2.0)[0].requires_grad  # no gradient through w
    w, stats = truncated_is_weights(prox, behaviour, torch.zeros_like(stale), 2.0)
    assert torch.equal(w, torch.ones_like(w)) and stats == {"stale_is_weight_mean": 1.0, "stale_is_clipped_frac": 0.0}


# ---- policy-gradient losses against the formula written out ----------------------------------------------


def _advantages(name):
    r = torch.tensor(REWARDS)
    if name == "grpo":  # (r − mean) / (unbiased std + 1e-6)
        return (r - 0.5) / (math.sqrt(1 / 3) + 1e-6)
    if name == "reinforce":
        return r - 0.5
    if name == "rloo":  # r − mean of the other three
        return torch.tensor([1 - 1 / 3, 0 - 2 / 3, 1 - 1 / 3, 0 - 2 / 3])
    return torch.ones(4)  # rest


def _hand_pg(name, policy, batch, lp0, choice):
    """The plugin's loss written out: per token −min(ρA, clip(ρ, 0.8, 1.2)A) (grpo), −ρA (reinforce,
    rloo), −log π (rest, row 0 only: the first correct response of highest return); ρ = π_θ/π_θi;
    truncated_is multiplies stale tokens' terms by min(π_θi/μ, 2); exclude drops them; then the
    loss's aggregation (grpo: mean over rows of the token mean; reinforce, rloo: mean over rows of
    the token sum; rest: token mean)."""
    logp = policy.token_logprobs(batch.input_ids, batch.attention_mask)
    a = _advantages(name)[:, None]
    rho = torch.exp(logp - lp0)
    if name == "grpo":
        term = -torch.minimum(rho * a, rho.clamp(0.8, 1.2) * a)
    elif name == "rest":
        term = -logp
    else:
        term = -rho * a
    mask = batch.response_mask.clone()
    if name == "rest":
        mask[1:] = 0
    stale = _stale_mask(batch)
    if choice == "exclude":
        mask = mask * ~stale
    if choice == "truncated_is":
        w = torch.where(stale, torch.exp(lp0 - batch.behaviour_logprobs).clamp(max=CAP), torch.ones_like(lp0))
        term = term * w
    rows = [(term[i] * mask[i]).sum() / (mask[i].sum() if name == "grpo" else 1.0) for i in range(4) if mask[i].sum() > 0]
    if name == "rest":
        return (term * mask).sum() / mask.sum()
    return torch.stack(rows).mean()


@pytest.mark.parametrize("name", list(PG))
@pytest.mark.parametrize("choice", STALE)
@pytest.mark.parametrize("steps", ["multi", "single"])
def test_pg_loss_and_gradient_by_hand(make_ctx, tiny_policy, name, choice, steps):
    batch, lp0 = _batch(tiny_policy)
    policy = copy.deepcopy(tiny_policy)
    ctx = _ctx(make_ctx, policy, MULTI if steps == "multi" else SINGLE)
    out, grads = _loss_and_grad(PG[name](stale=choice), ctx, batch, perturb=steps == "multi")
    hand = _hand_pg(name, policy, batch, lp0, choice)
    hand_grads = torch.autograd.grad(hand, list(policy.model.parameters()))
    torch.testing.assert_close(out.loss, hand, rtol=1e-5, atol=1e-7)
    assert max(float(g.abs().max()) for g in hand_grads) > 1e-3
    for g, h in zip(grads, hand_grads):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-7)
    m = out.metrics
    n_cand = 4 if name == "rest" else 19  # rest: row 0 only (2 of its 4 tokens stale)
    assert m["loss/stale_frac"] == pytest.approx((2 if name == "rest" else 6) / n_cand)
    if choice == "truncated_is":
        ws = [0.5, 2.0] if name == "rest" else [0.5, 2.0, 1.5, 1.5, 1.5, 1.5]
        assert m["loss/stale_is_weight_mean"] == pytest.approx(sum(ws) / len(ws), rel=1e-5)
        assert m["loss/stale_is_clipped_frac"] == pytest.approx(1 / len(ws))
    else:
        assert "loss/stale_is_weight_mean" not in m and "loss/stale_is_clipped_frac" not in m


@pytest.mark.parametrize("name", ["grpo", "rloo"])
@pytest.mark.parametrize("steps", ["multi", "single"])
def test_weight_scales_the_stale_gradient_only(make_ctx, tiny_policy, name, steps):
    """Every stale token at the same ratio r: the gradient is G_current + min(r, C)·G_stale (w a
    constant: no gradient through it), so r = 1 gives ignore's, r = 1.5 and r = 0.5 lie
    symmetrically around it, and r = 3 gives r = 2's (the cap binds)."""
    def grad(r, choice="truncated_is"):
        batch, _ = _batch(tiny_policy, ratios={k: r for k in RATIOS})
        policy = copy.deepcopy(tiny_policy)
        _, g = _loss_and_grad(PG[name](stale=choice), _ctx(make_ctx, policy, MULTI if steps == "multi" else SINGLE),
                              batch, perturb=steps == "multi")
        return torch.cat([x.flatten() for x in g])

    g1, g_ignore = grad(1.0), grad(1.0, "ignore")
    torch.testing.assert_close(g1, g_ignore, rtol=1e-4, atol=1e-7)
    up, down = grad(1.5) - g1, grad(0.5) - g1
    assert float(up.abs().max()) > 1e-4  # the stale tokens carry gradient
    torch.testing.assert_close(up, -down, rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(grad(3.0), grad(2.0), rtol=1e-5, atol=1e-8)
    assert float((grad(3.0) - grad(2.5)).abs().max()) == 0.0  # both capped at 2: the same weights


def test_ppo_weights_the_surrogate_not_the_value_loss(make_ctx, tiny_policy):
    """PPO: the surrogate (``loss/ppo``) is weighted like GRPO's (hand: Â from the prepare step,
    token mean), the value loss is the same under every choice but exclude."""
    batch, lp0 = _batch(tiny_policy)
    res = {}
    for choice in STALE:
        policy = copy.deepcopy(tiny_policy)
        ctx = _ctx(make_ctx, policy, MULTI)
        plugin = PPOLoss(PPOLossConfig(stale=choice))
        plugin.rz_trainable_parameters(ctx, policy)
        with torch.no_grad():
            extras = plugin.rz_prepare_update(ctx, batch)
        _perturb(policy)
        out = plugin.rz_loss(ctx, replace(batch, extras=extras))
        with torch.no_grad():
            logp = policy.token_logprobs(batch.input_ids, batch.attention_mask)
            a, rho = extras["pg/advantage"], torch.exp(logp - lp0)
            term = -torch.minimum(rho * a, rho.clamp(0.8, 1.2) * a)
            mask, stale = batch.response_mask, _stale_mask(batch)
            if choice == "exclude":
                mask = mask * ~stale
            if choice == "truncated_is":
                term = term * torch.where(stale, torch.exp(lp0 - batch.behaviour_logprobs).clamp(max=CAP), torch.ones_like(lp0))
            hand = float((term * mask).sum() / mask.sum())
        assert out.metrics["loss/ppo"] == pytest.approx(hand, rel=1e-5, abs=1e-7)
        res[choice] = out.metrics
    assert res["truncated_is"]["loss/value"] == res["ignore"]["loss/value"] != res["exclude"]["loss/value"]
    assert res["truncated_is"]["loss/ppo"] != pytest.approx(res["ignore"]["loss/ppo"], rel=1e-3)


# ---- k1.5: one weight per response ---------------------------------------------------------------------


@pytest.mark.parametrize("choice", STALE)
@pytest.mark.parametrize("steps", ["multi", "single"])
def test_k15_loss_and_gradient_by_hand(make_ctx, tiny_policy, choice, steps):
    """L = mean_j w_j (r_j − r̄ − τ(log π(y_j) − log π_θi(y_j)))² / (2τ), log π summed over the
    response's tokens (current ones only with exclude); w_j = min(Π_stale π_θi/μ, 2) with
    truncated_is (1.5 for row 0, 2 for row 2: 1.5⁴ = 5.06 capped), else 1."""
    tau = 0.1
    batch, lp0 = _batch(tiny_policy)
    policy = copy.deepcopy(tiny_policy)
    ctx = _ctx(make_ctx, policy, MULTI if steps == "multi" else SINGLE)
    out, grads = _loss_and_grad(K15Loss(K15LossConfig(stale=choice, tau=tau)), ctx, batch, perturb=steps == "multi")
    logp = policy.token_logprobs(batch.input_ids, batch.attention_mask)
    mask = batch.response_mask * (~_stale_mask(batch) if choice == "exclude" else 1)
    seq, ref = (logp * mask).sum(-1), (lp0 * mask).sum(-1)
    r = torch.tensor(REWARDS)
    w = torch.tensor([1.5, 1.0, 2.0, 1.0]) if choice == "truncated_is" else torch.ones(4)
    hand = (w * (r - 0.5 - tau * (seq - ref)) ** 2).mean() / (2 * tau)
    hand_grads = torch.autograd.grad(hand, list(policy.model.parameters()))
    torch.testing.assert_close(out.loss, hand, rtol=1e-5, atol=1e-7)
    for g, h in zip(grads, hand_grads):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-7)
    assert out.metrics["loss/stale_frac"] == pytest.approx(6 / 19)
    if choice == "truncated_is":
        assert out.metrics["loss/stale_is_weight_mean"] == pytest.approx((1.5 + 2.0) / 2, rel=1e-5)
        assert out.metrics["loss/stale_is_clipped_frac"] == 0.5  # row 2's ratio 5.06 > 2
    if steps == "multi":  # stale tokens in the loss: π_θi is a forward (their behaviour log-probs are μ's);
        # excluded: the current tokens' behaviour log-probs are π_θi's and stand in for it
        assert out.metrics["loss/reused_behaviour_logprobs"] == float(choice == "exclude")


# ---- no stale token: the three choices are today's loss, bit for bit ------------------------------------------


def _today(name, policy, batch, extras, tau=0.1):
    """The loss as the code computed it before ``stale`` existed, from the same pieces in the same
    order (``reasonzoo.pg``'s surrogate and aggregation; k1.5's squared sequence term)."""
    from reasonzoo.pg import aggregate, clipped_surrogate
    from reasonzoo.plugins.loss.k15 import k15_loss

    logp = policy.token_logprobs(batch.input_ids, batch.attention_mask)
    if name == "k15":
        seq = (logp * batch.response_mask).sum(-1)
        ref = extras["k15/ref_logprob"] if "k15/ref_logprob" in extras else seq.detach()
        return k15_loss(seq, ref, batch.returns, extras["k15/baseline"], tau, True)
    old = extras["pg/old_logprob"] if "pg/old_logprob" in extras else logp.detach()
    mask = batch.response_mask * extras["pg/keep"][:, None]
    if name == "rest":
        tok = -logp * extras["pg/advantage"][:, None]
        return aggregate(tok, mask, "token-mean")[0]
    clip = (0.2, 0.2) if name == "grpo" else (None, None)
    tok, _ = clipped_surrogate(logp, old, extras["pg/advantage"], *clip)
    mode = "seq-mean-token-mean" if name == "grpo" else "seq-mean-token-sum"
    return aggregate(tok, mask, mode)[0]


@pytest.mark.parametrize("name", [*PG, "k15"])
@pytest.mark.parametrize("steps", ["multi", "single"])
def test_no_stale_tokens_all_choices_are_todays_loss_bit_for_bit(make_ctx, tiny_policy, name, steps):
    batch, _ = _batch(tiny_policy, ratios={}, versions=[VERSION] * 4)
    assert not _stale_mask(batch).any()
    losses, grads = {}, {}
    for choice in STALE:
        policy = copy.deepcopy(tiny_policy)
        ctx = _ctx(make_ctx, policy, MULTI if steps == "multi" else SINGLE)
        plugin = ALL[name](stale=choice)
        with torch.no_grad():
            extras = plugin.rz_prepare_update(ctx, batch)
        _perturb(policy)
        out = plugin.rz_loss(ctx, replace(batch, extras=extras))
        losses[choice] = out.loss.detach()
        grads[choice] = torch.autograd.grad(out.loss, list(policy.model.parameters()))
        today = _today(name, policy, batch, extras)
        assert torch.equal(out.loss.detach(), today.detach()), (choice, float(out.loss), float(today))
        assert out.metrics["loss/stale_frac"] == 0.0
        if choice == "truncated_is":
            assert out.metrics["loss/stale_is_weight_mean"] == 1.0 and out.metrics["loss/stale_is_clipped_frac"] == 0.0
    for choice in ("exclude", "truncated_is"):
        assert torch.equal(losses[choice], losses["ignore"])
        assert all(torch.equal(a, b) for a, b in zip(grads[choice], grads["ignore"]))


# ---- when π_θi needs a forward, and where truncated_is is refused -----------------------------------------------


def test_rest_takes_the_forward_only_for_stale_chosen_tokens(make_ctx, tiny_policy):
    """ReST reads no π_old; with truncated_is it takes the π_θi forward only when a chosen response
    holds stale tokens and the update has several steps."""
    stale, _ = _batch(tiny_policy)
    fresh, _ = _batch(tiny_policy, ratios={}, versions=[VERSION] * 4)
    for batch, over, want in [(stale, MULTI, 1), (fresh, MULTI, 0), (stale, SINGLE, 0)]:
        ctx = _ctx(make_ctx, tiny_policy, over)
        with torch.no_grad():
            out = ReSTLoss(ReSTLossConfig(stale="truncated_is")).rz_prepare_update(ctx, batch)
        assert ctx.policy.calls == want and ("pg/old_logprob" in out) == bool(want)
    ctx = _ctx(make_ctx, tiny_policy, MULTI)  # stale tokens only in rows ReST does not choose: no forward
    only_unchosen = [VERSION, [0, 0, 2], VERSION, VERSION]
    batch, _ = _batch(tiny_policy, ratios={(1, 0): 1.5, (1, 1): 1.5}, versions=only_unchosen)
    with torch.no_grad():
        ReSTLoss(ReSTLossConfig(stale="truncated_is")).rz_prepare_update(ctx, batch)
    assert ctx.policy.calls == 0


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("over", [["generation.temperature=0.7"], ["generation.top_p=0.9"]])
def test_truncated_is_refused_when_behaviour_is_a_scaled_distribution(make_ctx, tiny_policy, name, over):
    """μ recorded at T != 1 or top-p < 1 is the scaled distribution's, π_θi the trainer's unscaled
    forward: their ratio is not an importance weight. Refused once stale tokens are in the loss;
    ignore and exclude, and batches without stale tokens, are not affected."""
    stale, _ = _batch(tiny_policy)
    fresh, _ = _batch(tiny_policy, ratios={}, versions=[VERSION] * 4)

    def prepare(batch, **kw):
        ctx = _ctx(make_ctx, tiny_policy, MULTI + over)
        plugin = ALL[name](**kw)
        if name == "ppo":
            plugin.rz_trainable_parameters(ctx, tiny_policy)
        with torch.no_grad():
            return plugin.rz_prepare_update(ctx, batch)

    with pytest.raises(ValueError, match=r"loss.stale=truncated_is needs generation.temperature=1 and generation.top_p=1 .* set loss.stale=ignore or loss.stale=exclude"):
        prepare(stale, stale="truncated_is")
    prepare(fresh, stale="truncated_is")
    prepare(stale, stale="ignore")
    prepare(stale, stale="exclude")


# ---- end to end ----------------------------------------------------------------------------------------


def test_partial_rollout_run_logs_the_stale_metrics(tmp_path, tiny_overrides, run_metrics):
    """Partial rollouts under the default ``truncated_is``: iterations whose groups hold segments
    of an older policy report a stale share and weights (at most the cap), the others 0 and 1."""
    from reasonzoo.train import compose
    from reasonzoo.trainer import train

    over = tiny_overrides + ["iterations=4", "eval.every=0", "eval.before=false", "checkpoint.keep=0", "loss=grpo",
                             "rollout=partial", "rollout.segment_tokens=8", "rollout.tokens_per_iteration=256"]
    train(compose(over), tmp_path / "run")
    recs = [r for r in run_metrics(tmp_path / "run")[1:] if r["response/groups"] > 0]
    kinds = set()
    for r in recs:
        stale = r["rollout/stale_token_frac"] > 0
        kinds.add(stale)
        assert (r["loss/stale_frac"] > 0) == stale, r
        assert 0 < r["loss/stale_is_weight_mean"] <= 2.0 and 0 <= r["loss/stale_is_clipped_frac"] <= 1
        if not stale:
            assert r["loss/stale_is_weight_mean"] == 1.0 and r["loss/stale_is_clipped_frac"] == 0.0
    assert kinds == {False, True}, recs
