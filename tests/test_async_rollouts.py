"""Asynchronous rollouts (max_staleness=1): iteration i+1's rollouts are generated while iteration i
trains, from the weights iteration i starts at; every trained token's staleness is logged; same seed,
same results; a run interrupted after a checkpoint resumes exactly (the batch generated ahead is in
the checkpoint).

The engine here is engine/torch over its own copy of the weights (the trainer's copied in at
``sync_weights``), standing in for the Ray engine actors and vLLM, which hold their own copies
(tests/test_ray_launcher.py runs the same under launcher=ray).
"""
import copy
import json

import pytest
import torch

from reasonzoo import hookimpl
from reasonzoo.config import validate
from reasonzoo.errors import RunInterrupted
from reasonzoo.plugins.engine.torch import TorchEngine, TorchEnginePlugin
from reasonzoo.registry import PluginError
from reasonzoo.train import compose
from reasonzoo.trainer import train

#: Wall-clock measurements (differ between identical runs) and the placement's counters.
WALL = ("warmup/cached", "warmup/seconds", "response/tokens_per_s", "response/generated_tokens_per_s", "time/", "ray/")


class CopyEngine:
    """engine/torch generating from a copy of the policy (weights copied in by sync_weights)."""

    def __init__(self, cfg, policy):
        self.trainer_policy = policy
        self.own = copy.deepcopy(policy)
        self.inner = TorchEngine(cfg, self.own)
        self.logprobs_match_policy = getattr(self.inner, "logprobs_match_policy", False)
        self.versions = []  # the trainer's policy version at each sync

    def generate(self, requests, params, generator):
        return self.inner.generate(requests, params, generator)

    def sync_weights(self):
        with torch.no_grad():
            self.own.model.load_state_dict(self.trainer_policy.model.state_dict())
        self.inner.sync_weights()


@pytest.fixture
def copying_engine(monkeypatch):
    monkeypatch.setattr(TorchEnginePlugin, "separate_weights", True, raising=False)
    build = hookimpl(lambda self, ctx, policy: CopyEngine(self.cfg, policy))
    monkeypatch.setattr(TorchEnginePlugin, "rz_build_engine", build)


def _records(run_dir):
    return [{k: v for k, v in json.loads(l).items() if not k.startswith(WALL)}
            for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


ARGS = ["iterations=4", "eval.every=0"]


def test_rollouts_are_one_version_old_and_logged(tmp_path, tiny_overrides, copying_engine):
    train(compose([*tiny_overrides, *ARGS, "max_staleness=1"]), tmp_path / "a")
    recs = _records(tmp_path / "a")
    assert recs[1]["rollout/staleness_max"] == 0  # the first iteration's rollouts: generated in the iteration
    for r in recs[2:]:  # then each batch was generated while the previous one trained
        assert r["rollout/staleness_mean"] == r["rollout/staleness_max"] == 1.0
        assert r["rollout/staleness_tokens/1"] > 0 and "rollout/staleness_tokens/0" not in r
        assert r["loss/reused_behaviour_logprobs"] == 0.0  # stale tokens: π_old is a forward, not the engine's
    sync = tmp_path / "s"
    train(compose([*tiny_overrides, *ARGS]), sync)
    assert all(r.get("rollout/staleness_max", 0) == 0 for r in _records(sync))
    # the asynchronous run's first iteration is the synchronous one's (same rollouts, same update)
    assert recs[1] == _records(sync)[1]


def test_same_seed_same_results(tmp_path, tiny_overrides, copying_engine):
    for name in ("a", "b"):
        train(compose([*tiny_overrides, *ARGS, "max_staleness=1"]), tmp_path / name)
    assert _records(tmp_path / "a") == _records(tmp_path / "b")


def test_interrupted_run_resumes_exactly(tmp_path, tiny_overrides, copying_engine, monkeypatch):
    """Interrupted while iteration 3 trains (after iteration 2's checkpoint, which holds iteration
    3's batch, generated ahead): the resumed run trains that same batch and ends as the
    uninterrupted run."""
    from reasonzoo import trainer as trainer_mod

    cfg = compose([*tiny_overrides, *ARGS, "max_staleness=1"])
    train(cfg, tmp_path / "ref")
    real = trainer_mod.update

    def interrupted(ctx, batch, rc):
        if ctx.iteration == 3:
            raise RunInterrupted(2)
        return real(ctx, batch, rc)

    monkeypatch.setattr(trainer_mod, "update", interrupted)
    with pytest.raises(RunInterrupted):
        train(cfg, tmp_path / "killed")
    monkeypatch.setattr(trainer_mod, "update", real)
    resumed = compose([*tiny_overrides, *ARGS, "max_staleness=1", f"resume={tmp_path / 'killed'}"])
    train(resumed, tmp_path / "killed")
    assert _records(tmp_path / "killed") == _records(tmp_path / "ref")


def test_refused_where_the_engine_generates_from_the_trained_weights():
    with pytest.raises(PluginError, match=r"^max_staleness=1: asynchronous rollouts need an engine with its own copy "
                                          r"of the weights \(launcher=ray, or engine=vllm\); engine=torch, launcher=local"):
        validate(compose(["max_staleness=1"]))
    with pytest.raises(PluginError, match="max_staleness"):
        validate(compose(["max_staleness=2"]))


def test_truncated_is_at_another_temperature_is_refused_before_work():
    with pytest.raises(PluginError, match=r"^loss.stale=truncated_is with generation.temperature=0.7 / top_p=1: .*"
                                          r"stale tokens of rollout=partial get no valid weight"):
        validate(compose(["rollout=partial", "generation.temperature=0.7", "loss.stale=truncated_is"]))
    validate(compose(["rollout=partial", "generation.temperature=0.7", "loss.stale=ignore"]))
    validate(compose(["generation.temperature=0.7", "loss.stale=truncated_is"]))  # synchronous: no stale token
