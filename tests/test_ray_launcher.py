"""launcher=ray end to end on a local Ray cluster (ray.init(num_cpus=2)): engine actors and trainer
rank actors give the metrics of launcher=local; an engine actor killed mid-run is restarted and its
call resent with the same seed (the run's metrics unchanged); a trainer rank that dies is named;
asynchronous rollouts; a third-party plugin (entry point) in every actor.

Tolerance: as tests/test_launcher.py (2 trainer ranks sum gradients in another order: weights
~1e-7 apart, metrics to 1e-4; rollouts, rewards and lengths exact). With 2 engine actors the
requests are split in two chunks with a seed each (reasonzoo.ray_engines): other random streams
than launcher=local, so those runs are compared with each other, not with local.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from reasonzoo import trainer as trainer_mod  # noqa: E402
from reasonzoo.testing import assert_same_run  # noqa: E402
from reasonzoo.train import compose  # noqa: E402
from reasonzoo.trainer import train  # noqa: E402

pytestmark = pytest.mark.ray

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reasonzoo-hardfirst"
SMALL = ["launcher.engine_cpus=0.25", "launcher.rank_cpus=0.25"]  # several actors on the 2-CPU cluster
WALL = ("warmup/cached", "warmup/seconds", "response/tokens_per_s", "response/generated_tokens_per_s", "time/", "ray/")


@pytest.fixture(scope="module")
def tiny(request):
    return list(next(p.TINY for p in request.config.pluginmanager.get_plugins() if hasattr(p, "TINY")))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The example third-party package installed into a folder that every worker has on its path."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(EXAMPLE)], check=True, capture_output=True, timeout=300)
    sys.path.insert(0, str(site))
    yield site
    sys.path.remove(str(site))


@pytest.fixture(scope="module")
def cluster(site, ray_start):
    ray_start(site)
    yield
    ray.shutdown()


def _records(run_dir, drop=WALL):
    return [{k: v for k, v in json.loads(l).items() if not k.startswith(drop)}
            for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _run(tiny, run_dir, *extra):
    train(compose([*tiny, "iterations=3", "train.microbatches=2", *extra]), run_dir)
    return _records(run_dir, drop=("warmup/cached", "warmup/seconds", "response/tokens_per_s",
                                   "response/generated_tokens_per_s", "time/"))


def test_one_engine_actor_two_ranks_give_the_local_metrics(cluster, tiny, tmp_path):
    local = _run(tiny, tmp_path / "local")
    placed = _run(tiny, tmp_path / "ray", "launcher=ray", "launcher.engines=1", "launcher.trainer_ranks=2", *SMALL)
    assert_same_run(local, placed)
    assert [r.get("train/ranks") for r in placed] == [None, 2.0, 2.0, 2.0]
    assert placed[-1]["ray/engine_restarts"] == 0 and placed[-1]["ray/engine_retries"] == 0


def test_killed_engine_actor_is_restarted_and_the_run_unchanged(cluster, tiny, tmp_path, monkeypatch):
    """2 engine actors, 2 ranks; engine actor 0 killed while iteration 2 trains: Ray restarts it, the
    next rollout's call to it is resent with the same seed, and every metric equals the run without
    the kill (2 engine actors: the same seed gives the same run)."""
    args = ["launcher=ray", "launcher.engines=2", "launcher.trainer_ranks=2", *SMALL]
    ref = _run(tiny, tmp_path / "ref", *args)
    real = trainer_mod.update

    def update(ctx, batch, rc):
        if ctx.iteration == 2:
            ray.kill(ctx.engine.actors[0], no_restart=False)
        return real(ctx, batch, rc)

    monkeypatch.setattr(trainer_mod, "update", update)
    killed = _run(tiny, tmp_path / "killed", *args)
    assert killed[-1]["ray/engine_restarts"] >= 1 and killed[-1]["ray/engine_retries"] >= 1
    strip = lambda recs: [{k: v for k, v in r.items() if not k.startswith("ray/")} for r in recs]  # noqa: E731
    assert strip(killed) == strip(ref)


def test_a_trainer_rank_actor_that_dies_is_named(cluster, tiny, tmp_path, monkeypatch):
    real = trainer_mod.update

    def update(ctx, batch, rc):
        if ctx.iteration == 2:
            name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                        if a["name"].startswith("reasonzoo-rank1-"))
            ray.kill(ray.get_actor(name, namespace=next(a["namespace"] for a in ray.util.list_named_actors(all_namespaces=True)
                                                        if a["name"] == name)))
        return real(ctx, batch, rc)

    monkeypatch.setattr(trainer_mod, "update", update)
    with pytest.raises(RuntimeError, match=r"trainer rank 1 died: .*\(resume with resume="):
        _run(tiny, tmp_path / "r", "launcher=ray", "launcher.trainer_ranks=2", *SMALL)
    assert (tmp_path / "r" / "checkpoints" / "iter_000001").is_dir()
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("reasonzoo-rank")]


def test_asynchronous_rollouts_on_engine_actors(cluster, tiny, tmp_path):
    recs = _run(tiny, tmp_path / "a", "launcher=ray", "launcher.engines=2", "max_staleness=1", *SMALL)
    assert recs[1]["rollout/staleness_max"] == 0
    assert all(r["rollout/staleness_mean"] == 1.0 for r in recs[2:])


def test_third_party_plugin_in_every_actor(cluster, tiny, tmp_path):
    """sampler=hard_first (examples/reasonzoo-hardfirst, an entry point): the driver samples with
    it; engine actors and the trainer rank rebuild the run's plugins, so they load it too."""
    recs = _run(tiny, tmp_path / "t", "sampler=hard_first", "launcher=ray", "launcher.engines=2",
                "launcher.trainer_ranks=2", *SMALL)
    assert len(recs) == 4 and recs[-1]["train/ranks"] == 2.0


