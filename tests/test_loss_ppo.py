"""loss/ppo and reasonzoo.critic: GAE against hand values and a direct recursion, the clipped
value loss, the plugin's loss against a direct re-derivation with autograd, the critic's param
group in the trainer's update (micro-batches, per-group clipping, critic warm-up), the
rz_trainable_parameters hook, and the critic's state across an interrupted and resumed run."""
import copy
from dataclasses import replace

import pytest
import torch

from reasonzoo import critic as C
from reasonzoo.errors import RunInterrupted
from reasonzoo.plugins.loss.ppo import PPOLoss, PPOLossConfig
from reasonzoo.registry import PluginError, hookimpl, make_manager
from reasonzoo.testing import scored_group
from reasonzoo.trainer import collate, param_groups, update

# ---- GAE, rewards, whitening, value loss: hand-computed values -----------------------------------


def test_gae_hand_values():
    """One row: a prompt column, three response tokens, a pad column; reward 1 on the last token,
    V = 0.5, 0.2, 0.4.
    γ=1, λ=0.5: δ = (−0.3, 0.2, 0.6), Â_2 = 0.6, Â_1 = 0.2 + 0.5·0.6 = 0.5, Â_0 = −0.3 + 0.5·0.5 = −0.05;
    γ=0.9, λ=1: Â_t = 0.9^(2−t) − V_t = (0.31, 0.70, 0.60)."""
    mask = torch.tensor([[0.0, 1, 1, 1, 0]])
    values = torch.tensor([[9.0, 0.5, 0.2, 0.4, 9.0]])  # off-mask values are ignored
    rewards = C.outcome_rewards(torch.tensor([1.0]), mask)
    assert rewards.tolist() == [[0.0, 0.0, 0.0, 1.0, 0.0]]
    adv, ret = C.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert adv.flatten().tolist() == pytest.approx([0.0, -0.05, 0.5, 0.6, 0.0])
    assert ret.flatten().tolist() == pytest.approx([0.0, 0.45, 0.7, 1.0, 0.0])  # R = Â + V
    adv, ret = C.gae(rewards, values, mask, gamma=0.9, lam=1.0)
    assert adv.flatten().tolist() == pytest.approx([0.0, 0.31, 0.70, 0.60, 0.0])
    assert ret.flatten().tolist() == pytest.approx([0.0, 0.81, 0.9, 1.0, 0.0])  # λ = 1: discounted Monte-Carlo return
    adv, _ = C.gae(rewards, values, mask, gamma=1.0, lam=0.0)  # λ = 0: one-step TD errors
    assert adv.flatten().tolist() == pytest.approx([0.0, -0.3, 0.2, 0.6, 0.0])


def _direct_gae(rewards, values, mask, gamma, lam):
    """GAE written out per row from its definition on the row's response tokens."""
    adv = torch.zeros_like(values)
    for i in range(len(mask)):
        cols = [t for t in range(mask.shape[1]) if mask[i, t] > 0]
        r = [float(rewards[i, t]) for t in cols]
        v = [float(values[i, t]) for t in cols] + [0.0]  # terminal after the last token
        deltas = [r[k] + gamma * v[k + 1] - v[k] for k in range(len(cols))]
        a = 0.0
        for k in reversed(range(len(cols))):
            a = deltas[k] + gamma * lam * a
            adv[i, cols[k]] = a
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.7), (1.0, 1.0), (0.5, 0.0)])
def test_gae_matches_a_direct_recursion(gamma, lam):
    g = torch.Generator().manual_seed(0)
    n, L = 6, 12
    starts, lengths = [0, 2, 3, 5, 1, 4], [12, 7, 1, 4, 0, 8]  # a row with no token, one with one
    mask = torch.zeros(n, L)
    for i, (s, k) in enumerate(zip(starts, lengths)):
        mask[i, s : s + k] = 1
    rewards = torch.randn(n, L, generator=g) * mask  # dense rewards too, not only the outcome's
    values = torch.randn(n, L, generator=g)
    adv, ret = C.gae(rewards, values, mask, gamma, lam)
    direct = _direct_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, direct)
    torch.testing.assert_close(ret, (direct + values) * mask)
    assert adv[4].abs().sum() == 0


def test_gae_refuses_out_of_range():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=r"gamma=1.5.*\[0, 1\]"):
        C.gae(z, z, z, 1.5, 0.9)
    with pytest.raises(ValueError, match=r"lam=-0.1"):
        C.gae(z, z, z, 1.0, -0.1)


