"""loss/k15 against hand-computed values and against the paper's eq. 3 on a small policy."""
import math

import pytest
import torch

from reasonzoo.plugins.loss.k15 import K15Loss, K15LossConfig, group_baselines, k15_loss
from reasonzoo.registry import make_manager
from reasonzoo.testing import scored_group
from reasonzoo.trainer import collate
from reasonzoo.types import Rollout, RolloutGroup, Segment


def test_loss_hand_values():
    seq = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.5, -2.0])
    r = torch.tensor([1.0, 0.0])
    b = torch.tensor([0.5, 0.5])
    # tau = 0.25: (1 - .5 - .25*.5)^2 = .140625 ; (0 - .5 - 0)^2 = .25 ; mean = .1953125
    assert k15_loss(seq, ref, r, b, 0.25, divide_by_2tau=False).item() == pytest.approx(0.1953125)
    assert k15_loss(seq, ref, r, b, 0.25, divide_by_2tau=True).item() == pytest.approx(0.390625)


def test_baselines_hand_values():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    g = torch.tensor([0, 0, 1, 1, 1])
    assert group_baselines(r, g, 0.5, "mean").tolist() == pytest.approx([0.5, 0.5, 2 / 3, 2 / 3, 2 / 3])
    lme = group_baselines(r, g, 0.5, "logmeanexp")
    assert lme[0].item() == pytest.approx(0.5 * math.log((math.exp(2) + 1) / 2))  # 0.71689
    assert lme[2].item() == pytest.approx(0.5 * math.log((1 + 2 * math.exp(2)) / 3))


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="loss.baseline='median'.*mean, logmeanexp"):
        K15Loss(K15LossConfig(baseline="median"))
    with pytest.raises(ValueError, match="loss.tau"):
        K15Loss(K15LossConfig(tau=0.0))




@pytest.mark.parametrize("divide", [True, False])
def test_autograd_gradient_equals_eq3(tiny_policy, make_ctx, divide):
    """∇L = −(eq. 3) with divide_by_2tau, −2τ·(eq. 3) without; eq. 3 assembled from per-sample
    gradients ∇log π(y_j|x): (1/k) Σ_j [∇log π_j (r_j − r̄) − τ (log π_j − log π_ref,j) ∇log π_j]."""
    tau = 0.3
    policy = tiny_policy
    # several optimizer steps per iteration (minibatch 2 < 4 rows): the reference is computed up front
    ctx = make_ctx(["loss.tau=0.3", f"loss.divide_by_2tau={divide}", "train.minibatch_size=2"], policy=policy)
    plugin = K15Loss(K15LossConfig(tau=tau, divide_by_2tau=divide))
    ctx.hook = make_manager({"loss": plugin}).hook
    group = scored_group(policy, [1, 0, 1, 0], ["3#3", "#4", "1+2=3;#3", "#9"])
    batch = collate([group], policy.pad_token_id)
    with torch.no_grad():
        extras = plugin.rz_prepare_update(ctx, batch)  # reference = θ_i
    # move to θ != θ_i so the KL term is non-zero
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    from dataclasses import replace

    batch = replace(batch, extras=extras)
    params = [p for p in policy.model.parameters()]
    out = ctx.hook.rz_loss(ctx=ctx, batch=batch)
    grad_l = torch.autograd.grad(out.loss, params)

    r = batch.returns
    rbar = r.mean()
    ref = extras["k15/ref_logprob"]
    eq3 = [torch.zeros_like(p) for p in params]
    k = len(r)
    for j in range(k):
        lp = (policy.token_logprobs(batch.input_ids[j : j + 1], batch.attention_mask[j : j + 1]) * batch.response_mask[j : j + 1]).sum()
        gj = torch.autograd.grad(lp, params)
        coef = (r[j] - rbar) - tau * (lp.detach() - ref[j])
        for e, gg in zip(eq3, gj):
            e += coef * gg / k
    scale = 1.0 if divide else 2 * tau
    assert any(e.abs().max() > 1e-4 for e in eq3)
    for gl, e in zip(grad_l, eq3):
        torch.testing.assert_close(gl, -scale * e, rtol=1e-4, atol=1e-6)


