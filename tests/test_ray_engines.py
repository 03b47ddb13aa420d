"""Rollout engines in Ray actors (reasonzoo.ray_engines): one actor gives the local engine's
tokens exactly, two keep request order and are deterministic, weights and versions reach the
actors, killed or crashed actors are restarted and their calls resent with the same result, and
entry-point plugins are rebuilt in the actor; under weight_sync=broadcast the weights and the
version reach the actors through a process group of their own (the trainer's default group
untouched), and a restarted actor makes the group fall back to the object store with the right
weights. One local Ray cluster (2 CPUs) for the module, three groups (1 + 2 + 1 actors) reused
across tests, and a fresh 2-actor broadcast group per broadcast test."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import torch  # noqa: E402

from reasonzoo.context import RunContext  # noqa: E402
from reasonzoo.plugins.engine.torch import TorchEngine, TorchEngineConfig  # noqa: E402
from reasonzoo.ray_engines import EngineActorError, RayEngineGroup, _chunks, pack_state, unpack_state  # noqa: E402
from reasonzoo.ray_engines import flatten_state as _flatten, unflatten_state as _unflatten  # noqa: E402
from reasonzoo.registry import build_plugins, make_manager  # noqa: E402
from reasonzoo.testing import entry_point_package  # noqa: E402
from reasonzoo.train import compose  # noqa: E402
from reasonzoo.types import GenerationRequest, SamplingParams  # noqa: E402

pytestmark = pytest.mark.ray

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reasonzoo-hardfirst"
ACTOR = {"num_cpus": 0.25}  # up to 5 actors alive at once on the 2-CPU cluster
PROMPTS = ["Compute 3+4.", "What is 12*3?", "Sort 5 2 9.", "Name a prime.", "x", "Add 1 and 1, twice."]

#: A third-party engine plugin (installed through an entry point) that wraps engine/torch and
#: kills its own process inside generate() while ``crash_file`` exists (removing it first).
CRASH_PLUGIN = '''
import os
from dataclasses import dataclass

from reasonzoo import hookimpl, plugin
from reasonzoo.plugins.engine.torch import TorchEngine, TorchEngineConfig


@dataclass
class CrashOnceConfig(TorchEngineConfig):
    crash_file: str = ""


class CrashOnceEngine:
    def __init__(self, inner, crash_file):
        self.inner, self.crash_file = inner, crash_file

    @property
    def logprobs_match_policy(self):
        return self.inner.logprobs_match_policy

    def sync_weights(self):
        self.inner.sync_weights()

    def generate(self, requests, params, generator):
        if os.path.exists(self.crash_file):
            os.remove(self.crash_file)
            os._exit(3)
        return self.inner.generate(requests, params, generator)


@plugin("engine", "crash_once", CrashOnceConfig)
class CrashOncePlugin:
    def __init__(self, cfg):
        self.cfg = cfg

    @hookimpl
    def rz_build_engine(self, ctx, policy):
        base = TorchEngineConfig(self.cfg.max_batch, self.cfg.fast, self.cfg.compact_at)
        return CrashOnceEngine(TorchEngine(base, policy), self.cfg.crash_file)
'''


@pytest.fixture(scope="module")
def tiny(request):
    """conftest's TINY overrides (a module-scoped fixture cannot take ``tiny_overrides``)."""
    return list(next(p.TINY for p in request.config.pluginmanager.get_plugins() if hasattr(p, "TINY")))


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def policy(tiny):
    """The driver's policy: the tiny model of the config, its weights then moved off the
    initialisation the actors build, so equal outputs prove the weights travelled."""
    cfg = compose(tiny)
    ctx = RunContext(cfg=cfg, hook=None, run_dir=Path("."))
    pol = make_manager(build_plugins(cfg)).hook.rz_build_policy(ctx=ctx)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pol.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return pol


def _group(cfg, tmp, policy, n, **kw):
    ctx = RunContext(cfg=cfg, hook=None, run_dir=tmp, policy=policy, iteration=1)
    return ctx, RayEngineGroup(ctx, n, actor_options={**ACTOR, **kw.pop("actor_options", {})}, **kw)


@pytest.fixture(scope="module")
def one(cluster, tiny, policy, tmp_path_factory):
    ctx, group = _group(compose(tiny), tmp_path_factory.mktemp("one"), policy, 1)
    yield ctx, group
    group.close()


