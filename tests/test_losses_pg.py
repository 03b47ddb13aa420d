"""reasonzoo.pg and the policy-gradient loss plugins (rest, reinforce, rloo, grpo) against
hand-computed values on toy batches and against direct re-derivations with autograd."""
import math
from dataclasses import replace

import pytest
import torch

from reasonzoo import pg
from reasonzoo.plugins.loss.grpo import GRPOLoss, GRPOLossConfig
from reasonzoo.plugins.loss.reinforce import ReinforceLoss, ReinforceLossConfig
from reasonzoo.plugins.loss.rest import ReSTLoss, ReSTLossConfig, best_correct
from reasonzoo.plugins.loss.rloo import RLOOLoss, RLOOLossConfig
from reasonzoo.registry import PluginError
from reasonzoo.testing import scored_group
from reasonzoo.trainer import collate

# ---- toy batches -------------------------------------------------------------------------------




def _batch(policy):
    """Two groups of unequal response lengths: returns [1, 0, 0, 1 | 1, 0]."""
    return collate([scored_group(policy, [1, 0, 0, 1], ["3#3", "#4", "1+2=3;#9", "12;#3"]),
                    scored_group(policy, [1, 0], ["1+2=3;#3", "#7"], uid="q")], policy.pad_token_id)


def _perturb(model, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


# ---- advantage estimators -----------------------------------------------------------------------

R = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
G = torch.tensor([0, 0, 0, 0, 1, 1, 1])


def test_group_mean_and_leave_one_out_baselines_hand_values():
    assert pg.group_baselines(R, G, "mean").tolist() == pytest.approx([0.5] * 4 + [2 / 3] * 3)
    # RLOO: b_i = (sum of the others) / (k - 1): group 0 sums to 2 -> 1/3 for a 1, 2/3 for a 0
    loo = pg.group_baselines(R, G, "loo")
    assert loo.tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1 / 3, 1 / 2, 1 / 2, 1.0])
    adv = R - loo
    assert adv.tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 1 / 2, 1 / 2, -1.0])
    # = k/(k-1) (r - mean)
    torch.testing.assert_close(adv, (R - pg.group_baselines(R, G, "mean")) * torch.tensor([4 / 3] * 4 + [3 / 2] * 3))
    lme = pg.group_baselines(R, G, "logmeanexp", tau=0.5)
    assert lme[0].item() == pytest.approx(0.5 * math.log((2 * math.exp(2) + 2) / 4))
    with pytest.raises(ValueError, match="median.*mean, loo, logmeanexp"):
        pg.group_baselines(R, G, "median")


def test_groups_need_not_be_numbered_from_zero():
    """A minibatch holds some groups only: ids 3 and 7."""
    g = torch.tensor([7, 7, 3, 3])
    r = torch.tensor([1.0, 0.0, 2.0, 4.0])
    assert pg.group_baselines(r, g, "mean").tolist() == [0.5, 0.5, 3.0, 3.0]
    assert pg.group_baselines(r, g, "loo").tolist() == [0.0, 1.0, 4.0, 2.0]


def test_advantage_scales_hand_values():
    centred = R - pg.group_baselines(R, G, "mean")
    # group 0: returns 1,0,0,1: unbiased var = 4 * 0.25 / 3, std = 0.57735; group 1: 1,1,0: std = 0.57735
    s = math.sqrt(1 / 3)
    grp = pg.scale_advantages(centred, R, G, "group", eps=0.0)
    assert grp.tolist() == pytest.approx([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, (1 / 3) / s, (1 / 3) / s, (-2 / 3) / s])
    batch_std = math.sqrt(sum((x - 4 / 7) ** 2 for x in R.tolist()) / 6)
    assert pg.scale_advantages(centred, R, G, "batch", eps=0.0).tolist() == pytest.approx((centred / batch_std).tolist())
    assert pg.scale_advantages(centred, R, G, "none").tolist() == centred.tolist()  # Dr.GRPO
    # a group with equal returns: advantage 0, not 0/0
    z = pg.scale_advantages(torch.zeros(3), torch.ones(3), torch.zeros(3, dtype=torch.long), "group")
    assert z.tolist() == [0.0, 0.0, 0.0]


