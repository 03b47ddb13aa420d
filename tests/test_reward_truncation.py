"""reward.truncated (issue 8 item 3): a response cut at max_new_tokens that happens to end in
the answer (``#123`` cut at ``#12``, reference 12) no longer scores 1 by default; ``mask`` leaves
it out of the loss through ``collate``; the rates are in the iteration metrics."""
import pytest
import torch

from reasonzoo.plugins.reward.answer import Answer, AnswerConfig
from reasonzoo.plugins.reward.math import MathConfig, MathVerify
from reasonzoo.rewards import reward_metrics, score_groups
from reasonzoo.trainer import collate
from reasonzoo.types import FinishReason, Problem, RewardResult, Rollout, RolloutGroup, Segment

STOP, LENGTH = FinishReason.STOP, FinishReason.LENGTH


def group(answer, items):
    """items: (text, finish_reason); token ids are the characters' codes (for collate)."""
    p = Problem(uid="q", prompt="", answer=answer)
    rolls = tuple(Rollout(p, (1, 2), tuple(range(3, 3 + len(t))), (0.0,) * len(t), f, (Segment(0, len(t), 0),), t) for t, f in items)
    return RolloutGroup(p, rolls)


@pytest.mark.parametrize("mode,score,correct,in_loss", [("zero", 0.0, False, True), ("mask", 0.0, False, False), ("score", 1.0, True, True)])
def test_cut_response_ending_in_the_answer(make_ctx, mode, score, correct, in_loss):
    plugin = Answer(AnswerConfig(truncated=mode))
    g = group("12", [("3*4=#12", LENGTH), ("3*4=#12", STOP), ("#7", LENGTH)])
    out = plugin.rz_reward(make_ctx(), [g])[0]
    plugin.pool.close()
    cut = out[0]
    assert (cut.score, cut.correct, cut.in_loss, cut.info["truncated"]) == (score, correct, in_loss, True)
    assert out[1].score == 1.0 and out[1].in_loss and "truncated" not in out[1].info  # finished: scored as ever
    assert out[2].score == 0.0 and out[2].in_loss == in_loss
    metrics = plugin.rz_iteration_end(make_ctx(), [RolloutGroup(g.problem, g.rollouts, tuple(out))])
    assert metrics["reward/truncated"] == pytest.approx(2 / 3)
    assert metrics["reward/masked"] == pytest.approx(2 / 3 if mode == "mask" else 0.0)


def test_default_is_zero_on_every_reward():
    """The default a careful user expects: an unfinished response is not a right answer."""
    assert AnswerConfig().truncated == MathConfig().truncated == "zero"
    plugin = MathVerify(MathConfig())
    out = plugin.rz_reward(None, [group("12", [("so $\\boxed{12", LENGTH), ("so $\\boxed{12}$", STOP)])])[0]
    plugin.pool.close()
    assert [r.score for r in out] == [0.0, 1.0] and out[0].info["extracted"] is None


def test_score_groups_keeps_old_callers_working():
    """plugins/reward/code.py calls score_groups(groups, fn, plugin): truncated defaults to score."""
    g = group("1", [("x", LENGTH), ("y", STOP)])
    out = score_groups([g], lambda r: RewardResult(1.0, True, info={"extracted": r.text}), "code")[0]
    assert [r.score for r in out] == [1.0, 1.0] and out[0].info["truncated"] and "truncated" not in out[1].info
    masked = score_groups([g], lambda r: RewardResult(1.0, True), "code", truncated="mask")[0]
    assert [(r.score, r.in_loss) for r in masked] == [(0.0, False), (1.0, True)]
    with pytest.raises(ValueError, match="reward.truncated='drop': allowed values are zero, mask, score"):
        score_groups([g], lambda r: RewardResult(1.0, True), "code", truncated="drop")


def test_collate_zeroes_the_response_mask_of_rows_out_of_the_loss():
    g = group("1", [("abcd", LENGTH), ("ab", STOP), ("abc", STOP)])
    rewards = (RewardResult(0.0, False, in_loss=False), RewardResult(1.0, True), RewardResult(0.0, False))
    batch = collate([RolloutGroup(g.problem, g.rollouts, rewards)], pad_id=0)
    full = collate([RolloutGroup(g.problem, g.rollouts, tuple(RewardResult(r.score, r.correct) for r in rewards))], pad_id=0)
    assert batch.response_mask[0].sum() == 0 and full.response_mask[0].sum() == 4
    assert torch.equal(batch.response_mask[1:], full.response_mask[1:])
    assert batch.returns.tolist() == [0.0, 1.0, 0.0]  # the baseline still sees the masked row's reward
    assert torch.equal(batch.attention_mask, full.attention_mask)


def test_reward_metrics_with_nothing_scored():
    assert reward_metrics([]) == {"reward/truncated": 0.0, "reward/masked": 0.0, "reward/timeouts": 0.0, "reward/errors": 0.0}