@pytest.fixture(scope="module")
def two(cluster, tiny, policy, tmp_path_factory):
    ctx, group = _group(compose(tiny), tmp_path_factory.mktemp("two"), policy, 2)
    yield ctx, group
    group.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A site folder with the example third-party package (pip, as tests/test_third_party.py
    does) and the crash_once engine package (a hand-written dist-info with its entry point),
    on the driver's sys.path for the module."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(EXAMPLE)], check=True, capture_output=True, timeout=300)
    entry_point_package(site, "rzcrash", CRASH_PLUGIN, "crash_once")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    yield site
    sys.path.remove(str(site))


@pytest.fixture(scope="module")
def third(cluster, tiny, policy, site, tmp_path_factory):
    """One actor under sampler=hard_first (the example package) and engine=crash_once, both
    found through entry points in the actor's process (PYTHONPATH = the site folder)."""
    tmp = tmp_path_factory.mktemp("third")
    crash = tmp / "crash_now"
    cfg = compose(tiny + ["sampler=hard_first", "engine.name=crash_once", f"+engine.crash_file={crash}"])
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}}
    ctx, group = _group(cfg, tmp, policy, 1, actor_options={"runtime_env": env})
    yield ctx, group, crash
    group.close()


def _requests(policy):
    reqs = [GenerationRequest(policy.encode_prompt(p)) for p in PROMPTS]
    reqs[1] = GenerationRequest(reqs[1].prompt_ids, prefix_ids=tuple(policy.tokenizer.encode("36", add_special_tokens=False)))
    reqs[2] = GenerationRequest(reqs[2].prompt_ids, max_new_tokens=5)
    return reqs


PARAMS = SamplingParams(temperature=1.0, max_new_tokens=16)


def _local(policy, reqs, params, gen):
    return TorchEngine(TorchEngineConfig(), policy).generate(reqs, params, gen)


def _strip(gens):
    """Generations without the version tag (the local engine leaves it None)."""
    return [(g.token_ids, g.logprobs, g.finish_reason, g.text) for g in gens]


def test_chunks_contiguous_near_equal():
    assert _chunks(5, 2) == [(0, 3), (3, 5)]
    assert _chunks(6, 3) == [(0, 2), (2, 4), (4, 6)]
    assert _chunks(1, 3) == [(0, 1), (1, 1), (1, 1)]


def test_pack_state_round_trip():
    """Every dtype (bfloat16 too, which numpy lacks), 0-d and non-contiguous tensors come back equal."""
    state = {"w": torch.randn(3, 4), "bf": torch.randn(5).to(torch.bfloat16), "half": torch.randn(2, 3).half(),
             "step": torch.tensor(7), "cols": torch.randn(4, 6)[:, ::2], "mask": torch.tensor([True, False])}
    back = unpack_state(pack_state(state))
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k


def test_bad_arguments_named(cluster, tiny, policy, tmp_path):
    ctx = RunContext(cfg=compose(tiny), hook=None, run_dir=tmp_path, policy=policy)
    with pytest.raises(ValueError, match=r"num_actors=0: must be an integer >= 1"):
        RayEngineGroup(ctx, 0)
    with pytest.raises(ValueError, match=r"max_task_retries=-1: must be an integer >= 0"):
        RayEngineGroup(ctx, 1, max_task_retries=-1)


def test_unschedulable_actor_named(cluster, tiny, policy, tmp_path):
    ctx = RunContext(cfg=compose(tiny), hook=None, run_dir=tmp_path, policy=policy)
    with pytest.raises(EngineActorError, match=r"engine actor\(s\) \[0\] not started within start_timeout_s=0.5: "
                                               r"does the cluster have what each asks for \({'num_cpus': 64}\)"):
        RayEngineGroup(ctx, 1, actor_options={"num_cpus": 64}, start_timeout_s=0.5)


def test_one_actor_equals_local_engine(one, policy):
    ctx, group = one
    reqs = _requests(policy)
    first = _local(policy, reqs, PARAMS, torch.Generator().manual_seed(7))[0]  # a stop string row 0 will meet
    params = SamplingParams(temperature=1.0, max_new_tokens=16, stop_strings=(policy.decode(first.token_ids[:3])[-1],))
    g_ray, g_loc = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    got = group.generate(reqs, params, g_ray)
    want = _local(policy, reqs, params, g_loc)
    assert _strip(got) == _strip(want)  # tokens, log-probs (bit for bit), finish reasons, cut texts
    assert torch.equal(g_ray.get_state(), g_loc.get_state())  # the driver's generator advanced as locally
    assert {g.policy_version for g in got} == {ctx.policy_version}
    assert group.logprobs_match_policy is True
    assert got[0].text is not None and len({g.finish_reason for g in got}) > 1  # a cut text and two end states


