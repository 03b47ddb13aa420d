"""model/hf, warmup/sft, warmup/none, rollout/sync, distiller/merge, distiller/none, logger/wandb, logger/none."""

import pytest
import torch

from reasonzoo.checkpoint import load_model_weights
from reasonzoo.plugins.distiller.merge import Merge, MergeConfig, merge_state_dicts
from reasonzoo.plugins.distiller.none import NoDistiller
from reasonzoo.plugins.engine.torch import TorchEngine, TorchEngineConfig
from reasonzoo.plugins.logger.none import NoLogger
from reasonzoo.plugins.logger.wandb import Wandb, WandbConfig
from reasonzoo.plugins.model.hf import HFModel, HFModelConfig, TinyConfig
from reasonzoo.plugins.rollout.sync import Sync
from reasonzoo.plugins.task.modarith import ModArith, ModArithConfig
from reasonzoo.plugins.warmup.none import NoWarmup
from reasonzoo.plugins.warmup.sft import SFTConfig, SFTWarmup
from reasonzoo.policy import Policy
from reasonzoo.types import SamplingParams


def test_hf_model_builds_saves_and_reloads(make_ctx, tmp_path):
    plugin = HFModel(HFModelConfig(tiny=TinyConfig(arch="qwen2", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)))
    policy = plugin.rz_build_policy(make_ctx())
    assert type(policy.model).__name__ == "Qwen2ForCausalLM"
    policy.save(tmp_path / "m")
    again = HFModel(HFModelConfig(path=str(tmp_path / "m"))).rz_build_policy(make_ctx())
    ids = torch.tensor([policy.encode_prompt("1+2=")])
    torch.testing.assert_close(policy.model(input_ids=ids).logits, again.model(input_ids=ids).logits)
    assert again.tokenizer.decode(ids[0], skip_special_tokens=True) == "1+2="
    with pytest.raises(FileNotFoundError, match="model.path='/nonexistent'"):
        HFModel(HFModelConfig(path="/nonexistent")).rz_build_policy(make_ctx())
    with pytest.raises(ValueError, match="model.dtype='fp8'"):
        HFModel(HFModelConfig(dtype="fp8"))


def test_sft_warmup_learns_and_caches(make_ctx, tiny_policy):
    ctx = make_ctx(["warmup.steps=40", "warmup.batch_size=16", "warmup.lr=1e-2"])
    problems = ModArith(ModArithConfig(min_steps=2, max_steps=2, train_size=200, eval_per_difficulty=5)).rz_load_problems(ctx, "train")
    sft = SFTWarmup(SFTConfig(steps=40, batch_size=16, lr=1e-2, warmup_steps=5))
    start = [p.detach().clone() for p in tiny_policy.model.parameters()]
    first = sft.rz_warmup(ctx, tiny_policy, problems)
    assert first["warmup/cached"] == 0.0 and first["warmup/loss"] < 3.0  # from ~ln(100) = 4.6 at init
    trained = [p.detach().clone() for p in tiny_policy.model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(start, trained))
    with torch.no_grad():  # scramble, then the cache must restore the trained weights
        for p in tiny_policy.model.parameters():
            p.zero_()
    again = sft.rz_warmup(ctx, tiny_policy, problems)
    assert again["warmup/cached"] == 1.0
    for a, b in zip(trained, tiny_policy.model.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="warmup=none"):
        SFTWarmup(SFTConfig(cache=False)).rz_warmup(ctx, tiny_policy, [p.__class__(uid="x", prompt="", answer="") for p in problems[:1]])
    with pytest.raises(ValueError, match="warmup.mix"):
        SFTWarmup(SFTConfig(mix=[0.0, 0.0]))


def test_sft_warmups_started_together_train_once_and_share_the_cache(make_ctx, tiny_policy, monkeypatch, tmp_path):
    """Two runs needing the same warm-up at once (a sweep's two parallel jobs; two runs started in
    one folder, where the second's rename into the cache failed in CI): the first trains, the other
    waits on the key's lock and loads its result; the finished cache is never removed."""
    import copy
    import threading
    import time

    ctx = make_ctx([f"cache_dir={tmp_path / 'cache'}"])  # its own cache: this test's policy is not the config's model
    problems = ModArith(ModArithConfig(min_steps=2, max_steps=2, train_size=50, eval_per_difficulty=5)).rz_load_problems(ctx, "train")
    sft = SFTWarmup(SFTConfig(steps=2, batch_size=4))
    trained = []

    def slow_train(ctx_, policy, usable):
        trained.append(threading.get_ident())
        time.sleep(0.5)  # the other thread arrives while this one trains
        with torch.no_grad():
            for p in policy.model.parameters():
                p.add_(1.0)
        return {"warmup/loss": 0.5}

    monkeypatch.setattr(sft, "train", slow_train)
    policies = [tiny_policy, Policy(model=copy.deepcopy(tiny_policy.model), tokenizer=tiny_policy.tokenizer)]
    results, errors = [None, None], []

    def run(i):
        try:
            results[i] = sft.rz_warmup(ctx, policies[i], problems)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(trained) == 1
    assert sorted(r["warmup/cached"] for r in results) == [0.0, 1.0]
    for a, b in zip(policies[0].model.parameters(), policies[1].model.parameters()):
        torch.testing.assert_close(a, b)