def test_outcome_rewards_on_the_last_response_token():
    mask = torch.tensor([[0.0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    out = C.outcome_rewards(torch.tensor([2.0, -1.0, 5.0]), mask)
    assert out.tolist() == [[0, 0, 2, 0], [0, 0, 0, -1], [0, 0, 0, 0]]


def test_whiten_hand_values():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 50.0, 60.0]])
    mask = torch.tensor([[1.0, 1, 0], [1, 0, 0]])
    out = C.whiten(x, mask, eps=0.0)  # masked 1, 2, 3: mean 2, unbiased std 1
    assert out.flatten().tolist() == pytest.approx([-1.0, 0.0, 0.0, 1.0, 0.0, 0.0])


def test_value_loss_clipping_hand_values():
    """V_old = 0.5, ε_v = 0.2:
    V=1.0, R=0.9: (0.1)² = 0.01 vs clip → 0.7: (−0.2)² = 0.04 → ½·0.04 = 0.02, clipped: gradient 0;
    V=0.0, R=0.9: 0.81 vs clip → 0.3: 0.36 → ½·0.81 = 0.405, gradient V − R = −0.9;
    V=0.5, R=0.0: both 0.25 → 0.125, gradient 0.5."""
    v = torch.tensor([[1.0, 0.0, 0.5]], requires_grad=True)
    old = torch.full((1, 3), 0.5)
    ret = torch.tensor([[0.9, 0.9, 0.0]])
    loss, clipped = C.value_loss(v, old, ret, clip=0.2)
    assert loss.flatten().tolist() == pytest.approx([0.02, 0.405, 0.125])
    assert clipped.tolist() == [[True, False, False]]
    (g,) = torch.autograd.grad(loss.sum(), v)
    assert g.flatten().tolist() == pytest.approx([0.0, -0.9, 0.5])
    loss, clipped = C.value_loss(v, old, ret, clip=None)
    assert loss.flatten().tolist() == pytest.approx([0.005, 0.405, 0.125]) and not clipped.any()


# ---- the plugin on a toy batch --------------------------------------------------------------------




def _batch(policy):
    return collate([scored_group(policy, [1, 0, 0, 1], ["3#3", "#4", "1+2=3;#9", "12;#3"]),
                    scored_group(policy, [1, 0], ["1+2=3;#3", "#7"], uid="q")], policy.pad_token_id)


def _perturb(module, scale, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def _plugin(ctx, policy, **kw):
    plugin = PPOLoss(PPOLossConfig(**kw))
    groups = plugin.rz_trainable_parameters(ctx, policy)
    assert [g["name"] for g in groups] == ["critic"]
    plugin.rz_iteration_start(ctx)
    return plugin


def _prepare(plugin, ctx, batch):
    with torch.no_grad():
        extras = plugin.rz_prepare_update(ctx, batch)
    return extras, replace(batch, extras=extras)


@pytest.mark.parametrize("critic", ["head", "model"])
def test_ppo_loss_matches_a_direct_rederivation(make_ctx, tiny_policy, critic):
    """θ and the critic moved after V_old, π_old were taken: the plugin's loss and its gradients
    (policy and critic) equal PPO's objective written out token by token."""
    policy = tiny_policy
    ctx = make_ctx(["train.minibatch_size=2"], policy=policy)
    plugin = _plugin(ctx, policy, critic=critic, clip_low=0.02, clip_high=0.03, value_clip=0.05, vf_coef=0.3,
                     gamma=0.9, lam=0.8)
    _perturb(plugin.critic, 0.3, seed=2)  # V_old ≠ 0
    batch = _batch(policy)
    extras, b = _prepare(plugin, ctx, batch)
    assert extras["pg/advantage"].shape == extras["ppo/old_value"].shape == extras["ppo/return"].shape == b.response_mask.shape
    m = b.response_mask
    # the extras are GAE of the outcome reward under the critic's values, whitened
    with torch.no_grad():
        if critic == "head":
            v_old = plugin.critic(policy.logprobs_and_hidden(b.input_ids, b.attention_mask)[1])
        else:
            v_old = plugin.critic(b.input_ids, b.attention_mask)
    adv, ret = C.gae(C.outcome_rewards(b.returns, m), v_old, m, 0.9, 0.8)
    torch.testing.assert_close(extras["ppo/return"], ret)
    torch.testing.assert_close(extras["pg/advantage"], C.whiten(adv, m))
    a = extras["pg/advantage"][m > 0]
    assert float(a.mean()) == pytest.approx(0.0, abs=1e-6) and float(a.std()) == pytest.approx(1.0, abs=1e-4)

    _perturb(policy.model, 0.05, seed=4)
    _perturb(plugin.critic, 0.05, seed=5)
    params = list(policy.model.parameters()) + list(plugin.critic.parameters())
    out = plugin.rz_loss(ctx, b)
    assert out.metrics["loss/clipfrac_low"] + out.metrics["loss/clipfrac_high"] > 0
    assert 0 < out.metrics["loss/value_clipfrac"] < 1
    assert out.denominator == float(m.sum())

    lp = policy.token_logprobs(b.input_ids, b.attention_mask)
    v = plugin.critic(policy.logprobs_and_hidden(b.input_ids, b.attention_mask)[1]) if critic == "head" \
        else plugin.critic(b.input_ids, b.attention_mask)
    old_lp, v_old, R, A = extras["pg/old_logprob"], extras["ppo/old_value"], extras["ppo/return"], extras["pg/advantage"]
    per_tok = []
    for i in range(len(b)):
        t = m[i] > 0
        ratio = (lp[i][t] - old_lp[i][t]).exp()
        surr = torch.minimum(ratio * A[i][t], ratio.clamp(0.98, 1.03) * A[i][t])
        v_clip = v_old[i][t] + (v[i][t] - v_old[i][t]).clamp(-0.05, 0.05)
        vf = 0.5 * torch.maximum((v[i][t] - R[i][t]) ** 2, (v_clip - R[i][t]) ** 2)
        per_tok.append(-surr + 0.3 * vf)
    direct = torch.cat(per_tok).mean()  # token-mean
    torch.testing.assert_close(out.loss, direct)
    got = torch.autograd.grad(out.loss, params, allow_unused=True)
    want = torch.autograd.grad(direct, params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in got[-2:])  # the critic's head learns
    for x, y in zip(got, want):
        if x is not None:
            torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-4)