def test_two_actors_order_and_seeds(two, policy):
    ctx, group = two
    reqs = _requests(policy)[:5]  # chunks of 3 and 2
    a = group.generate(reqs, PARAMS, torch.Generator().manual_seed(3))
    assert a == group.generate(reqs, PARAMS, torch.Generator().manual_seed(3))
    assert a != group.generate(reqs, PARAMS, torch.Generator().manual_seed(4))
    # the documented streams: one seed per chunk drawn from the generator, chunk k on actor k
    seeds = torch.randint(0, 2**63 - 1, (2,), generator=torch.Generator().manual_seed(3)).tolist()
    want = (_local(policy, reqs[:3], PARAMS, torch.Generator().manual_seed(seeds[0]))
            + _local(policy, reqs[3:], PARAMS, torch.Generator().manual_seed(seeds[1])))
    assert _strip(a) == _strip(want)
    # fewer requests than actors: actor 1 idles, the seeds are drawn all the same
    alone = _local(policy, reqs[:1], PARAMS, torch.Generator().manual_seed(seeds[0]))
    assert _strip(group.generate(reqs[:1], PARAMS, torch.Generator().manual_seed(3))) == _strip(alone)
    g = torch.Generator().manual_seed(3)
    assert group.generate([], PARAMS, g) == [] and torch.equal(g.get_state(), torch.Generator().manual_seed(3).get_state())
    # request order: greedy rows do not depend on the stream, so row j is request j's greedy answer
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    got = group.generate(reqs[::-1], greedy, torch.Generator().manual_seed(0))
    local = _local(policy, reqs[::-1], greedy, torch.Generator().manual_seed(0))
    assert [g.token_ids for g in got] == [g.token_ids for g in local]
    assert len({g.token_ids for g in got}) > 1
    assert group.where()[0]["pid"] != group.where()[1]["pid"]


def test_weight_sync_reaches_actors_with_version(two, policy):
    ctx, group = two
    reqs = _requests(policy)[:4]
    saved = {k: v.clone() for k, v in policy.model.state_dict().items()}
    try:
        old = group.generate(reqs, PARAMS, torch.Generator().manual_seed(0))
        with torch.no_grad():
            for p in policy.model.parameters():
                p.mul_(1.5)
        stale = group.generate(reqs, PARAMS, torch.Generator().manual_seed(0))
        assert stale == old  # not synced yet: the actors still serve the old weights and version
        ctx.policy_version += 1
        group.sync_weights()
        new = group.generate(reqs, PARAMS, torch.Generator().manual_seed(0))
        assert {g.policy_version for g in old} == {ctx.policy_version - 1}
        assert {g.policy_version for g in new} == {ctx.policy_version} and group.policy_version == ctx.policy_version
        assert _strip(new) != _strip(old)
        for r, g in zip(reqs, new):  # the new tokens' log-probs are the new weights' (teacher-forced forward)
            seq = torch.tensor([list(r.prompt_ids) + list(r.prefix_ids) + list(g.token_ids)])
            with torch.no_grad():
                lp = policy.token_logprobs(seq, torch.ones_like(seq))[0, -len(g.token_ids):]
            torch.testing.assert_close(lp, torch.tensor(g.logprobs), atol=1e-5, rtol=1e-5)
    finally:
        policy.model.load_state_dict(saved)
        ctx.policy_version += 1
        group.sync_weights()


def test_killed_actor_restarted_same_result(two, policy, wait_killed):
    ctx, group = two
    reqs = _requests(policy)
    before = group.fault_counts()
    want = group.generate(reqs, PARAMS, torch.Generator().manual_seed(11))
    pid = group.where()[1]["pid"]
    ray.kill(group.actors[1], no_restart=False)  # mid-run: Ray restarts it; it has no weights then
    wait_killed(group.actors[1], pid)
    got = group.generate(reqs, PARAMS, torch.Generator().manual_seed(11))
    assert got == want
    counts = group.fault_counts()
    assert counts["ray/engine_restarts"] - before["ray/engine_restarts"] == 1
    assert group.where()[1]["pid"] != pid
    # the call that met the dead actor (if it did: Ray may have restarted it first) was resent once
    assert counts["ray/engine_retries"] - before["ray/engine_retries"] in (0, 1)


def test_entry_point_plugins_rebuilt_in_actor(third, policy):
    ctx, group, _ = third
    plugins = group.where()[0]["plugins"]
    assert plugins["sampler/hard_first"] == "reasonzoo_hardfirst.sampler"
    assert plugins["engine/crash_once"] == "rzcrash"
    reqs = _requests(policy)[:3]
    got = group.generate(reqs, PARAMS, torch.Generator().manual_seed(2))
    assert _strip(got) == _strip(_local(policy, reqs, PARAMS, torch.Generator().manual_seed(2)))


