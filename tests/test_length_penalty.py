"""length_penalty/k15 and length_penalty/none against hand-computed values (§2.3.3)."""
import pytest

from reasonzoo.plugins.length_penalty.k15 import K15LengthPenalty, K15LengthPenaltyConfig, len_rewards
from reasonzoo.plugins.length_penalty.none import NoLengthPenalty, NoLengthPenaltyConfig
from reasonzoo.types import FinishReason, Problem, RewardResult, Rollout, RolloutGroup, Segment


def group(lengths, correct):
    p = Problem(uid="p", prompt="x", answer="1")
    rolls = tuple(Rollout(p, (1,), (5,) * n, (0.0,) * n, FinishReason.STOP, (Segment(0, n, 0),), "") for n in lengths)
    return RolloutGroup(p, rolls, tuple(RewardResult(float(c), c) for c in correct))


def test_len_rewards_hand_values():
    # lambda = 0.5 - (len - 10) / 20 = [0.5, 0, -0.5]
    assert len_rewards([10, 20, 30], [True, False, True]) == pytest.approx([0.5, 0.0, -0.5])
    # incorrect responses get min(0, lambda): a short wrong answer is not rewarded
    assert len_rewards([10, 20, 30], [False, False, False]) == pytest.approx([0.0, 0.0, -0.5])
    assert len_rewards([10, 15, 30], [True, True, False]) == pytest.approx([0.5, 0.25, -0.5])
    assert len_rewards([7, 7, 7], [True, False, True]) == [0.0, 0.0, 0.0]


def test_per_group_weight_and_warmup(make_ctx):
    pen = K15LengthPenalty(K15LengthPenaltyConfig(weight=0.2, warmup_iterations=3))
    groups = [group([10, 20, 30], [True, False, True]), group([100, 100], [True, True])]
    assert pen.rz_length_penalty(make_ctx(iteration=3), groups) == [[0.0, 0.0, 0.0], [0.0, 0.0]]
    out = pen.rz_length_penalty(make_ctx(iteration=4), groups)
    assert out[0] == pytest.approx([0.1, 0.0, -0.1])
    assert out[1] == [0.0, 0.0]  # min/max per group, never across the batch


def test_total_reward_adds_weighted_term():
    g = group([10, 30], [True, True])
    pen = K15LengthPenalty(K15LengthPenaltyConfig(weight=0.5, warmup_iterations=0))
    from dataclasses import replace

    from types import SimpleNamespace

    g = replace(g, length_rewards=tuple(pen.rz_length_penalty(SimpleNamespace(iteration=1), [g])[0]))
    assert g.returns == pytest.approx((1.25, 0.75))


def test_none_adds_zero(make_ctx):
    assert NoLengthPenalty(NoLengthPenaltyConfig()).rz_length_penalty(make_ctx(), [group([1, 9], [True, False])]) == [[0.0, 0.0]]


def test_negative_warmup_rejected():
    with pytest.raises(ValueError, match="length_penalty.warmup_iterations"):
        K15LengthPenalty(K15LengthPenaltyConfig(warmup_iterations=-1))