def test_value_model_is_a_separate_copy_of_the_trunk(make_ctx, qwen2_gqa_policy):
    """critic=model on a Qwen2 (biases, grouped-query attention): built before the warm-up, it takes
    the policy's weights at the first iteration (its trunk then computes the policy's last hidden
    states), owns separate parameters, and later iterations do not copy again."""
    policy = qwen2_gqa_policy
    ctx = make_ctx([], policy=policy)
    plugin = PPOLoss(PPOLossConfig(critic="model"))
    plugin.rz_trainable_parameters(ctx, policy)
    _perturb(policy.model, 0.05, seed=1)  # the warm-up moves the policy after the critic was built
    plugin.rz_iteration_start(ctx)
    b = _batch(policy)
    with torch.no_grad():
        _, hidden = policy.logprobs_and_hidden(b.input_ids, b.attention_mask)
        trunk = plugin.critic.trunk(input_ids=b.input_ids).last_hidden_state
    torch.testing.assert_close(trunk, hidden)
    assert not {id(q) for q in plugin.critic.parameters()} & {id(q) for q in policy.model.parameters()}
    _perturb(plugin.critic, 0.05, seed=2)
    plugin.rz_iteration_start(ctx)  # iteration 2: keeps its own weights
    with torch.no_grad():
        assert not torch.allclose(plugin.critic.trunk(input_ids=b.input_ids).last_hidden_state, hidden)


def test_bad_options_name_the_key():
    with pytest.raises(ValueError, match="loss.critic='mlp'.*head, model"):
        PPOLoss(PPOLossConfig(critic="mlp"))
    with pytest.raises(ValueError, match="loss.value_clip=-0.1"):
        PPOLoss(PPOLossConfig(value_clip=-0.1))
    with pytest.raises(ValueError, match="loss.clip_low=1.0"):
        PPOLoss(PPOLossConfig(clip_low=1.0))


def test_bad_option_refused_at_composition():
    from reasonzoo.config import validate
    from reasonzoo.train import compose

    with pytest.raises(PluginError, match=r"loss.lam=1.5.*\[0, 1\]"):
        validate(compose(["recipe=ppo", "loss.lam=1.5"]))
    with pytest.raises(PluginError, match="loss.vf_coef"):
        validate(compose(["recipe=ppo", "loss.vf_coef=0"]))


# ---- the critic in the trainer's update ----------------------------------------------------------


def _update_ctx(make_ctx, tiny_policy, overrides, iteration=1, opt=lambda groups: torch.optim.SGD(groups, lr=1.0), **kw):
    policy = copy.deepcopy(tiny_policy)
    ctx = make_ctx(overrides, policy=policy, iteration=iteration)
    plugin = PPOLoss(PPOLossConfig(**kw))
    ctx.hook = make_manager({"loss": plugin}).hook
    groups = param_groups(policy, ctx.hook.rz_trainable_parameters(ctx=ctx, policy=policy))
    ctx.optimizer = opt(groups)
    ctx.hook.rz_iteration_start(ctx=ctx)
    _perturb(plugin.critic, 0.3, seed=2)
    return ctx, plugin