def test_optimizer_reset_each_iteration(make_ctx, tiny_policy):
    ctx = make_ctx(policy=tiny_policy)
    opt = torch.optim.AdamW(tiny_policy.model.parameters(), lr=1e-3)
    loss = sum(p.sum() for p in tiny_policy.model.parameters())
    loss.backward()
    opt.step()
    assert len(opt.state) > 0
    ctx.optimizer = opt
    K15Loss(K15LossConfig()).rz_iteration_start(ctx)
    assert len(opt.state) == 0
    K15Loss(K15LossConfig(reset_optimizer=False))  # constructing with the option off is allowed


def test_stale_segments_excluded(make_ctx, tiny_policy):
    ctx = make_ctx(policy=tiny_policy)
    ctx.policy_version = 3
    group = scored_group(tiny_policy, [1, 0], ["12345", "#4"])
    # first rollout: tokens 0..2 from version 2, rest from version 3
    r0 = group.rollouts[0]
    r0 = Rollout(r0.problem, r0.prompt_ids, r0.response_ids, r0.logprobs, r0.finish_reason,
                 (Segment(0, 3, 2), Segment(3, len(r0.response_ids), 3)), r0.text)
    r1 = group.rollouts[1]
    r1 = Rollout(r1.problem, r1.prompt_ids, r1.response_ids, r1.logprobs, r1.finish_reason, (Segment(0, len(r1.response_ids), 3),), r1.text)
    group = RolloutGroup(group.problem, (r0, r1), group.rewards, group.length_rewards)
    batch = collate([group], tiny_policy.pad_token_id)
    full = K15Loss(K15LossConfig()).mask(ctx, batch)
    fresh = K15Loss(K15LossConfig(exclude_stale_segments=True)).mask(ctx, batch)
    assert full[0].sum() == len(r0.response_ids)
    assert fresh[0].sum() == len(r0.response_ids) - 3
    assert fresh[1].sum() == full[1].sum()


def _four_rollouts(policy):
    return scored_group(policy, [1, 0, 1, 0], ["3#3", "#4", "1+2=3;#3", "#9"])


def test_single_step_update_uses_its_own_forward_as_reference(make_ctx, tiny_policy):
    """With one optimizer step per iteration the loss forward runs at θ_i and is its own
    (exact) reference; with several steps the reference is computed up front."""
    from dataclasses import replace

    policy = tiny_policy
    plugin = K15Loss(K15LossConfig())
    batch = collate([_four_rollouts(policy)], policy.pad_token_id)
    with torch.no_grad():
        several = plugin.rz_prepare_update(make_ctx(["train.minibatch_size=2"], policy=policy), batch)
        single = plugin.rz_prepare_update(make_ctx(["train.minibatch_size=64"], policy=policy), batch)
    assert "k15/ref_logprob" in several and "k15/ref_logprob" not in single
    ctx = make_ctx(["train.minibatch_size=64"], policy=policy)
    out_single = plugin.rz_loss(ctx, replace(batch, extras=single))
    out_several = plugin.rz_loss(ctx, replace(batch, extras=several))
    torch.testing.assert_close(out_single.loss, out_several.loss)
    assert out_single.metrics["loss/logratio_absmax"] == 0.0
    g1 = torch.autograd.grad(plugin.rz_loss(ctx, replace(batch, extras=single)).loss, list(policy.model.parameters()))
    g2 = torch.autograd.grad(plugin.rz_loss(ctx, replace(batch, extras=several)).loss, list(policy.model.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_microbatches_give_the_same_step(make_ctx, tiny_policy):
    """train.microbatches=3 (length-sorted parts, gradients accumulated) = one minibatch step."""
    import copy

    from reasonzoo.config import validate
    from reasonzoo.trainer import update

    results = []
    for m in (1, 3):
        policy = copy.deepcopy(tiny_policy)
        ctx = make_ctx([f"train.microbatches={m}", "train.minibatch_size=64", "train.max_grad_norm=0"], policy=policy)
        ctx.hook = make_manager({"loss": K15Loss(K15LossConfig())}).hook
        ctx.optimizer = torch.optim.SGD(policy.model.parameters(), lr=0.5)
        batch = collate([_four_rollouts(policy), scored_group(policy, [0, 1], ["12345678", "#3"])], policy.pad_token_id)
        metrics = update(ctx, batch, validate(ctx.cfg))
        results.append(([p.detach().clone() for p in policy.model.parameters()], metrics))
    (p1, m1), (p3, m3) = results
    for a, b in zip(p1, p3):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert m1.keys() == m3.keys()
    for k in m1:
        assert m3[k] == pytest.approx(m1[k], rel=1e-4, abs=1e-6), k