REWARDS = ["launcher=ray", "launcher.engines=1", "launcher.reward_workers=2", "launcher.reward_cpus=0.25",
           "launcher.weight_sync=broadcast", *SMALL]


def _no_ray(recs):
    return [{k: v for k, v in r.items() if not k.startswith("ray/")} for r in recs]


def test_reward_workers_and_broadcast_give_the_local_metrics_and_survive_a_killed_reward_actor(cluster, tiny, tmp_path,
                                                                                                  monkeypatch):
    """One engine actor (the local tokens exactly), weights by broadcast, rewards from 2 reward
    actors: every metric equals launcher=local (reward/timeouts, reward/truncated, ... computed by
    the driver from the actors' results). Then reward actor 0 killed while iteration 2 trains: Ray
    restarts it, the next iteration's chunk is resent, and every metric but ray/* is unchanged."""
    from reasonzoo import ray_engines

    local = _run(tiny, tmp_path / "local")
    placed = _run(tiny, tmp_path / "ray", *REWARDS)
    assert _no_ray(placed) == local
    assert {k: v for k, v in placed[-1].items() if k.startswith("ray/")} == {
        "ray/engine_restarts": 0.0, "ray/engine_retries": 0.0, "ray/weight_sync_fallbacks": 0.0,
        "ray/reward_restarts": 0.0, "ray/reward_retries": 0.0}
    assert "reward/timeouts" in placed[-1] and "reward/truncated" in placed[-1]

    made = []
    real_init, real_update = ray_engines.RayRewardGroup.__init__, trainer_mod.update

    def init(self, *a, **kw):
        made.append(self)
        real_init(self, *a, **kw)

    def update(ctx, batch, rc):
        if ctx.iteration == 2:
            ray.kill(made[-1].actors[0], no_restart=False)
        return real_update(ctx, batch, rc)

    monkeypatch.setattr(ray_engines.RayRewardGroup, "__init__", init)
    monkeypatch.setattr(trainer_mod, "update", update)
    killed = _run(tiny, tmp_path / "killed", *REWARDS)
    assert _no_ray(killed) == local
    assert killed[-1]["ray/reward_restarts"] == 1 and killed[-1]["ray/reward_retries"] in (0.0, 1.0)
    assert killed[-1]["ray/engine_restarts"] == 0
