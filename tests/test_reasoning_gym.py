"""task/reasoning_gym and reward/reasoning_gym with real generators (issue 8 item 4): the scorer is
built once per dataset, not once per rollout; a generator with no reference answer is refused at
load, naming it."""
import pytest

import reasoning_gym
from reasonzoo.plugins.reward import reasoning_gym as rg_reward
from reasonzoo.plugins.reward.reasoning_gym import ReasoningGymReward, ReasoningGymRewardConfig, score_entry
from reasonzoo.plugins.task.reasoning_gym import ReasoningGym, ReasoningGymConfig
from reasonzoo.types import FinishReason, Rollout, RolloutGroup, Segment


def test_scorer_is_built_once_per_dataset(monkeypatch):
    built = []
    real = rg_reward.build_scorer
    monkeypatch.setattr(rg_reward, "build_scorer", lambda name: built.append(name) or real(name))
    monkeypatch.setattr(rg_reward, "_SCORERS", {})
    arith = reasoning_gym.create_dataset("basic_arithmetic", size=20, seed=1)
    chain = reasoning_gym.create_dataset("chain_sum", size=5, seed=1)
    got = [score_entry(e, str(e["answer"]), None, 1.0)["correct"] for e in list(arith) * 2]
    got += [score_entry(e, "not a number", None, 1.0)["correct"] for e in chain]
    assert got == [True] * 40 + [False] * 5
    assert built == ["basic_arithmetic", "chain_sum"]  # 45 rollouts, one build per dataset


def test_reward_on_task_problems(make_ctx):
    problems = ReasoningGym(ReasoningGymConfig(train_size=6)).rz_load_problems(make_ctx(), "train")
    groups = [RolloutGroup(p, tuple(Rollout(p, (1,), (), (), FinishReason.STOP, (Segment(0, 0, 0),), t)
                                    for t in (p.answer, p.answer + " maybe", "x"))) for p in problems]
    plugin = ReasoningGymReward(ReasoningGymRewardConfig())
    out = plugin.rz_reward(make_ctx(), groups)
    plugin.rz_run_end(ctx=None, summary={})
    assert [[r.correct for r in row] for row in out] == [[True, False, False]] * 6
    assert out[0][0].info["extracted"] == problems[0].answer and out[0][1].info["scorer"] < 1.0


def test_generator_without_reference_answer_is_refused_at_load(make_ctx):
    assert reasoning_gym.create_dataset("graph_color", size=1, seed=0)[0]["answer"] is None  # the fault, as shipped
    with pytest.raises(ValueError, match=r"task.dataset='graph_color': reasoning-gym generator 'graph_color' gave no "
                                         r"reference answer \(None\) for train entry 0"):
        ReasoningGym(ReasoningGymConfig(dataset="graph_color", train_size=3)).rz_load_problems(make_ctx(), "train")