def test_uniform_groups():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    assert pg.uniform_groups(r, g).tolist() == [True, True, False, False, True, True]


# ---- surrogate -------------------------------------------------------------------------------------


def test_clipped_surrogate_at_both_boundaries():
    """ε_low = 0.2, ε_high = 0.28 (DAPO): ratios 1.5, 0.5, 1.1 with A = +1 and −1."""
    ratio = torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1, 1.1]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, -1.0]])
    old = torch.zeros(1, 6)
    logp = ratio.log().requires_grad_()
    loss, st = pg.clipped_surrogate(logp, old, adv, 0.2, 0.28)
    # -min(ρA, clip(ρ, 0.8, 1.28)A)
    assert loss[0].tolist() == pytest.approx([-1.28, 1.5, -0.5, 0.8, -1.1, 1.1])
    assert st["clipped_high"][0].tolist() == [True, False, False, False, False, False]
    assert st["clipped_low"][0].tolist() == [False, False, False, True, False, False]
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    # d(-ρA)/dlog π = -ρA where unclipped; 0 where the clipped branch is taken
    assert grad[0].tolist() == pytest.approx([0.0, 1.5, -0.5, 0.0, -1.1, 1.1])
    # symmetric ε = 0.2: 1.1 is inside, 1.5 is clipped at 1.2
    loss2, _ = pg.clipped_surrogate(logp, old, adv, 0.2, 0.2)
    assert loss2[0, 0].item() == pytest.approx(-1.2)
    # unclipped (REINFORCE / RLOO): -ρA everywhere
    loss3, st3 = pg.clipped_surrogate(logp, old, adv, None, None)
    assert loss3[0].tolist() == pytest.approx((-ratio * adv)[0].tolist())
    assert not st3["clipped_low"].any() and not st3["clipped_high"].any()


def test_per_row_advantage_broadcasts_over_tokens():
    logp = torch.zeros(2, 3)
    loss, _ = pg.clipped_surrogate(logp, logp, torch.tensor([2.0, -1.0]), 0.2, 0.2)
    assert loss.tolist() == [[-2.0] * 3, [1.0] * 3]


# ---- aggregation -----------------------------------------------------------------------------------

TOK = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [5.0, 6.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # row 2 left out


@pytest.mark.parametrize("mode,value,denominator", [
    ("token-mean", (1 + 2 + 3 + 4) / 4, 4),          # every token weighs the same
    ("seq-mean-token-mean", (6 / 3 + 4 / 1) / 2, 2),  # mean of per-row means
    ("seq-mean-token-sum", (6 + 4) / 2, 2),           # mean of per-row sums
    ("seq-mean-token-sum-norm", (6 / 10 + 4 / 10) / 2, 2),  # per-row sums over a constant 10
])
def test_aggregation_modes_hand_values(mode, value, denominator):
    loss, d = pg.aggregate(TOK, MASK, mode, norm_length=10)
    assert loss.item() == pytest.approx(value)
    assert d == denominator


def test_aggregation_of_nothing_is_zero_with_a_graph():
    x = TOK.clone().requires_grad_()
    for mode in pg.AGGREGATIONS:
        loss, d = pg.aggregate(x, torch.zeros_like(MASK), mode, 10)
        assert loss.item() == 0.0 and d == 0
        loss.backward()
    with pytest.raises(ValueError, match="aggregation 'mean'.*token-mean"):
        pg.aggregate(TOK, MASK, "mean")


# ---- KL estimators ----------------------------------------------------------------------------------


def test_kl_estimators_hand_values():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    x = math.log(0.5)  # log π_ref − log π
    assert pg.kl_estimate(logp, ref, "k1").item() == pytest.approx(-x)  # 0.6931
    assert pg.kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * x * x)  # 0.2402
    assert pg.kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 - x)  # 0.1931
    with pytest.raises(ValueError, match="k4"):
        pg.kl_estimate(logp, ref, "k4")


