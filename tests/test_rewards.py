"""reward/answer, reward/math, reward/reasoning_gym: scoring, and failures that never crash."""
import logging

import pytest

from reasonzoo.plugins.reward.answer import Answer, AnswerConfig
from reasonzoo.plugins.reward.math import MathConfig, MathVerify
from reasonzoo.plugins.reward.reasoning_gym import ReasoningGymReward, ReasoningGymRewardConfig
from reasonzoo.types import FinishReason, Problem, Rollout, RolloutGroup, Segment


def groups(answer, texts, meta=None):
    p = Problem(uid="q", prompt="", answer=answer, meta=meta or {})
    return [RolloutGroup(p, tuple(Rollout(p, (1,), (), (), FinishReason.STOP, (Segment(0, 0, 0),), t) for t in texts))]


def test_answer_extracts_after_last_marker(make_ctx):
    out = Answer(AnswerConfig()).rz_reward(make_ctx(), groups("7", ["3+4=7;#7", "#7 ", "#3", "7", "#1#7", ""]))
    assert [r.score for r in out[0]] == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert out[0][2].info["extracted"] == "3" and out[0][3].info["extracted"] is None


def test_answer_options(make_ctx):
    out = Answer(AnswerConfig(pattern=r"answer is (\w+)", ignore_case=True)).rz_reward(
        make_ctx(), groups("Paris", ["the answer is paris", "answer is Rome"]))
    assert [r.correct for r in out[0]] == [True, False]
    with pytest.raises(ValueError, match=r"reward.pattern='\(': not a valid regex"):
        Answer(AnswerConfig(pattern="("))


def test_math_verify_equivalence(make_ctx):
    out = MathVerify(MathConfig()).rz_reward(make_ctx(), groups("\\frac{1}{2}", ["The answer is $\\boxed{0.5}$", "$\\frac{2}{4}$", "$3$"]))
    assert [r.correct for r in out[0]] == [True, True, False]


def test_reward_failure_is_scored_and_logged(make_ctx, caplog):
    class Boom(Answer):
        def score(self, rollout):
            if rollout.text == "bad":
                raise RuntimeError("scorer exploded")
            return super().score(rollout)

    with caplog.at_level(logging.WARNING, logger="reasonzoo.reward"):
        out = Boom(AnswerConfig()).rz_reward(make_ctx(), groups("1", ["#1", "bad"]))
    assert out[0][0].correct and not out[0][1].correct and out[0][1].score == 0.0
    assert "scorer exploded" in out[0][1].info["error"]
    assert "reward answer failed on problem 'q'" in caplog.text


def test_reasoning_gym_scorer(make_ctx):
    import reasoning_gym

    entry = reasoning_gym.create_dataset("basic_arithmetic", size=1, seed=3)[0]
    out = ReasoningGymReward(ReasoningGymRewardConfig()).rz_reward(
        make_ctx(), groups(entry["answer"], [entry["answer"], "nonsense", entry["answer"] + " maybe"], {"entry": entry}))
    assert [r.correct for r in out[0]] == [True, False, False]
    # without the entry: scored 0 with an error naming the fix, not a crash
    out = ReasoningGymReward(ReasoningGymRewardConfig()).rz_reward(make_ctx(), groups("1", ["1"]))
    assert "task=reasoning_gym" in out[0][0].info["error"]
