"""Reward workers in Ray actors (reasonzoo.ray_engines.RayRewardGroup, launcher.reward_workers):
two actors give the local rewards in group order, and the driver's reward metrics from them
(time-outs and truncations included); a reward actor killed between calls or crashing inside
rz_reward is restarted and its chunk resent with the same result, counted in ray/reward_*; retries
used up name the actor; every built-in reward plugin reports its metrics from the scored groups
(what makes them survive the trip from the actors). One local Ray cluster (2 CPUs) for the module."""
import importlib
import os
import re
import sys

import pytest

ray = pytest.importorskip("ray")

from reasonzoo.context import RunContext  # noqa: E402
from reasonzoo.ray_engines import RayRewardGroup, RewardActorError  # noqa: E402
from reasonzoo.registry import build_plugins, make_manager  # noqa: E402
from reasonzoo.testing import entry_point_package  # noqa: E402
from reasonzoo.train import compose  # noqa: E402
from reasonzoo.types import FinishReason, Problem, Rollout, RolloutGroup, Segment  # noqa: E402

pytestmark = pytest.mark.ray

ACTOR = {"num_cpus": 0.25}
#: A pattern that extracts "#<word>" at the end, and backtracks for ~30 s on "#aaa...a!" (a time-out).
PATTERN = r"#((?:\w+)+)$"
RUNAWAY = "#" + "a" * 30 + "!"

#: A third-party reward plugin (installed through an entry point): reward/answer, except that it
#: kills its own process inside rz_reward while ``crash_file`` exists (removing it first).
CRASH_PLUGIN = '''
import os
import re
from dataclasses import dataclass

from reasonzoo import hookimpl, plugin
from reasonzoo.plugins.reward.answer import Answer, AnswerConfig


@dataclass
class CrashRewardConfig(AnswerConfig):
    crash_file: str = ""


@plugin("reward", "crash_once", CrashRewardConfig)
class CrashOnceReward(Answer):
    @hookimpl
    def rz_reward(self, ctx, groups):
        try:  # only the actor that removes the file exits (both may look at once)
            os.remove(self.cfg.crash_file)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            pass
        else:
            os._exit(3)
        return super().rz_reward(ctx, groups)
'''


