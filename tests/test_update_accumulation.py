"""The trainer's update with micro-batches (exact for losses that are a mean over tokens, not
rows: LossOutput.denominator) and TrainBatch.select keeping per-token extras aligned."""
import copy

import pytest
import torch

from reasonzoo.config import validate
from reasonzoo.plugins.loss.grpo import GRPOLoss, GRPOLossConfig
from reasonzoo.plugins.loss.rest import ReSTLoss, ReSTLossConfig
from reasonzoo.registry import make_manager
from reasonzoo.testing import scored_group
from reasonzoo.trainer import collate, update




def _batch(policy):
    """Rows of very unequal lengths, so a token mean and a row mean weigh micro-batches differently."""
    return collate([
        scored_group(policy, [1, 0, 0, 1], ["3#3", "#4", "1+2=3;3+4=7;7*2=4;#4", "12;#3"], "p"),
        scored_group(policy, [1, 0, 1], ["1+2=3;#3", "#7", "1+2=3;3*3=9;9+9=8;8-1=7;#7"], "q"),
    ], policy.pad_token_id)


def _step(make_ctx, tiny_policy, plugin_factory, m):
    """Parameters after one SGD step (lr 1, no clipping) with ``train.microbatches=m``."""
    policy = copy.deepcopy(tiny_policy)
    ctx = make_ctx([f"train.microbatches={m}", "train.minibatch_size=64", "train.max_grad_norm=0"], policy=policy)
    ctx.hook = make_manager({"loss": plugin_factory()}).hook
    ctx.optimizer = torch.optim.SGD(policy.model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in policy.model.parameters()]
    metrics = update(ctx, _batch(policy), validate(ctx.cfg))
    return [b - p.detach() for b, p in zip(before, policy.model.parameters())], metrics


@pytest.mark.parametrize("factory", [
    lambda: GRPOLoss(GRPOLossConfig(aggregation="token-mean", clip_high=0.28)),  # DAPO's token mean
    lambda: ReSTLoss(ReSTLossConfig()),  # a token mean over the chosen rows only
])
def test_token_mean_gradient_independent_of_microbatches(make_ctx, tiny_policy, factory):
    grads = {m: _step(make_ctx, tiny_policy, factory, m) for m in (1, 2, 3)}
    g1, metrics1 = grads[1]
    assert any(g.abs().max() > 1e-5 for g in g1)
    for m in (2, 3):
        gm, metrics = grads[m]
        for a, b in zip(g1, gm):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
        assert metrics["loss/total"] == pytest.approx(metrics1["loss/total"], abs=1e-6)


def test_select_trims_per_token_extras_with_the_mask(tiny_policy):
    batch = _batch(tiny_policy)
    n, w = batch.response_mask.shape
    tok = torch.arange(n * w, dtype=torch.float32).view(n, w)
    row = torch.arange(n, dtype=torch.float32)
    batch = batch.__class__(**{**batch.__dict__, "extras": {"tok": tok, "row": row}})
    short = torch.tensor([1, 0])  # the two shortest rows: the selection is narrower than the batch
    sub = batch.select(short)
    assert sub.response_mask.shape[1] < w
    assert sub.extras["tok"].shape == sub.response_mask.shape
    torch.testing.assert_close(sub.extras["tok"], tok[short, : sub.response_mask.shape[1]])
    assert sub.extras["row"].tolist() == [1.0, 0.0]


def test_minibatch_with_nothing_in_the_loss_takes_no_step(make_ctx, tiny_policy):
    """ReST on a batch with no correct response: the loss is an empty mean (denominator 0). AdamW
    with momentum from an earlier step would still move the weights on a zero gradient: no step."""
    policy = copy.deepcopy(tiny_policy)
    ctx = make_ctx(["train.minibatch_size=64", "train.microbatches=2"], policy=policy)
    ctx.hook = make_manager({"loss": ReSTLoss(ReSTLossConfig())}).hook
    ctx.optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-2)
    sum(p.sum() for p in policy.model.parameters()).backward()
    ctx.optimizer.step()  # momentum in the optimizer state
    before = [p.detach().clone() for p in policy.model.parameters()]
    wrong = collate([scored_group(policy, [0, 0], ["#5", "#6"], "p"), scored_group(policy, [0, 0, 0], ["#1", "1;#2", "#0"], "q")],
                    policy.pad_token_id)
    metrics = update(ctx, wrong, validate(ctx.cfg))
    assert metrics["train/empty_step_frac"] == 1.0 and metrics["loss/total"] == 0.0
    for a, b in zip(before, policy.model.parameters()):
        assert torch.equal(a, b)