def test_k1_and_k3_are_unbiased_k2_is_not():
    """Expectations under π of each estimator, summed exactly over a categorical."""
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    kl = float((p * (p / q).log()).sum())
    e = {k: float((p * pg.kl_estimate(p.log(), q.log(), k)).sum()) for k in pg.KL_ESTIMATORS}
    assert e["k1"] == pytest.approx(kl) and e["k3"] == pytest.approx(kl)
    assert abs(e["k2"] - kl) > 1e-3
    assert (pg.kl_estimate(p.log(), q.log(), "k3") >= 0).all()


# ---- plugins on a tiny policy -----------------------------------------------------------------------


def _run_loss(plugin, ctx, batch):
    with torch.no_grad():
        extras = plugin.rz_prepare_update(ctx, batch)
    return extras, replace(batch, extras=extras)


def test_grpo_advantages_and_loss_at_theta_old(make_ctx, tiny_policy):
    """At π = π_old (ratio 1, no clipping) the eq. 3 value is −mean_i Â_i (token mean of a
    constant); group 0: Â = ±0.5/std."""
    ctx = make_ctx(["train.minibatch_size=64"], policy=tiny_policy)
    plugin = GRPOLoss(GRPOLossConfig(eps=0.0))
    batch = _batch(tiny_policy)
    extras, b = _run_loss(plugin, ctx, batch)
    s = math.sqrt(1 / 3)
    assert extras["pg/advantage"].tolist() == pytest.approx([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0.5 / math.sqrt(0.5), -0.5 / math.sqrt(0.5)])
    assert "pg/old_logprob" not in extras and "pg/ref_logprob" not in extras  # one step, kl_coef 0
    out = plugin.rz_loss(ctx, b)
    assert out.loss.item() == pytest.approx(-float(extras["pg/advantage"].mean()), abs=1e-6)
    assert out.denominator == 6  # seq-mean-token-mean: rows
    assert out.metrics["loss/ratio_max"] == 1.0 and out.metrics["loss/clipfrac_high"] == 0.0


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_grpo_matches_a_direct_rederivation(make_ctx, tiny_policy, aggregation):
    """Several optimizer steps (π_old computed up front), θ moved, KL on: the plugin's loss and
    gradient equal GRPO's objective written out here row by row."""
    policy = tiny_policy
    ctx = make_ctx(["train.minibatch_size=2"], policy=policy)
    plugin = GRPOLoss(GRPOLossConfig(aggregation=aggregation, clip_low=0.02, clip_high=0.03, kl_coef=0.1, norm_length=16))
    plugin.rz_iteration_start(ctx)  # reference = the policy now
    batch = _batch(policy)
    _perturb(policy.model, 0.02, seed=3)  # π_old ≠ π_ref
    extras, b = _run_loss(plugin, ctx, batch)
    _perturb(policy.model, 0.05, seed=4)  # π ≠ π_old: some ratios leave [0.98, 1.03]
    params = list(policy.model.parameters())
    out = plugin.rz_loss(ctx, b)
    assert out.metrics["loss/clipfrac_low"] + out.metrics["loss/clipfrac_high"] > 0

    lp = policy.token_logprobs(b.input_ids, b.attention_mask)
    m, adv, old, ref = b.response_mask, extras["pg/advantage"], extras["pg/old_logprob"], extras["pg/ref_logprob"]
    rows = []
    for i in range(len(b)):
        t = m[i] > 0
        ratio = (lp[i][t] - old[i][t]).exp()
        surr = torch.minimum(ratio * adv[i], ratio.clamp(0.98, 1.03) * adv[i])
        x = ref[i][t] - lp[i][t]
        per_tok = -surr + 0.1 * (x.exp() - 1 - x)
        rows.append(per_tok)
    if aggregation == "token-mean":
        direct = torch.cat(rows).sum() / sum(len(r) for r in rows)
    elif aggregation == "seq-mean-token-mean":
        direct = torch.stack([r.mean() for r in rows]).mean()
    else:
        direct = torch.stack([r.sum() / 16 for r in rows]).mean()
    torch.testing.assert_close(out.loss, direct)
    for a, c in zip(torch.autograd.grad(out.loss, params, allow_unused=True), torch.autograd.grad(direct, params, allow_unused=True)):
        if a is not None:
            torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-4)


