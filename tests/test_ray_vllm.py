"""engine=vllm inside Ray engine actors (issue 12: "Rollout engines (torch and vLLM) run inside Ray
actors"): a short training run with ``launcher=ray engine=vllm`` completes; after every update the
weights reach the vLLM actor with their version (every generation served says the version the
trainer was at); vLLM runs in the actor's own process with the uniprocess executor (no child
process), one torch thread and a socket directory of its own, removed when the actor closes it.

One engine actor: the driver's generator state travels to the actor and back
(:mod:`reasonzoo.ray_engines`), and vLLM is deterministic for a given request seed on this CPU
build, so the tokens of every call and every metric but ``ray/*`` and wall-clock ones equal the
local ``engine=vllm`` run's for the same seed. Two engine actors (1 CPU each: the 2-CPU cluster):
each chunk has its own seed, so other tokens than the local run (as with engine=torch,
tests/test_ray_launcher.py); checked: both actors serve, each with the current version.

Needs both extras; marked ``vllm`` (CI installs ``.[ray]`` then ``.[vllm]`` into one environment
and runs ``-m vllm`` last). Skips, naming the extra, where Ray is not installed; fails where vLLM
is not (as tests/test_engine_vllm.py). About a minute on the 2-core box: the local run ~10 s, the
one-actor run ~25 s, the two-actor run ~25 s (vLLM's import and start-up in each actor).
"""
import json
import os
import shutil
import stat

import pytest

ray = pytest.importorskip("ray", reason="launcher=ray needs the ray extra: pip install -e '.[ray]'")

from reasonzoo import ray_engines  # noqa: E402
from reasonzoo.plugins.engine import vllm as vllm_engine  # noqa: E402
from reasonzoo.train import compose  # noqa: E402
from reasonzoo.trainer import train  # noqa: E402

pytestmark = pytest.mark.vllm

RUN = ["engine=vllm", "model.tiny.num_heads=2", "iterations=2", "eval.every=0"]  # head size 32: vLLM's CPU attention
WALL = ("warmup/cached", "warmup/seconds", "response/tokens_per_s", "response/generated_tokens_per_s", "time/")


@pytest.fixture(scope="module")
def tiny(request):
    return list(next(p.TINY for p in request.config.pluginmanager.get_plugins() if hasattr(p, "TINY")))