def _params(ctx):
    return [p.detach().clone() for g in ctx.optimizer.param_groups for p in g["params"]]


@pytest.mark.parametrize("critic", ["head", "model"])
def test_microbatches_give_the_same_step_for_policy_and_critic(make_ctx, tiny_policy, critic):
    """The micro-batch division covers the critic's param group: 1, 2, 3 parts, one SGD step, the
    same parameters (policy and critic) to 1e-6."""
    from reasonzoo.config import validate

    after = {}
    for k in (1, 2, 3):
        ctx, _ = _update_ctx(make_ctx, tiny_policy, [f"train.microbatches={k}", "train.minibatch_size=64",
                                                     "train.max_grad_norm=0"], critic=critic)
        before = _params(ctx)
        update(ctx, _batch(ctx.policy), validate(ctx.cfg))
        after[k] = [b - a for b, a in zip(before, _params(ctx))]
    n_policy = len(list(tiny_policy.model.parameters()))
    assert any(d.abs().max() > 1e-6 for d in after[1][n_policy:])  # the critic moved
    for k in (2, 3):
        for x, y in zip(after[1], after[k]):
            torch.testing.assert_close(y, x, atol=1e-6, rtol=1e-5)


def test_grad_norm_clipped_per_param_group(make_ctx, tiny_policy):
    """max_grad_norm = 1e-3 with SGD(lr=1): the policy's and the critic's steps each have norm
    1e-3 (one global clip would share 1e-3 between them); both norms are logged."""
    from reasonzoo.config import validate

    ctx, _ = _update_ctx(make_ctx, tiny_policy, ["train.microbatches=1", "train.minibatch_size=64",
                                                 "train.max_grad_norm=0.001"], critic="head")
    before = _params(ctx)
    metrics = update(ctx, _batch(ctx.policy), validate(ctx.cfg))
    step = [b - a for b, a in zip(before, _params(ctx))]
    n_policy = len(list(tiny_policy.model.parameters()))
    norm = lambda ts: float(torch.sqrt(sum((t * t).sum() for t in ts)))  # noqa: E731
    assert metrics["train/grad_norm"] > 1e-3 and metrics["train/grad_norm/critic"] > 1e-3
    assert norm(step[:n_policy]) == pytest.approx(1e-3, rel=1e-3)
    assert norm(step[n_policy:]) == pytest.approx(1e-3, rel=1e-3)


@pytest.mark.parametrize("critic", ["head", "model"])
def test_critic_warmup_leaves_the_policy_unchanged(make_ctx, tiny_policy, critic):
    from reasonzoo.config import validate

    for it, policy_moves in ((2, False), (3, True)):  # critic_warmup=2: iterations 1 and 2 train the critic only
        ctx, _ = _update_ctx(make_ctx, tiny_policy, ["train.minibatch_size=3"], iteration=it, critic=critic,
                             critic_warmup=2, opt=lambda groups: torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.1))
        before = _params(ctx)
        metrics = update(ctx, _batch(ctx.policy), validate(ctx.cfg))
        moved = [not torch.equal(b, a) for b, a in zip(before, _params(ctx))]
        n_policy = len(list(tiny_policy.model.parameters()))
        assert any(moved[n_policy:]), "the critic learns"
        assert any(moved[:n_policy]) == policy_moves, it
        assert ("loss/ppo" in metrics) == policy_moves and "loss/value" in metrics


def test_param_groups_refuse_repeated_names_and_shared_parameters(tiny_policy):
    head = torch.nn.Linear(2, 1)
    groups = param_groups(tiny_policy, [[{"params": head.parameters(), "name": "critic", "lr": 0.5}], None])
    assert [g["name"] for g in groups] == ["policy", "critic"] and groups[1]["lr"] == 0.5
    with pytest.raises(PluginError, match="name 'policy' missing or repeated"):
        param_groups(tiny_policy, [[{"params": head.parameters(), "name": "policy"}]])
    with pytest.raises(PluginError, match="name None"):
        param_groups(tiny_policy, [[{"params": head.parameters()}]])
    with pytest.raises(PluginError, match="group 'x' holds parameters of the policy"):
        param_groups(tiny_policy, [[{"params": [next(tiny_policy.model.parameters())], "name": "x"}]])