def test_dr_grpo_constant_normaliser(make_ctx, tiny_policy):
    """Dr.GRPO: no std, token sum / generation.max_new_tokens (24 in the tiny config): at
    π = π_old the loss is −(1/G) Σ_i Â_i |o_i| / 24, and each token's weight is Â_i/(G·24)
    whatever the response length."""
    ctx = make_ctx(["train.minibatch_size=64"], policy=tiny_policy)
    plugin = GRPOLoss(GRPOLossConfig(advantage_scale="none", aggregation="seq-mean-token-sum-norm"))
    extras, b = _run_loss(plugin, ctx, _batch(tiny_policy))
    adv = extras["pg/advantage"]
    assert adv.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.5, -0.5])  # r − r̄, unscaled
    lengths = b.response_mask.sum(-1)
    assert len(set(lengths.tolist())) > 2
    out = plugin.rz_loss(ctx, b)
    assert out.loss.item() == pytest.approx(-float((adv * lengths).sum()) / 6 / 24, abs=1e-6)
    # token weights: d loss / d log π(token) at π = π_old
    lp = tiny_policy.token_logprobs(b.input_ids, b.attention_mask).detach().requires_grad_()
    tok, _ = plugin.token_loss(lp, lp.detach(), adv)
    loss, _ = pg.aggregate(tok, b.response_mask, "seq-mean-token-sum-norm", 24)
    (g,) = torch.autograd.grad(loss, lp)
    expect = -adv[:, None] / (6 * 24) * b.response_mask
    torch.testing.assert_close(g, expect)


def test_grpo_drop_uniform_groups(make_ctx, tiny_policy):
    ctx = make_ctx(["train.minibatch_size=64"], policy=tiny_policy)
    batch = collate([scored_group(tiny_policy, [1, 1], ["3#3", "#3"]), scored_group(tiny_policy, [1, 0], ["#3", "#4"], uid="q")],
                    tiny_policy.pad_token_id)
    extras, b = _run_loss(GRPOLoss(GRPOLossConfig(drop_uniform_groups=True, aggregation="token-mean")), ctx, batch)
    assert extras["pg/keep"].tolist() == [0.0, 0.0, 1.0, 1.0]
    out = GRPOLoss(GRPOLossConfig(drop_uniform_groups=True, aggregation="token-mean")).rz_loss(ctx, b)
    assert out.denominator == float(batch.response_mask[2:].sum())  # the uniform group's tokens left out


def test_rloo_leave_one_out_gradient(make_ctx, tiny_policy):
    """∇L = −(1/k) Σ_i (r_i − mean of the others) ∇log π(y_i|x), log π summed over the response
    (the RLOO estimator), assembled here from per-sample gradients."""
    policy = tiny_policy
    ctx = make_ctx(["train.minibatch_size=64"], policy=policy)
    plugin = RLOOLoss(RLOOLossConfig())
    batch = collate([scored_group(policy, [1, 0, 0, 1], ["3#3", "#4", "1+2=3;#9", "12;#3"])], policy.pad_token_id)
    extras, b = _run_loss(plugin, ctx, batch)
    assert extras["pg/advantage"].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    params = list(policy.model.parameters())
    grad = torch.autograd.grad(plugin.rz_loss(ctx, b).loss, params)
    expect = [torch.zeros_like(p) for p in params]
    for j, a in enumerate([2 / 3, -2 / 3, -2 / 3, 2 / 3]):
        seq = (policy.token_logprobs(b.input_ids[j:j + 1], b.attention_mask[j:j + 1]) * b.response_mask[j:j + 1]).sum()
        for e, g in zip(expect, torch.autograd.grad(seq, params)):
            e -= a * g / 4
    assert any(e.abs().max() > 1e-4 for e in expect)
    for a, e in zip(grad, expect):
        torch.testing.assert_close(a, e, atol=1e-6, rtol=1e-4)


