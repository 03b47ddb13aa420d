"""rollout/dynamic (DAPO §3.2 dynamic sampling): groups whose rewards are all equal are dropped and
the batch is refilled from the sampler's candidates, round by round, up to ``groups``."""
import pytest

from reasonzoo import hookimpl
from reasonzoo.plugins.rollout.dynamic import Dynamic, DynamicConfig, informative
from reasonzoo.registry import make_manager
from reasonzoo.types import FinishReason, Generation, Problem, RewardResult, SamplingParams

K = 2
#: uid -> the K reward scores its group gets: p0 and p2 uniform, the others vary
SCORES = {"p0": [0, 0], "p1": [1, 0], "p2": [1, 1], "p3": [0, 1], "p4": [1, 0], "p5": [0, 1], "p6": [1, 0], "p7": [0, 1]}
PROBLEMS = [Problem(uid=u, prompt=f"{i}+1=", answer="0") for i, u in enumerate(SCORES)]


class FakeEngine:
    """Answers every request with the same two tokens; records each call's size and seed."""

    def __init__(self, policy):
        self.ids = tuple(policy.encode_response("#1"))
        self.calls = []

    def generate(self, reqs, sampling, gen):
        self.calls.append((len(reqs), gen.initial_seed()))
        return [Generation(self.ids, (0.0,) * len(self.ids), FinishReason.STOP) for _ in reqs]


class TableReward:
    def __init__(self):
        self.scored = []

    @hookimpl
    def rz_reward(self, ctx, groups):
        self.scored += [g.problem.uid for g in groups]
        return [[RewardResult(float(s), bool(s)) for s in SCORES[g.problem.uid]] for g in groups]


def _setup(make_ctx, policy):
    ctx = make_ctx(policy=policy)
    reward = TableReward()
    ctx.hook = make_manager({"reward": reward}).hook
    return ctx, reward, FakeEngine(policy)


def _run(plugin, ctx, eng):
    groups = plugin.rz_rollout(ctx=ctx, problems=PROBLEMS, engine=eng, samples_per_problem=K, sampling=SamplingParams())
    return groups, plugin.rz_iteration_end(ctx=ctx, groups=groups)


def test_refills_round_by_round_until_enough_informative_groups(make_ctx, tiny_policy):
    ctx, reward, eng = _setup(make_ctx, tiny_policy)
    groups, m = _run(Dynamic(DynamicConfig(groups=3, round_size=2)), ctx, eng)
    # round 1: p0 (uniform) p1; round 2: p2 (uniform) p3; round 3: p4 p5 -> 4 found, 3 kept
    assert [g.problem.uid for g in groups] == ["p1", "p3", "p4"]
    assert all(g.rewards is None for g in groups)  # returned unscored (rz_rollout contract)
    assert reward.scored == ["p0", "p1", "p2", "p3", "p4", "p5"]  # p6, p7 never generated
    assert [n for n, _ in eng.calls] == [2 * K] * 3
    assert eng.calls[0][1] == ctx.generator("rollout").initial_seed()  # round 1 = rollout/sync's draw
    assert len({s for _, s in eng.calls}) == 3  # a fresh stream per round
    assert m == {"rollout/dynamic_rounds": 3.0, "rollout/dynamic_generated": 6.0, "rollout/dynamic_kept": 3.0,
                 "rollout/dynamic_uniform_frac": pytest.approx(1 - 4 / 6), "rollout/dynamic_short": 0.0,
                 "rollout/tokens": 6.0 * K * 3}  # every generated token counts, dropped groups' too (3 per response)


def test_zero_groups_filters_every_candidate_in_one_round(make_ctx, tiny_policy):
    ctx, _, eng = _setup(make_ctx, tiny_policy)
    groups, m = _run(Dynamic(DynamicConfig()), ctx, eng)
    assert [g.problem.uid for g in groups] == ["p1", "p3", "p4", "p5", "p6", "p7"]
    assert [n for n, _ in eng.calls] == [8 * K]
    assert m["rollout/dynamic_short"] == 0.0 and m["rollout/dynamic_uniform_frac"] == pytest.approx(2 / 8)


def test_candidates_run_out(make_ctx, tiny_policy, monkeypatch):
    ctx, _, eng = _setup(make_ctx, tiny_policy)
    monkeypatch.setitem(SCORES, "p1", [1, 1])
    groups, m = _run(Dynamic(DynamicConfig(groups=8, round_size=3)), ctx, eng)
    assert len(groups) == 5 and m["rollout/dynamic_short"] == 1.0 and m["rollout/dynamic_rounds"] == 3.0


def test_informative():
    assert informative([1.0, 0.0]) and not informative([0.5, 0.5]) and not informative([1.0])


def test_unreachable_target_refused_at_validation():
    """Refused by config validation, so a sweep whose dapo job cannot run fails before its first
    job (it used to fail at that job's run start, after the jobs before it had run)."""
    from reasonzoo.config import validate
    from reasonzoo.registry import PluginError
    from reasonzoo.train import compose

    with pytest.raises(PluginError, match=r"rollout.groups=5: more than the prompts_per_iteration=4 candidates; allowed: 0 .* to 4"):
        validate(compose(["rollout=dynamic", "rollout.groups=5", "prompts_per_iteration=4"]))
    validate(compose(["rollout=dynamic", "rollout.groups=4", "prompts_per_iteration=4"]))


def test_a_sweep_with_an_unreachable_dapo_job_fails_before_any_job(tmp_path, cli):
    proc = cli(["-m", "recipe=k15,dapo", "prompts_per_iteration=4", f"hydra.sweep.dir={tmp_path}/s"])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "rollout.groups=16: more than the prompts_per_iteration=4" in out
    assert not (tmp_path / "s").exists()
