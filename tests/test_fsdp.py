"""launcher.strategy=fsdp2 (reasonzoo.fsdp): the policy sharded over 2 gloo ranks gives the one-process
update, trains and resumes as one rank does, and refuses what it cannot run in one line.

Ranks are forked processes (``torch.distributed`` with gloo, file rendezvous), as in
tests/test_distributed.py. Tolerance: FSDP2 sums the ranks' gradients in another order than one
process sums its micro-batches (a reduce-scatter of the accumulated gradients), so parameters after
one SGD step (lr 1) agree to 1e-6 absolute (float32), as under ddp; run metrics to 1e-4
(``assert_same_run``). The resume test (three runs in child processes, ~30 s) is marked ``slow``.
"""
import copy
import json

import pytest
import torch
from omegaconf import OmegaConf

from reasonzoo.config import validate
from reasonzoo.fsdp import strategy_of
from reasonzoo.plugins.loss.grpo import GRPOLoss, GRPOLossConfig
from reasonzoo.plugins.loss.k15 import K15Loss, K15LossConfig
from reasonzoo.plugins.loss.ppo import PPOLoss, PPOLossConfig
from reasonzoo.registry import PluginError, make_manager
from reasonzoo.testing import assert_same_run, on_gloo_ranks, uneven_groups
from reasonzoo.train import compose
from reasonzoo.trainer import CONFIG_FILE, collate, param_groups, train, update

LOSSES = {
    "k15": lambda: K15Loss(K15LossConfig()),  # a mean over rows
    "grpo_token_mean": lambda: GRPOLoss(GRPOLossConfig(aggregation="token-mean", clip_high=0.28)),
    # a KL to the frozen post-warm-up reference (captured full on rank 0, as shards on rank 1) swapped into the shards
    "grpo_kl": lambda: GRPOLoss(GRPOLossConfig(kl_coef=0.5, reuse_behaviour_logprobs=False)),
    "ppo_head": lambda: PPOLoss(PPOLossConfig(critic="head")),  # a replicated critic head beside the shards
    # the critic's warm-up: the trunk's forward under no_grad, no gradient reaches the shards
    "ppo_head_critic_warmup": lambda: PPOLoss(PPOLossConfig(critic="head", critic_warmup=1)),
}


def _batch(policy):
    return collate(uneven_groups(policy), policy.pad_token_id)


def _full(t):
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t.detach().clone()


def _step(make_ctx, tiny_policy, loss, overrides, dp=None, lr=1.0, optimizer=torch.optim.SGD):
    """Every trainable parameter's change after one update (``optimizer`` at ``lr``), the
    metrics, and on rank 0 of fsdp2 the full view's change (the weights the engine reads)."""
    policy = copy.deepcopy(tiny_policy)
    ctx = make_ctx(["train.minibatch_size=64", *overrides], policy=policy)
    plugin = LOSSES[loss]()
    ctx.hook = make_manager({"loss": plugin}).hook
    groups = param_groups(policy, ctx.hook.rz_trainable_parameters(ctx=ctx, policy=policy))
    if loss.startswith("ppo_head"):  # the same head on every rank and in the one-process run
        torch.manual_seed(1)
        for p in groups[1]["params"]:
            torch.nn.init.normal_(p, std=0.1)
    ctx.optimizer = optimizer(groups, lr=lr)
    before = [p.detach().clone() for g in groups for p in g["params"]]
    view = list(policy.model.parameters())
    ctx.data_parallel = dp
    if dp is not None:
        dp.shard(ctx)
    ctx.hook.rz_iteration_start(ctx=ctx)
    if loss == "grpo_kl":  # a reference away from the current weights (full on rank 0, shards on rank 1)
        plugin.reference = {k: v * 1.5 if v.is_floating_point() else v for k, v in plugin.reference.items()}
    metrics = update(ctx, _batch(policy), validate(ctx.cfg))
    after = [_full(p) for g in ctx.optimizer.param_groups for p in g["params"]]
    seen = [b - p.detach() for b, p in zip(before, view)] if dp is None or dp.rank == 0 else None
    return [b - a for b, a in zip(before, after)], metrics, seen