def test_reinforce_mean_baseline(make_ctx, tiny_policy):
    ctx = make_ctx(["train.minibatch_size=64"], policy=tiny_policy)
    plugin = ReinforceLoss(ReinforceLossConfig())
    extras, b = _run_loss(plugin, ctx, _batch(tiny_policy))
    assert extras["pg/advantage"].tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.5, -0.5])
    out = plugin.rz_loss(ctx, b)  # at π_old: −mean_i A_i |y_i| (sequence sums)
    lengths = b.response_mask.sum(-1)
    assert out.loss.item() == pytest.approx(-float((extras["pg/advantage"] * lengths).mean()), abs=1e-6)
    assert out.denominator == 6


def test_rest_fits_only_the_best_correct_response(make_ctx, tiny_policy):
    """Group p: two correct rows, the second with the higher return (length reward) → row 1;
    group q: no correct row → skipped; group u: a tie → the first."""
    policy = tiny_policy
    batch = collate([
        scored_group(policy, [1, 1, 0], ["1+2=3;#3", "#3", "#4"], length_rewards=[-0.2, 0.1, 0.0]),
        scored_group(policy, [0, 0], ["#5", "#6"], uid="q"),
        scored_group(policy, [1, 1], ["3#3", "#3"], uid="u"),
    ], policy.pad_token_id)
    assert best_correct(batch.returns, batch.correct, batch.group_index).tolist() == [False, True, False, False, False, True, False]
    ctx = make_ctx(["train.minibatch_size=64"], policy=policy)
    plugin = ReSTLoss(ReSTLossConfig())
    extras, b = _run_loss(plugin, ctx, batch)
    assert "pg/old_logprob" not in extras
    out = plugin.rz_loss(ctx, b)
    lp = policy.token_logprobs(b.input_ids, b.attention_mask)
    chosen = torch.cat([lp[1][b.response_mask[1] > 0], lp[5][b.response_mask[5] > 0]])
    torch.testing.assert_close(out.loss, -chosen.mean())  # token-mean NLL of rows 1 and 5 only
    assert out.denominator == len(chosen)
    # the wrong and the unchosen rows get no gradient at all (no negative gradient)
    x = lp.detach().requires_grad_()
    tok, _ = plugin.token_loss(x, x.detach(), extras["pg/advantage"])
    loss, _ = pg.aggregate(tok, plugin.mask(ctx, b), "token-mean")
    (g,) = torch.autograd.grad(loss, x)
    assert g[[0, 2, 3, 4, 6]].abs().sum() == 0 and (g[1] < 0).sum() == b.response_mask[1].sum()


def test_rest_best_by_score_takes_the_first_correct(make_ctx, tiny_policy):
    policy = tiny_policy
    batch = collate([scored_group(policy, [1, 1, 0], ["1+2=3;#3", "#3", "#4"], length_rewards=[-0.2, 0.1, 0.0])], policy.pad_token_id)
    ctx = make_ctx(["train.minibatch_size=64"], policy=policy)
    extras, _ = _run_loss(ReSTLoss(ReSTLossConfig(best_by="score")), ctx, batch)
    assert extras["pg/keep"].tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="loss.best_by='length'.*return, score"):
        ReSTLoss(ReSTLossConfig(best_by="length"))


def test_rest_batch_with_no_correct_response(make_ctx, tiny_policy):
    ctx = make_ctx(["train.minibatch_size=64"], policy=tiny_policy)
    plugin = ReSTLoss(ReSTLossConfig())
    _, b = _run_loss(plugin, ctx, collate([scored_group(tiny_policy, [0, 0], ["#5", "#6"])], tiny_policy.pad_token_id))
    out = plugin.rz_loss(ctx, b)
    assert out.loss.item() == 0.0 and out.denominator == 0
    out.loss.backward()


# ---- reference model -------------------------------------------------------------------------------


