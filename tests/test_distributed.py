"""The trainer on 2 gloo ranks (reasonzoo.distributed): the data-parallel update gives the one-process
gradient, and followers driven by rank 0's commands stay in step with it.

Ranks are forked processes (``torch.distributed`` with the gloo backend, file rendezvous): 2 ranks
fit this 2-core box. Tolerance: the ranks' gradients are summed in another order than one process
sums its micro-batches, so parameters after one SGD step (lr 1) agree to 1e-6 absolute (float32).
"""
import copy

import pytest
import torch

from reasonzoo.config import validate
from reasonzoo.distributed import DataParallel
from reasonzoo.plugins.loss.grpo import GRPOLoss, GRPOLossConfig
from reasonzoo.plugins.loss.k15 import K15Loss, K15LossConfig
from reasonzoo.plugins.loss.ppo import PPOLoss, PPOLossConfig
from reasonzoo.registry import make_manager
from reasonzoo.testing import on_gloo_ranks, uneven_groups
from reasonzoo.trainer import collate, param_groups, update

LOSSES = {
    "k15": lambda: K15Loss(K15LossConfig()),  # a mean over rows
    "grpo_token_mean": lambda: GRPOLoss(GRPOLossConfig(aggregation="token-mean", clip_high=0.28)),
    "ppo_head": lambda: PPOLoss(PPOLossConfig(critic="head")),  # a critic's param group too
}


def _batch(policy):
    return collate(uneven_groups(policy), policy.pad_token_id)


def _step(make_ctx, tiny_policy, loss, overrides, dp=None, lr=1.0):
    """Every trainable parameter's change after one update with SGD (``lr``, no clipping), and the metrics."""
    policy = copy.deepcopy(tiny_policy)
    ctx = make_ctx(["train.minibatch_size=64", "train.max_grad_norm=0", *overrides], policy=policy)
    plugin = LOSSES[loss]()
    ctx.hook = make_manager({"loss": plugin}).hook
    groups = param_groups(policy, ctx.hook.rz_trainable_parameters(ctx=ctx, policy=policy))
    if loss == "ppo_head":  # the same head on every rank and in the one-process run
        torch.manual_seed(1)
        for p in groups[1]["params"]:
            torch.nn.init.normal_(p, std=0.1)
    ctx.optimizer = torch.optim.SGD(groups, lr=lr)
    ctx.data_parallel = dp
    ctx.hook.rz_iteration_start(ctx=ctx)
    params = [p for g in groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    metrics = update(ctx, _batch(policy), validate(ctx.cfg))
    return [b - p.detach() for b, p in zip(before, params)], metrics


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("microbatches", [1, 2, 3])
def test_two_ranks_give_the_one_process_gradient(make_ctx, tiny_policy, tmp_path, loss, microbatches):
    one, metrics1 = _step(make_ctx, tiny_policy, loss, [f"train.microbatches={microbatches}"])
    assert any(g.abs().max() > 1e-5 for g in one)
    ranks = on_gloo_ranks(2, lambda dp: _step(make_ctx, tiny_policy, loss, [f"train.microbatches={microbatches}"], dp),
                          tmp_path)
    for deltas, metrics in ranks:  # every rank took the same step: the one-process one
        for a, b in zip(one, deltas):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
        assert metrics["loss/total"] == pytest.approx(metrics1["loss/total"], abs=1e-6)
        assert set(metrics) == set(metrics1) | {"train/ranks"} and metrics["train/ranks"] == 2.0
    for a, b in zip(ranks[0][0], ranks[1][0]):  # and the ranks agree exactly with each other
        assert torch.equal(a, b)


def test_a_rank_without_a_micro_batch_still_takes_the_step(make_ctx, tiny_policy, tmp_path):
    """Minibatches of one row on 2 ranks (7 steps): rank 1 has nothing to run and still joins the sums."""
    args = ["train.minibatch_size=1", "train.microbatches=1"]
    one, _ = _step(make_ctx, tiny_policy, "k15", args, lr=0.01)
    assert any(g.abs().max() > 1e-6 for g in one)
    ranks = on_gloo_ranks(2, lambda dp: _step(make_ctx, tiny_policy, "k15", args, dp, lr=0.01), tmp_path)
    for deltas, _ in ranks:
        for a, b in zip(one, deltas):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_parts_are_dealt_round_robin():
    dp = DataParallel(1, 2)
    assert dp.parts(1) == 2 and dp.parts(2) == 2 and dp.parts(3) == 4
    assert dp.mine(["a", "b", "c"]) == ["b"] and DataParallel(0, 2).mine(["a", "b", "c"]) == ["a", "c"]