def test_crash_inside_generate_resent(third, policy):
    ctx, group, crash = third
    reqs = _requests(policy)
    before = group.fault_counts()
    pid = group.where()[0]["pid"]
    crash.touch()  # the actor's engine exits its process inside the next generate
    g = torch.Generator().manual_seed(5)
    got = group.generate(reqs, PARAMS, g)
    assert not crash.exists()  # the crash happened
    want_gen = torch.Generator().manual_seed(5)
    assert _strip(got) == _strip(_local(policy, reqs, PARAMS, want_gen))
    assert torch.equal(g.get_state(), want_gen.get_state())
    after = group.fault_counts()
    assert {k: after[k] - before[k] for k in after} == {"ray/engine_restarts": 1, "ray/engine_retries": 1}
    assert group.where()[0]["pid"] != pid


def test_retries_exhausted_names_actor(third, policy):
    ctx, group, crash = third
    w = group.where()[0]
    group.max_task_retries = 0
    try:
        crash.touch()
        with pytest.raises(EngineActorError) as err:
            group.generate(_requests(policy)[:2], PARAMS, torch.Generator().manual_seed(0))
    finally:
        group.max_task_retries = 3
    msg = str(err.value)
    assert f"engine actor 0 (pid {w['pid']} on {w['ip']}, node {w['node']}) died during generate after 0 resend(s)" in msg
    assert "max_task_retries=0" in msg and "Actor" in msg and "\n" not in msg
    # Ray restarted it all the same: the next call succeeds on the new process
    assert len(group.generate(_requests(policy)[:2], PARAMS, torch.Generator().manual_seed(0))) == 2


def test_close_kills_actors(one):
    ctx, group = one
    actor = group.actors[0]
    group.close()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.where.remote(), timeout=60)
    with pytest.raises(RuntimeError, match="used after close"):
        group.generate(_requests(ctx.policy)[:1], PARAMS, torch.Generator())
    group.close()  # idempotent


def test_plugin_missing_in_actor_named(cluster, tiny, policy, tmp_path):
    """engine=crash_once is installed in the driver (the site fixture), not where this actor runs."""
    cfg = compose(tiny + ["engine.name=crash_once", "+engine.crash_file=x"])
    with pytest.raises(EngineActorError, match=r"^engine actor 0 failed to start: .*PluginError: engine=crash_once: "
                                               r"unknown plugin; available engine plugins: .*torch"):
        _group(cfg, tmp_path, policy, 1)


