"""Scores with reasoning-gym's own per-dataset scorer (for ``task=reasoning_gym``).

reasoning-gym gives partial credit when the right answer appears inside a longer one; the reward
is 1 only when the scorer returns ``>= threshold`` (default 1.0, a 0/1 reward as in k1.5), else 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from reasonzoo import hookimpl, plugin
from reasonzoo.rewards import extract, score_groups
from reasonzoo.types import RewardResult


@dataclass
class ReasoningGymRewardConfig:
    pattern: Optional[str] = None  #: regex whose first group is the answer; None = whole response
    threshold: float = 1.0  #: scorer value that counts as correct


@plugin("reward", "reasoning_gym", ReasoningGymRewardConfig)
class ReasoningGymReward:
    """reasoning-gym's scorer, thresholded to 0/1."""

    def __init__(self, cfg: ReasoningGymRewardConfig):
        self.cfg = cfg

    def score(self, rollout) -> RewardResult:
        import reasoning_gym

        entry = rollout.problem.meta.get("entry")
        if entry is None:
            raise ValueError(f"problem {rollout.problem.uid!r} has no reasoning-gym entry; use reward=reasoning_gym only with task=reasoning_gym")
        answer = extract(self.cfg.pattern, rollout.text)
        fn = reasoning_gym.get_score_answer_fn(entry["metadata"]["source_dataset"])
        value = float(fn(answer, entry)) if answer is not None else 0.0
        ok = value >= self.cfg.threshold
        return RewardResult(float(ok), ok, info={"extracted": answer, "scorer": value})

    @hookimpl
    def rz_reward(self, ctx, groups):
        return score_groups(groups, self.score, "reasoning_gym")
