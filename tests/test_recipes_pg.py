"""End to end: every policy-gradient contrast recipe runs two iterations on the tiny task and
changes the policy; each recipe differs from k15 only by its loss (DAPO also by dynamic sampling
and overlong filtering)."""
import math

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from reasonzoo.train import compose
from reasonzoo.trainer import train

#: recipe -> (loss plugin, the settings that define it)
RECIPES = {
    "grpo": ("grpo", {"advantage_scale": "group", "aggregation": "seq-mean-token-mean", "kl_coef": 0.04}),
    "dr_grpo": ("grpo", {"advantage_scale": "none", "aggregation": "seq-mean-token-sum-norm", "kl_coef": 0.0}),
    "dapo": ("grpo", {"aggregation": "token-mean", "clip_low": 0.2, "clip_high": 0.28, "drop_uniform_groups": True}),
    "rloo": ("rloo", {}),
    "reinforce": ("reinforce", {}),
    "rest": ("rest", {}),
    "ppo": ("ppo", {"critic": "head", "gamma": 1.0, "lam": 1.0, "critic_lr": 1e-3, "critic_warmup": 2}),
}
# 150 warm-up steps (cached for the session after the first): the policy then answers some
# problems correctly, so every loss has something to fit.
WARM = ["warmup.steps=150", "eval.every=0", "eval.before=false", "iterations=2", "checkpoint.keep=0"]


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_contrast_recipe_differs_from_k15_only_by_its_loss(recipe):
    base = OmegaConf.to_container(compose(["recipe=k15"]), resolve=True)
    cfg = OmegaConf.to_container(compose([f"recipe={recipe}"]), resolve=True)
    name, settings = RECIPES[recipe]
    assert cfg["loss"]["name"] == name
    for k, v in settings.items():
        assert cfg["loss"][k] == v, k
    differ = {k for k in set(base) | set(cfg) if base.get(k) != cfg.get(k)}
    if recipe != "dapo":
        assert differ == {"loss"}, differ
    else:  # + dynamic sampling (a rollout scheduler drawing 3x the groups it keeps) and overlong filtering
        assert differ == {"loss", "reward", "rollout", "prompts_per_iteration"}, differ
        assert {k for k in cfg["reward"] if cfg["reward"][k] != base["reward"][k]} == {"truncated"}
        assert cfg["rollout"] == {"name": "dynamic", "groups": 16, "round_size": 16} and cfg["prompts_per_iteration"] == 48


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_runs_and_moves_the_policy(tmp_path, tiny_overrides, run_metrics, recipe):
    # grpo: one optimizer step per iteration (π_old = the loss's own detached forward); the others: two
    extra = {"grpo": ["train.minibatch_size=64"],  # one step per iteration: π_old = the loss's own detached forward
             "dapo": ["prompts_per_iteration=12", "rollout.groups=4", "rollout.round_size=4"],  # refills
             "ppo": ["loss.critic_warmup=0"]}.get(recipe, [])  # the policy moves from iteration 1 (warm-up: test_loss_ppo.py)
    train(compose(tiny_overrides + WARM + extra + [f"recipe={recipe}"]), tmp_path)
    recs = run_metrics(tmp_path)
    name = RECIPES[recipe][0]
    assert [r["iteration"] for r in recs] == [0, 1, 2]
    updated = [r for r in recs[1:] if r["response/groups"] > 0]  # dapo: an iteration may find no informative group
    assert updated and any(r["reward/accuracy"] > 0 for r in updated)
    for r in updated:
        assert f"loss/{name}" in r and math.isfinite(r["loss/total"]), r
    if recipe == "dapo":  # dynamic sampling kept only groups whose rewards vary
        assert all(r["rollout/dynamic_kept"] == r["response/groups"] <= 4 for r in recs[1:])
        assert all(r["rollout/dynamic_generated"] >= 4 for r in recs[1:])
    if recipe == "grpo":  # KL to the post-warm-up reference: 0 during the first (single-step) update, > 0 after it
        assert recs[1]["loss/kl"] == pytest.approx(0.0, abs=1e-6) and recs[2]["loss/kl"] > 0
    start = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoints" / "iter_000000" / "model")  # warmed up
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), final.parameters()))


@pytest.mark.slow  # three processes, ~1 min on a loaded box; the state round trip is in test_losses_pg.py
def test_resume_keeps_the_frozen_reference(tiny_overrides, kill_and_resume, run_metrics):
    """A run killed after iteration 1 and resumed ends exactly where the uninterrupted run ends:
    the KL reference comes from the checkpoint, not from the weights at resume (with one optimizer
    step per iteration those would give the next iteration a KL of exactly 0)."""
    args = tiny_overrides + WARM + ["recipe=grpo", "train.minibatch_size=64", "iterations=4"]
    ref, killed = kill_and_resume(args, after=1)
    recs = run_metrics(ref)
    assert all(r["loss/kl"] > 0 for r in recs[2:])
    assert run_metrics(killed) == recs