def test_reference_captured_lazily_swapped_exactly_and_checkpointed(make_ctx, tiny_policy):
    policy = tiny_policy
    ctx = make_ctx(["train.minibatch_size=64"], policy=policy)
    plugin = GRPOLoss(GRPOLossConfig(kl_coef=0.04))
    assert plugin.reference is None  # nothing at construction (rz_run_start comes before the warm-up)
    batch = _batch(policy)
    with torch.no_grad():
        at_capture = policy.token_logprobs(batch.input_ids, batch.attention_mask)
    plugin.rz_iteration_start(ctx)
    _perturb(policy.model)
    plugin.rz_iteration_start(ctx)  # a later iteration does not move the reference
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    extras, _ = _run_loss(plugin, ctx, batch)
    torch.testing.assert_close(extras["pg/ref_logprob"], at_capture)
    for k, v in policy.model.state_dict().items():  # current weights put back
        assert torch.equal(v, before[k]), k
    state = plugin.rz_checkpoint_state(ctx)
    fresh = GRPOLoss(GRPOLossConfig(kl_coef=0.04))
    fresh.rz_load_state(ctx, state)
    fresh.rz_iteration_start(ctx)  # resumed: keeps the restored reference
    extras2, _ = _run_loss(fresh, ctx, batch)
    torch.testing.assert_close(extras2["pg/ref_logprob"], at_capture)
    with pytest.raises(KeyError, match="loss/grpo"):
        fresh.rz_load_state(ctx, {})


def test_no_reference_without_kl(make_ctx, tiny_policy):
    ctx = make_ctx(["train.minibatch_size=64"], policy=tiny_policy)
    plugin = RLOOLoss(RLOOLossConfig())
    plugin.rz_iteration_start(ctx)
    assert plugin.reference is None


# ---- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls,cfg,match", [
    (GRPOLoss, GRPOLossConfig(advantage_scale="std"), r"loss.advantage_scale='std'.*group, batch, none"),
    (GRPOLoss, GRPOLossConfig(aggregation="mean"), r"loss.aggregation='mean'.*token-mean"),
    (GRPOLoss, GRPOLossConfig(clip_low=1.0), r"loss.clip_low=1.0.*\[0, 1\)"),
    (GRPOLoss, GRPOLossConfig(clip_high=-0.1), r"loss.clip_high=-0.1"),
    (RLOOLoss, RLOOLossConfig(kl_estimator="k4"), r"loss.kl_estimator='k4'.*k1, k2, k3"),
    (ReSTLoss, ReSTLossConfig(aggregation="sum"), r"loss.aggregation='sum'"),
])
def test_bad_options_name_the_key(cls, cfg, match):
    with pytest.raises(ValueError, match=match):
        cls(cfg)


def test_bad_option_refused_at_composition():
    from reasonzoo.config import validate
    from reasonzoo.registry import build_plugins
    from reasonzoo.train import compose

    with pytest.raises(PluginError, match="loss.clip_low=1.5"):
        build_plugins(compose(["recipe=grpo", "loss.clip_low=1.5"]))
    with pytest.raises(PluginError, match="loss.kl_coef"):
        validate(compose(["recipe=dapo", "loss.kl_coef=-1"]))


def test_per_token_advantages_fit_the_base(make_ctx, tiny_policy):
    """A subclass returning (N, T-1) advantages (PPO's GAE shape) gets the same loss as the
    per-row ones broadcast, also through TrainBatch.select of a narrower minibatch."""

    class PerToken(GRPOLoss):
        def advantages(self, ctx, batch):
            return super().advantages(ctx, batch)[:, None].expand_as(batch.response_mask).clone()

    ctx = make_ctx(["train.minibatch_size=2"], policy=tiny_policy)
    batch = _batch(tiny_policy)
    cfg = GRPOLossConfig(aggregation="token-mean")
    _, b_row = _run_loss(GRPOLoss(cfg), ctx, batch)
    _, b_tok = _run_loss(PerToken(cfg), ctx, batch)
    assert b_tok.extras["pg/advantage"].shape == batch.response_mask.shape
    idx = torch.tensor([1, 4])  # two short rows: select trims the columns
    _perturb(tiny_policy.model)
    a = GRPOLoss(cfg).rz_loss(ctx, b_row.select(idx))
    b = PerToken(cfg).rz_loss(ctx, b_tok.select(idx))
    torch.testing.assert_close(a.loss, b.loss)