def _records(run_dir):
    return [{k: v for k, v in json.loads(l).items() if not k.startswith(WALL)}
            for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _no_ray(recs):
    return [{k: v for k, v in r.items() if not k.startswith("ray/")} for r in recs]


@pytest.fixture(scope="module")
def local(tiny, tmp_path_factory):
    """The local engine=vllm run: its records and the tokens of every generate call."""
    calls = []
    real = vllm_engine.VllmEngine.generate

    def generate(self, requests, params, generator):
        out = real(self, requests, params, generator)
        calls.append([g.token_ids for g in out])
        return out

    vllm_engine.VllmEngine.generate = generate
    try:
        run_dir = tmp_path_factory.mktemp("local")
        train(compose([*tiny, *RUN]), run_dir)
    finally:
        vllm_engine.VllmEngine.generate = real
    return {"records": _records(run_dir), "tokens": calls, "rpc": os.environ.get("VLLM_RPC_BASE_PATH")}


@pytest.fixture(scope="module")
def cluster(local, ray_start):
    """The 2-CPU cluster, started after the local run: its workers inherit the ``VLLM_*``
    variables the local engine set in this process, as when every vllm test runs in one process."""
    ray_start()
    yield
    ray.shutdown()


def _inside(actor):
    """What an engine actor's process says of itself (run in the actor with ``__ray_call__``)."""
    import os

    import psutil
    import torch

    llm = actor.engine.llm
    return {"pid": os.getpid(), "engine": type(actor.engine).__name__, "threads": torch.get_num_threads(),
            "children": [p.name() for p in psutil.Process().children(recursive=True)],
            "executor": type(llm.llm_engine.engine_core.engine_core.model_executor).__name__,
            "rpc": os.environ.get("VLLM_RPC_BASE_PATH"), "version": actor.version}


@pytest.fixture
def served(monkeypatch):
    """Every generate call of a RayEngineGroup: the trainer's policy version at the call, the
    versions the generations say they were served with, their tokens, and each actor's
    :func:`_inside` right after the call."""
    calls = []
    real = ray_engines.RayEngineGroup.generate

    def generate(self, requests, params, generator):
        out = real(self, requests, params, generator)
        calls.append({"version": self.ctx.policy_version, "served": [g.policy_version for g in out],
                      "tokens": [g.token_ids for g in out],
                      "actors": ray.get([a.__ray_call__.remote(_inside) for a in self.actors], timeout=120)})
        return out

    monkeypatch.setattr(ray_engines.RayEngineGroup, "generate", generate)
    return calls


def _check_actors(calls, n):
    """Every call: ``n`` actors of other processes, each vLLM in-process (uniprocess executor, no
    child process), one torch thread, the weights of the trainer's version loaded, and a socket
    directory of its own."""
    for c in calls:
        assert len(c["actors"]) == n and len({a["pid"] for a in c["actors"]}) == n
        for a in c["actors"]:
            assert a["pid"] != os.getpid() and a["engine"] == "VllmEngine"
            assert a["executor"] == "UniProcExecutor" and a["children"] == [] and a["threads"] == 1
            assert a["version"] == c["version"]
            assert os.path.basename(a["rpc"]).startswith("rz-vllm-")
    rpc = {a["rpc"] for c in calls for a in c["actors"]}
    assert len(rpc) == n  # one per actor, none the driver's
    return rpc


def test_one_vllm_actor_serves_every_version_and_gives_the_local_run(local, cluster, served, tiny, tmp_path):
    train(compose([*tiny, *RUN, "launcher=ray", "launcher.engines=1"]), tmp_path)
    recs = _records(tmp_path)
    # the evaluation before RL and iteration 1 generate with version 0, iteration 2 with version 1,
    # the final evaluation with version 2
    assert [c["version"] for c in served] == [0, 0, 1, 2]
    assert all(set(c["served"]) == {c["version"]} for c in served)
    assert [c["tokens"] for c in served] == local["tokens"]
    assert _no_ray(recs) == local["records"]
    assert recs[-1]["policy_version"] == 2
    assert recs[-1]["ray/engine_restarts"] == 0 and recs[-1]["ray/engine_retries"] == 0
    rpc = _check_actors(served, 1)
    assert local["rpc"] not in rpc
    assert not any(os.path.exists(p) for p in rpc)  # removed when the actor closed its engine


def test_two_vllm_actors_each_serve_the_current_version(cluster, served, tiny, tmp_path):
    train(compose([*tiny, *RUN, "launcher=ray", "launcher.engines=2"]), tmp_path)
    recs = _records(tmp_path)
    assert [r["iteration"] for r in recs] == [0, 1, 2] and recs[-1]["policy_version"] == 2
    assert all(r["response/tokens"] > 0 for r in recs[1:])
    assert [c["version"] for c in served] == [0, 0, 1, 2]
    assert all(set(c["served"]) == {c["version"]} for c in served)
    assert recs[-1]["ray/engine_restarts"] == 0 and recs[-1]["ray/engine_retries"] == 0
    _check_actors(served, 2)


def test_the_socket_dir_is_made_again_after_the_last_engine_closed(monkeypatch, tmp_path):
    """vLLM caches its environment at its first start-up: a later engine in the process finds its
    socket directory again under the same name, private; a path someone else made is refused."""
    monkeypatch.setattr(vllm_engine, "_PRIVATE", [])
    path = vllm_engine._private_dir()
    shutil.rmtree(path)  # what the last engine's close does
    assert vllm_engine._private_dir() == path and stat.S_IMODE(os.stat(path).st_mode) == 0o700
    os.chmod(path, 0o755)
    with pytest.raises(RuntimeError, match="is not a private directory of this user"):
        vllm_engine._private_dir()
    shutil.rmtree(path)