def test_module_imports_without_ray():
    code = ("import sys; sys.modules['ray'] = None\n"
            "import reasonzoo.ray_engines as m\n"
            "try:\n    m.RayEngineGroup(None, 1)\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "launcher=ray needs Ray: pip install -e '.[ray]'"


# --- weight_sync=broadcast ---------------------------------------------------------------------


def _teacher_forced(policy, reqs, gens):
    """The log-probs ``policy`` gives the generated tokens (a forward over prompt + tokens)."""
    out = []
    for r, g in zip(reqs, gens):
        seq = torch.tensor([list(r.prompt_ids) + list(r.prefix_ids) + list(g.token_ids)])
        with torch.no_grad():
            out.append(policy.token_logprobs(seq, torch.ones_like(seq))[0, -len(g.token_ids):])
    return out


@pytest.fixture
def broadcast(cluster, tiny, policy, tmp_path):
    """Two actors under weight_sync=broadcast (a fresh group per test: a fallback is for good),
    the driver's weights restored after the test."""
    saved = {k: v.clone() for k, v in policy.model.state_dict().items()}
    ctx, group = _group(compose(tiny), tmp_path, policy, 2, weight_sync="broadcast")
    yield ctx, group
    group.close()
    policy.model.load_state_dict(saved)


def _perturb(policy, scale):
    with torch.no_grad():
        for p in policy.model.parameters():
            p.mul_(scale)


def test_broadcast_reaches_actors_with_version(broadcast, policy, tmp_path):
    """The trainer's own default process group (init_process_group, world 1) stays as it was: the
    weight group is another one (its own store address); actors' log-probs are the driver's weights'."""
    import torch.distributed as dist

    ctx, group = broadcast
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rdv", rank=0, world_size=1)
    try:
        reqs = _requests(policy)[:4]
        group.sync_weights()
        old = group.generate(reqs, PARAMS, torch.Generator().manual_seed(0))
        _perturb(policy, 1.5)
        ctx.policy_version += 1
        group.sync_weights()
        assert group._ref is None and group._weights == [f"broadcast:{ctx.policy_version}"]  # no object store used
        new = group.generate(reqs, PARAMS, torch.Generator().manual_seed(0))
        assert {g.policy_version for g in new} == {ctx.policy_version} == {group.policy_version}
        assert _strip(new) != _strip(old)
        for lp, g in zip(_teacher_forced(policy, reqs, new), new):
            torch.testing.assert_close(lp, torch.tensor(g.logprobs), atol=1e-5, rtol=1e-5)
        t = torch.ones(2)
        dist.all_reduce(t)  # the default group: this process alone
        assert dist.get_world_size() == 1 and t.tolist() == [1.0, 1.0]
        assert group.fault_counts() == {"ray/engine_restarts": 0, "ray/engine_retries": 0, "ray/weight_sync_fallbacks": 0}
    finally:
        dist.destroy_process_group()


def test_broadcast_falls_back_when_an_actor_dies_before_a_sync(broadcast, policy, wait_killed):
    """Actor 1 killed; the next broadcast fails; the group goes to the object store for good and
    the restarted actor serves the new weights (log-probs match) with the right version."""
    ctx, group = broadcast
    reqs = _requests(policy)[:4]
    group.sync_weights()
    pid = group.where()[1]["pid"]
    ray.kill(group.actors[1], no_restart=False)
    wait_killed(group.actors[1], pid)
    _perturb(policy, 0.7)
    ctx.policy_version += 1
    group.sync_weights()
    assert group.weight_sync == "object_store" and group._ref is not None
    got = group.generate(reqs, PARAMS, torch.Generator().manual_seed(1))
    assert {g.policy_version for g in got} == {ctx.policy_version} and group.where()[1]["pid"] != pid
    for lp, g in zip(_teacher_forced(policy, reqs, got), got):
        torch.testing.assert_close(lp, torch.tensor(g.logprobs), atol=1e-5, rtol=1e-5)
    counts = group.fault_counts()
    assert counts["ray/weight_sync_fallbacks"] == 1 and counts["ray/engine_restarts"] == 1
    _perturb(policy, 1.1)  # later syncs go through the object store
    ctx.policy_version += 1
    group.sync_weights()
    again = group.generate(reqs, PARAMS, torch.Generator().manual_seed(1))
    assert {g.policy_version for g in again} == {ctx.policy_version}


def test_broadcast_falls_back_when_an_actor_dies_before_a_generate(broadcast, policy, wait_killed):
    """Actor 1 killed after the broadcast: its chunk of the next generate reaches the restarted
    actor, which lacks the broadcast weights; the group falls back (the last broadcast weights,
    kept as a snapshot, go to the object store) and resends: the same tokens as without the kill."""
    ctx, group = broadcast
    reqs = _requests(policy)
    _perturb(policy, 1.3)
    ctx.policy_version += 1
    group.sync_weights()
    want = group.generate(reqs, PARAMS, torch.Generator().manual_seed(4))
    pid = group.where()[1]["pid"]
    _perturb(policy, 0.5)  # the driver moves on (as with max_staleness=1): the snapshot, not these, must be served
    ray.kill(group.actors[1], no_restart=False)
    wait_killed(group.actors[1], pid)
    got = group.generate(reqs, PARAMS, torch.Generator().manual_seed(4))
    assert got == want
    counts = group.fault_counts()
    assert counts["ray/weight_sync_fallbacks"] == 1 and counts["ray/engine_restarts"] == 1
    assert counts["ray/engine_retries"] == 1 and group.weight_sync == "object_store"


def test_weight_sync_choice_named(cluster, tiny, policy, tmp_path):
    ctx = RunContext(cfg=compose(tiny), hook=None, run_dir=tmp_path, policy=policy)
    with pytest.raises(ValueError, match=r"weight_sync='nccl': allowed values are object_store, broadcast"):
        RayEngineGroup(ctx, 1, weight_sync="nccl")


def test_flatten_state_round_trip():
    state = {"a": torch.randn(2, 3), "b": torch.randn(4).half(), "c": torch.randn(5), "d": torch.tensor(3)}
    layout, buffers = _flatten(state)
    assert [d for d, _ in layout] == [torch.float32, torch.float16, torch.int64]
    assert [[n for n, _ in e] for _, e in layout] == [["a", "c"], ["b"], ["d"]]
    assert [b.numel() for b in buffers] == [11, 4, 1]
    back = _unflatten(layout, buffers)
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in state.items())