def test_no_warmup(make_ctx, tiny_policy):
    before = [p.clone() for p in tiny_policy.model.parameters()]
    assert NoWarmup(None).rz_warmup(make_ctx(), tiny_policy, []) == {}
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_policy.model.parameters()))


def test_torch_engine_plugin_builds_engine(make_ctx, tiny_policy):
    from reasonzoo.engine import Engine
    from reasonzoo.plugins.engine.torch import TorchEnginePlugin
    from reasonzoo.registry import make_manager

    hook = make_manager({"engine/torch": TorchEnginePlugin(TorchEngineConfig(max_batch=4))}).hook
    engine = hook.rz_build_engine(ctx=make_ctx(), policy=tiny_policy)
    assert isinstance(engine, Engine) and engine.policy is tiny_policy and engine.cfg.max_batch == 4


def test_sync_rollout_groups(make_ctx, tiny_policy):
    ctx = make_ctx(policy=tiny_policy)
    ctx.policy_version = 7
    problems = ModArith(ModArithConfig(min_steps=2, max_steps=2, train_size=10, eval_per_difficulty=2)).rz_load_problems(ctx, "train")[:3]
    groups = Sync(None).rz_rollout(ctx, problems, TorchEngine(TorchEngineConfig(), tiny_policy), 4, SamplingParams(max_new_tokens=8))
    assert [g.problem for g in groups] == problems
    for g in groups:
        assert len(g.rollouts) == 4 and g.rewards is None
        for r in g.rollouts:
            assert r.prompt_ids == tiny_policy.encode_prompt(g.problem.prompt)
            assert r.segments == ((r.segments[0].__class__(0, r.length, 7)),)
            assert r.text == tiny_policy.decode(r.response_ids)


def test_merge_hand_values():
    long = {"w": torch.tensor([1.0, 3.0]), "step": torch.tensor([5])}
    short = {"w": torch.tensor([3.0, 5.0]), "step": torch.tensor([9])}
    out = merge_state_dicts(long, short, 0.5)
    assert out["w"].tolist() == [2.0, 4.0] and out["step"].tolist() == [5]
    assert merge_state_dicts(long, short, 0.25)["w"].tolist() == [1.5, 3.5]
    with pytest.raises(ValueError, match="differ in parameters"):
        merge_state_dicts(long, {"w": short["w"]}, 0.5)


def test_merge_distiller_reads_another_run(make_ctx, tiny_policy, tmp_path):
    other = Policy(model=type(tiny_policy.model)(tiny_policy.model.config), tokenizer=tiny_policy.tokenizer)
    other.save(tmp_path / "short")
    merged = Merge(MergeConfig(short_model=str(tmp_path / "short"), alpha=0.5)).rz_distill(make_ctx(), tiny_policy)
    short = load_model_weights(tmp_path / "short")
    name = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(merged.model.state_dict()[name], 0.5 * tiny_policy.model.state_dict()[name] + 0.5 * short[name])
    assert NoDistiller(None).rz_distill(make_ctx(), tiny_policy) is None
    with pytest.raises(ValueError, match="distiller.alpha"):
        Merge(MergeConfig(short_model="x", alpha=2.0))


def test_wandb_offline_logger(make_ctx, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    ctx = make_ctx()
    logger = Wandb(WandbConfig())
    logger.rz_run_start(ctx)
    logger.rz_log_metrics(ctx, {"reward/mean": 0.5}, 1)
    logger.rz_run_end(ctx, {})
    runs = list((ctx.run_dir / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())
    assert not hasattr(NoLogger, "rz_log_metrics")
    with pytest.raises(ValueError, match="logger.mode='cloud'"):
        Wandb(WandbConfig(mode="cloud"))


def test_wandb_run_id_is_per_run_not_per_path(make_ctx, monkeypatch):
    """The wandb id was a hash of the run directory's path: a run replacing another
    (overwrite=true) or one at the same path on another machine resumed the old wandb run
    (resume="allow") and logged its steps into it. Now: one id per run, kept for resume=."""
    from reasonzoo.rundir import clear_run

    monkeypatch.delenv("WANDB_MODE", raising=False)
    ids = []
    for _ in range(3):
        ctx = make_ctx()
        logger = Wandb(WandbConfig())
        logger.rz_run_start(ctx)
        ids.append(logger.run.id)
        logger.rz_run_end(ctx, {})
        if len(ids) == 2:
            clear_run(ctx.run_dir)  # what overwrite=true does once the new run's set-up succeeded
    assert ids[0] == ids[1] != ids[2]  # the second start is a resume of the first run