@pytest.fixture(scope="module")
def tiny(request):
    return list(next(p.TINY for p in request.config.pluginmanager.get_plugins() if hasattr(p, "TINY")))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A site folder with the crash_once reward package (a hand-written dist-info with its entry
    point), on the driver's sys.path and every actor's PYTHONPATH."""
    site = entry_point_package(tmp_path_factory.mktemp("site"), "rzcrashreward", CRASH_PLUGIN, "crash_once_reward")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    yield site
    sys.path.remove(str(site))


@pytest.fixture(scope="module")
def cluster(site, ray_start):
    ray_start(site)
    yield
    ray.shutdown()


def _groups():
    """5 groups (chunks of 3 and 2 over 2 actors): right, wrong, unanswered, truncated and
    run-away responses (one time-out, in the second chunk)."""
    out = []
    for i, (answer, texts) in enumerate([("7", ["3+4=7;#7", "#8", "no answer"]), ("36", ["#36", "#36"]),
                                         ("5", ["#5"]), ("2", ["#2", "#3", "#2"]), ("9", [RUNAWAY, "#9"])]):
        p = Problem(uid=f"q{i}", prompt="", answer=answer, difficulty=i % 2)
        cut = {(0, 1), (3, 2)}  # (group, row) cut at max_new_tokens: scored 0 under reward.truncated=zero
        out.append(RolloutGroup(p, tuple(
            Rollout(p, (1,), (2,), (-0.5,), FinishReason.LENGTH if (i, j) in cut else FinishReason.STOP,
                    (Segment(0, 1, 0),), t) for j, t in enumerate(texts))))
    return out


def _ctx(cfg, tmp):
    return RunContext(cfg=cfg, hook=make_manager(build_plugins(cfg)).hook, run_dir=tmp, iteration=3, policy_version=2)


def _plain(rewards):
    """Results without the wall seconds a time-out records."""
    return [[(r.score, r.correct, r.in_loss, {k: v for k, v in r.info.items() if k != "seconds"}) for r in row]
            for row in rewards]


ANSWER = ["reward=answer", f"reward.pattern='{PATTERN}'", "reward.timeout_s=0.5"]


@pytest.fixture(scope="module")
def two(cluster, tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two")
    ctx = _ctx(compose(tiny + ANSWER), tmp)
    group = RayRewardGroup(ctx, 2, actor_options=ACTOR)
    yield ctx, group
    group.close()


def _scored(groups, rewards):
    from dataclasses import replace

    return [replace(g, rewards=tuple(r)) for g, r in zip(groups, rewards)]


def test_two_actors_give_the_local_rewards_and_metrics(two):
    ctx, group = two
    groups = _groups()
    local = ctx.hook.rz_reward(ctx=ctx, groups=groups)
    placed = group.reward(ctx, groups)
    assert _plain(placed) == _plain(local)
    assert [[r.score for r in row] for row in placed] == [[1.0, 0.0, 0.0], [1.0, 1.0], [1.0], [1.0, 0.0, 0.0], [0.0, 1.0]]
    # the driver's rz_iteration_end on the actors' results: the local metrics, time-out and truncations counted
    m_local = ctx.hook.rz_iteration_end(ctx=ctx, groups=_scored(groups, local))
    m_placed = ctx.hook.rz_iteration_end(ctx=ctx, groups=_scored(groups, placed))
    assert m_placed == m_local
    metrics = {k: v for d in m_placed for k, v in (d or {}).items()}
    assert metrics["reward/timeouts"] == 1.0 and metrics["reward/truncated"] == pytest.approx(2 / 11)
    assert placed[4][0].info["timeout"] is True
    assert group.fault_counts() == {"ray/reward_restarts": 0, "ray/reward_retries": 0}
    assert group.reward(ctx, []) == []
    assert _plain(group.reward(ctx, groups[:1])) == _plain(local[:1])  # fewer groups than actors
    assert group.where()[0]["pid"] != group.where()[1]["pid"] != os.getpid()


def test_killed_reward_actor_restarted_same_rewards(two, wait_killed):
    ctx, group = two
    groups = _groups()[:4]  # no time-out: quick
    want = group.reward(ctx, groups)
    pid = group.where()[1]["pid"]
    ray.kill(group.actors[1], no_restart=False)
    wait_killed(group.actors[1], pid)
    assert _plain(group.reward(ctx, groups)) == _plain(want)
    assert group.fault_counts()["ray/reward_restarts"] == 1 and group.where()[1]["pid"] != pid


@pytest.fixture(scope="module")
def crashing(cluster, tiny, tmp_path_factory):
    """Two actors under reward=crash_once (found through its entry point in the actors)."""
    tmp = tmp_path_factory.mktemp("crash")
    crash = tmp / "crash_now"
    cfg = compose(tiny + ["reward.name=crash_once", f"+reward.crash_file={crash}"])
    ctx = _ctx(cfg, tmp)
    group = RayRewardGroup(ctx, 2, actor_options=ACTOR)
    yield ctx, group, crash
    group.close()


def test_crash_inside_rz_reward_resent(crashing, tiny, tmp_path):
    ctx, group, crash = crashing
    groups = _groups()[:4]
    local_ctx = _ctx(compose(tiny), tmp_path)
    want = local_ctx.hook.rz_reward(ctx=local_ctx, groups=groups)
    assert group.where()[0]["plugins"]["reward/crash_once"] == "rzcrashreward"
    pids = [w["pid"] for w in group.where()]
    crash.touch()  # the first actor to score exits its process inside rz_reward
    got = group.reward(ctx, groups)
    assert not crash.exists()  # the crash happened
    assert _plain(got) == _plain(want)
    assert group.fault_counts() == {"ray/reward_restarts": 1, "ray/reward_retries": 1}
    assert sum(w["pid"] != p for w, p in zip(group.where(), pids)) == 1


def test_retries_exhausted_names_the_reward_actor(crashing):
    ctx, group, crash = crashing
    group.max_task_retries = 0
    try:
        crash.touch()
        with pytest.raises(RewardActorError) as err:
            group.reward(ctx, _groups()[:1])  # one chunk: actor 0 meets the crash
    finally:
        group.max_task_retries = 3
    w = group.where()[0]
    msg = str(err.value)
    assert msg.startswith(f"reward actor 0 (pid {w['pid']} on {w['ip']}, node {w['node']}) died during reward after 0 resend(s)")
    assert "max_task_retries=0" in msg and "\n" not in msg
    assert len(group.reward(ctx, _groups()[:1])) == 1  # Ray restarted it: the next call is served


def test_bad_arguments_named(cluster, tiny, tmp_path):
    ctx = _ctx(compose(tiny), tmp_path)
    with pytest.raises(ValueError, match=r"RayRewardGroup: num_actors=0: must be an integer >= 1"):
        RayRewardGroup(ctx, 0)
    with pytest.raises(RewardActorError, match=r"reward actor\(s\) \[0\] not started within start_timeout_s=0.5"):
        RayRewardGroup(ctx, 1, actor_options={"num_cpus": 64}, start_timeout_s=0.5)


def test_reward_plugins_report_metrics_from_the_groups(tiny, tmp_path):
    """Under launcher.reward_workers the driver's reward plugin never scores: its rz_iteration_end
    must compute every metric from the scored groups (RewardResult.info), not from counts kept while
    scoring. For each built-in reward plugin: a fresh instance, which has scored nothing, reports
    exactly what the instance that scored reports."""
    from dataclasses import replace

    from reasonzoo.plugins.reward.answer import Answer, AnswerConfig
    from reasonzoo.plugins.reward.code import CodeConfig, CodeLimitsConfig, CodeReward
    from reasonzoo.plugins.reward.math import MathConfig, MathVerify
    from reasonzoo.plugins.reward.reasoning_gym import ReasoningGymReward
    from reasonzoo.rewards import WorkerReward

    ctx = RunContext(cfg=compose(tiny), hook=None, run_dir=tmp_path, iteration=1)
    mathy = [RolloutGroup(Problem(uid="m", prompt="", answer="\\frac{1}{2}"), tuple(
        Rollout(None, (1,), (), (), f, (Segment(0, 0, 0),), t)
        for t, f in [("$\\boxed{0.5}$", FinishReason.STOP), ("$3$", FinishReason.STOP), ("$\\boxed{1", FinishReason.LENGTH)]))]
    mathy = [replace(g, rollouts=tuple(replace(r, problem=g.problem) for r in g.rollouts)) for g in mathy]
    code_p = Problem(uid="c", prompt="", answer="", meta={"tests": [{"input": f"{i}\n", "output": f"{2 * i}\n"} for i in range(3)]})
    codey = [RolloutGroup(code_p, tuple(Rollout(code_p, (1,), (), (), FinishReason.STOP, (Segment(0, 0, 0),), t)
                                        for t in ["print(2*int(input()))", "print(1)", "no code here ("]))]
    cases = [(lambda: Answer(AnswerConfig(pattern=PATTERN, timeout_s=0.5)), _groups()),
             (lambda: MathVerify(MathConfig()), mathy),
             (lambda: CodeReward(CodeConfig(limits=CodeLimitsConfig(cpu_s=0.3, wall_s=2.0))), codey)]
    for make, groups in cases:
        scorer, fresh = make(), make()
        try:
            scored = _scored(groups, scorer.rz_reward(ctx, groups))
            said = scorer.rz_iteration_end(ctx, scored)
            assert fresh.rz_iteration_end(ctx, scored) == said, type(scorer).__name__
            assert any(v for v in said.values()), type(scorer).__name__  # something was counted
        finally:
            for p in (scorer, fresh):
                p.rz_run_end(ctx, {})
    # reward/reasoning_gym reports through WorkerReward's rz_iteration_end (reward_metrics of the groups)
    assert ReasoningGymReward.rz_iteration_end is WorkerReward.rz_iteration_end


@pytest.mark.parametrize("override, message", [
    ("launcher.reward_workers=-1", "launcher.reward_workers=-1: out of range; allowed: >= 0"),
    ("launcher.reward_cpus=0", "launcher.reward_cpus=0.0: out of range; allowed: > 0"),
    ("launcher.start_timeout_s=0", "launcher.start_timeout_s=0.0: out of range; allowed: > 0"),
    ("launcher.weight_sync=nccl", "launcher.weight_sync='nccl': allowed values are object_store, broadcast"),
])
def test_launcher_keys_out_of_range_named(override, message):
    from reasonzoo.config import validate
    from reasonzoo.registry import PluginError

    cfg = compose(["launcher=ray", override])
    with pytest.raises(PluginError, match=re.escape(message)):
        validate(cfg)
        build_plugins(cfg)