def test_checkpoint_state_round_trip_and_kind_mismatch(make_ctx, tiny_policy):
    ctx = make_ctx([], policy=tiny_policy)
    plugin = _plugin(ctx, tiny_policy, critic="model")
    _perturb(plugin.critic, 0.1, seed=7)
    state = copy.deepcopy(plugin.rz_checkpoint_state(ctx))
    fresh = PPOLoss(PPOLossConfig(critic="model"))
    fresh.rz_trainable_parameters(ctx, tiny_policy)
    held = list(fresh.critic.parameters())
    fresh.rz_load_state(ctx, state)
    assert all(a is b for a, b in zip(held, fresh.critic.parameters()))  # in place: the optimizer's references hold
    for a, b in zip(plugin.critic.parameters(), fresh.critic.parameters()):
        assert torch.equal(a, b)
    assert fresh.critic_initialised
    other = PPOLoss(PPOLossConfig(critic="head"))
    other.rz_trainable_parameters(ctx, tiny_policy)
    with pytest.raises(ValueError, match="loss.critic='head': the checkpoint's critic is 'model'"):
        other.rz_load_state(ctx, state)


# ---- kill and resume ------------------------------------------------------------------------------

WARM = ["warmup.steps=150", "eval.every=0", "eval.before=false", "checkpoint.keep=0", "iterations=3",
        "recipe=ppo", "loss.critic_warmup=1", "train.epochs=2"]


class _StopAt:
    """Interrupts a run at the start of iteration ``at`` (after iteration ``at - 1`` is checkpointed),
    as a kill would leave it."""

    def __init__(self, at):
        self.at = at

    @hookimpl
    def rz_iteration_start(self, ctx):
        if ctx.iteration == self.at:
            raise RunInterrupted(15)


@pytest.mark.parametrize("critic,after", [("head", 1), ("model", 0)])
def test_critic_state_across_interrupt_and_resume(tmp_path, tiny_overrides, run_metrics, monkeypatch, critic, after):
    """A run stopped after iteration ``after`` and resumed in a fresh plugin manager ends with the
    metrics, policy weights, critic weights and optimizer state of an uninterrupted run (head, after
    1: at the end of the critic warm-up; model, after 0: before the value model is copied from the
    warmed-up policy). The subprocess kill of a PPO run is the slow test below."""
    from reasonzoo import trainer
    from reasonzoo.checkpoint import load_state
    from reasonzoo.train import compose

    args = tiny_overrides + WARM + [f"loss.critic={critic}"]
    trainer.train(compose(args), tmp_path / "ref")
    real = trainer.make_manager
    monkeypatch.setattr(trainer, "make_manager", lambda plugins: (pm := real(plugins), pm.register(_StopAt(after + 1)))[0])
    with pytest.raises(RunInterrupted):
        trainer.train(compose(args), tmp_path / "killed")
    monkeypatch.setattr(trainer, "make_manager", real)
    assert not (tmp_path / "killed" / "final").exists()
    trainer.train(compose(args + [f"resume={tmp_path / 'killed'}"]), tmp_path / "killed")
    ref, killed = run_metrics(tmp_path / "ref"), run_metrics(tmp_path / "killed")
    assert [r["iteration"] for r in killed] == [0, 1, 2, 3]
    assert "loss/ppo" not in ref[1] and "loss/ppo" in ref[2]  # critic warm-up, then PPO
    assert killed == ref
    a = load_state(tmp_path / "ref" / "checkpoints" / "iter_000003")
    b = load_state(tmp_path / "killed" / "checkpoints" / "iter_000003")
    crit_a, crit_b = a["plugins"]["loss/ppo"]["critic"], b["plugins"]["loss/ppo"]["critic"]
    assert crit_a.keys() == crit_b.keys() and all(torch.equal(crit_a[k], crit_b[k]) for k in crit_a)
    assert any(v.abs().sum() > 0 for k, v in crit_a.items() if "head" in k or "linear" in k)  # the critic was trained
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert [g["name"] for g in a["optimizer"]["param_groups"]] == ["policy", "critic"]
    from transformers import AutoModelForCausalLM

    pa = AutoModelForCausalLM.from_pretrained(tmp_path / "ref" / "final").state_dict()
    pb = AutoModelForCausalLM.from_pretrained(tmp_path / "killed" / "final").state_dict()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.slow  # three processes; the in-process round trip above runs by default
def test_ppo_kill_and_resume_matches_uninterrupted(tiny_overrides, kill_and_resume, run_metrics):
    """SIGKILL after iteration 2 of a value-model PPO run, then resume=: the same metrics."""
    ref, killed = kill_and_resume(tiny_overrides + WARM + ["loss.critic=model", "iterations=4"], after=2)
    assert run_metrics(killed) == run_metrics(ref)