def _same_update(one, ranks, atol=1e-6):
    for deltas, _, _ in ranks:  # every rank took the one-process step
        for a, b in zip(one, deltas):
            torch.testing.assert_close(b, a, atol=atol, rtol=1e-5)
    for a, b in zip(one, ranks[0][2]):  # and rank 0's full view (engine, evaluation, checkpoints) holds it
        torch.testing.assert_close(b, a, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("microbatches", [1, 2, 3])
def test_fsdp2_on_two_ranks_gives_the_one_process_update(make_ctx, tiny_policy, tmp_path, loss, microbatches):
    args = [f"train.microbatches={microbatches}", "train.max_grad_norm=0"]
    one, metrics1, _ = _step(make_ctx, tiny_policy, loss, args)
    assert any(g.abs().max() > 1e-5 for g in one)
    assert metrics1.get("loss/kl", 1.0) > 1e-3  # the reference differs from the weights being trained
    ranks = on_gloo_ranks(2, lambda dp: _step(make_ctx, tiny_policy, loss, args, dp), tmp_path, strategy="fsdp2")
    _same_update(one, ranks)
    for _, metrics, _ in ranks:
        assert metrics["loss/total"] == pytest.approx(metrics1["loss/total"], abs=1e-6)
        assert set(metrics) == set(metrics1) | {"train/ranks"} and metrics["train/ranks"] == 2.0


def test_a_rank_without_a_micro_batch_still_joins_and_takes_the_step(make_ctx, tiny_policy, tmp_path):
    """Minibatches of one row (7 steps): rank 1 runs no micro-batch and still joins each all-gather
    and reduce-scatter; AdamW with clipping, so the sharded moments and the global norm are used."""
    args = ["train.minibatch_size=1", "train.microbatches=1", "train.max_grad_norm=0.5"]
    one, m1, _ = _step(make_ctx, tiny_policy, "k15", args, lr=0.01, optimizer=torch.optim.AdamW)
    assert any(g.abs().max() > 1e-6 for g in one)
    ranks = on_gloo_ranks(2, lambda dp: _step(make_ctx, tiny_policy, "k15", args, dp, lr=0.01, optimizer=torch.optim.AdamW),
                          tmp_path, strategy="fsdp2")
    _same_update(one, ranks, atol=1e-5)
    for _, metrics, _ in ranks:  # the norm before clipping is the full gradient's
        assert metrics["train/grad_norm"] == pytest.approx(m1["train/grad_norm"], rel=1e-5)
    assert m1["train/grad_norm"] > 0.5  # clipping took effect


def _held_bytes(make_ctx, tiny_policy, dp):
    """Bytes of the policy's parameters, gradients and AdamW moments this rank holds after one
    update, and of rank 0's full view."""
    from torch.distributed.tensor import DTensor

    def nbytes(ts):
        ts = [t.to_local() if isinstance(t, DTensor) else t for t in ts]
        return sum(t.numel() * t.element_size() for t in ts)

    policy = copy.deepcopy(tiny_policy)
    ctx = make_ctx(["train.minibatch_size=64", "train.microbatches=2"], policy=policy)
    ctx.hook = make_manager({"loss": LOSSES["k15"]()}).hook
    ctx.optimizer = torch.optim.AdamW(param_groups(policy, []), lr=1e-3)
    ctx.data_parallel = dp
    dp.shard(ctx)
    update(ctx, _batch(policy), validate(ctx.cfg))
    params = list(dp.sharded.policy.model.parameters())
    moments = [v for s in ctx.optimizer.state.values() for k, v in s.items() if k != "step"]
    view = nbytes(policy.model.parameters()) if dp.rank == 0 else 0
    return nbytes(params), nbytes([p.grad for p in params]), nbytes(moments), view


def test_each_rank_holds_half_of_the_parameters_gradients_and_optimizer_state(make_ctx, tiny_policy, tmp_path):
    """What fsdp2 shards: after an update each of 2 ranks holds half of every parameter, gradient
    and AdamW moment (dim 0 split; every dim 0 of the tiny model is even), and rank 0 also the full
    view its engine and checkpoints read."""
    full = sum(p.numel() for p in tiny_policy.model.parameters()) * 4  # float32 bytes
    held = on_gloo_ranks(2, lambda dp: _held_bytes(make_ctx, tiny_policy, dp), tmp_path, strategy="fsdp2")
    for rank, (params, grads, moments, view) in enumerate(held):
        assert (params, grads, moments) == (full // 2, full // 2, full)
        assert view == (full if rank == 0 else 0)


# ---- reasonzoo-train with launcher.trainer_ranks=2 launcher.strategy=fsdp2 --------------------------

FSDP2 = ["launcher.trainer_ranks=2", "launcher.strategy=fsdp2"]


def _records(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _run(tmp_path, name, tiny_overrides, *extra, iterations=3):
    """A run in this process (one rank, no FSDP state left here)."""
    cfg = compose([*tiny_overrides, f"iterations={iterations}", "train.microbatches=2", *extra])
    train(cfg, tmp_path / name)
    return _records(tmp_path / name)


def _cli_run(cli, args):
    """``reasonzoo-train args`` in a child process: fsdp2 runs leave the process's gloo threads
    behind (held by torch's DTensor caches), which later forked ranks of other tests must not inherit."""
    proc = cli(args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def _run_fsdp2(cli, tmp_path, name, tiny_overrides, iterations=3):
    _cli_run(cli, [*tiny_overrides, f"iterations={iterations}", "train.microbatches=2", *FSDP2,
                   f"hydra.run.dir={tmp_path / name}"])
    return _records(tmp_path / name)


def _stopped_after_1(tmp_path, name):
    """Make run ``name`` (1 iteration, finished) look killed after iteration 1 of 3."""
    saved = OmegaConf.load(tmp_path / name / CONFIG_FILE)
    saved.iterations = 3
    (tmp_path / name / CONFIG_FILE).write_text(OmegaConf.to_yaml(saved))
    (tmp_path / name / "summary.json").unlink()


def test_fsdp2_ranks_train_as_one(tmp_path, tiny_overrides, cli):
    """3 iterations on 2 fsdp2 ranks give the one-rank metrics (engine=torch decodes from rank 0's
    refreshed full weights, evaluation reads them) and checkpoint the one-process optimizer state."""
    one = _run(tmp_path, "one", tiny_overrides)
    two = _run_fsdp2(cli, tmp_path, "two", tiny_overrides)
    assert [r.get("train/ranks") for r in two] == [None, 2.0, 2.0, 2.0]
    assert "launcher.strategy=fsdp2: the policy's" in (tmp_path / "two" / "train.log").read_text()
    assert_same_run(one, two)
    ckpt = [torch.load(tmp_path / r / "checkpoints" / "iter_000003" / "state.pt", weights_only=False)["optimizer"]
            for r in ("one", "two")]
    assert ckpt[1]["state"].keys() == ckpt[0]["state"].keys()
    for i, s in ckpt[0]["state"].items():  # AdamW's moments: full, plain tensors, the one-rank run's
        for k, v in s.items():
            assert type(ckpt[1]["state"][i][k]) is torch.Tensor
            torch.testing.assert_close(ckpt[1]["state"][i][k], v, atol=1e-6, rtol=1e-4)



@pytest.mark.slow
def test_fsdp2_resumes_on_either_world_size(tmp_path, tiny_overrides, cli):
    """A 2-rank fsdp2 run stopped after iteration 1 resumes on 1 rank, and a 1-rank run resumes on
    2 fsdp2 ranks, both ending as the one-rank run from the start does (the checkpoints hold full
    weights and the one-process optimizer state). ~30 s: three runs in child processes."""
    one = _run(tmp_path, "one", tiny_overrides)
    _run_fsdp2(cli, tmp_path, "down", tiny_overrides, iterations=1)
    _stopped_after_1(tmp_path, "down")
    _cli_run(cli, [f"resume={tmp_path / 'down'}", "launcher.trainer_ranks=1"])
    assert_same_run(one, _records(tmp_path / "down"))
    _run(tmp_path, "up", tiny_overrides, iterations=1)
    _stopped_after_1(tmp_path, "up")
    out = _cli_run(cli, [f"resume={tmp_path / 'up'}", *FSDP2])
    assert_same_run(one, _records(tmp_path / "up"))
    assert "sharded over 2 ranks" in (tmp_path / "up" / "train.log").read_text(), out[-2000:]


@pytest.mark.parametrize("override, keys", [
    ("launcher.strategy=zero3", r"launcher.strategy='zero3': allowed values are ddp, fsdp2$"),
    ("loss.critic=model", r"^launcher.strategy=fsdp2 with loss.critic=model: .* use launcher.strategy=ddp or loss.critic=head$"),
])
def test_what_fsdp2_cannot_run_is_one_line_before_any_work(tmp_path, tiny_overrides, override, keys):
    recipe = ["recipe=ppo"] if "critic" in override else []
    cfg = compose([*tiny_overrides, *recipe, *FSDP2, override])
    with pytest.raises((PluginError, ValueError), match=keys):
        validate(cfg)  # the pre-flight validation (also every job of a sweep)
    with pytest.raises((PluginError, ValueError), match=keys):
        train(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_both_launchers_have_the_key_and_a_config_without_it_is_ddp():
    """launcher=local and launcher=ray both take launcher.strategy (default ddp); a config without
    the key (a third-party launcher) reads ddp on every rank."""
    from omegaconf import open_dict

    assert strategy_of(compose(["launcher=ray"])) == "ddp"
    assert strategy_of(compose(["launcher=ray", "launcher.strategy=fsdp2"])) == "fsdp2"
    assert strategy_of(compose(FSDP2)) == "fsdp2" and strategy_of(compose([])) == "ddp"
    cfg = compose([])
    with open_dict(cfg):
        del cfg.launcher["strategy"]
    assert strategy_of(cfg) == "ddp"
