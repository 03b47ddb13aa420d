"""Rule-based answer checking (k1.5 §2.1: verifiable rewards): r = 1 when the answer extracted
from the response equals the reference answer, else 0.

The answer is the first group of the last match of ``pattern`` (default: the text after the last
``#``, the built-in task's answer marker), compared after stripping whitespace (and case, when
``ignore_case``). No match scores 0.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from reasonzoo import hookimpl, plugin
from reasonzoo.rewards import extract, score_groups
from reasonzoo.types import RewardResult


@dataclass
class AnswerConfig:
    pattern: Optional[str] = "#([^#]*)$"  #: regex whose first group is the answer; None = whole response
    ignore_case: bool = False  #: compare case-insensitively


@plugin("reward", "answer", AnswerConfig)
class Answer:
    """Exact match of the extracted answer."""

    def __init__(self, cfg: AnswerConfig):
        if cfg.pattern is not None:
            try:
                re.compile(cfg.pattern)
            except re.error as exc:
                raise ValueError(f"reward.pattern={cfg.pattern!r}: not a valid regex ({exc})") from None
        self.cfg = cfg

    def score(self, rollout) -> RewardResult:
        got = extract(self.cfg.pattern, rollout.text)
        want = rollout.problem.answer.strip()
        ok = got is not None and (got.lower() == want.lower() if self.cfg.ignore_case else got == want)
        return RewardResult(score=float(ok), correct=ok, info={"extracted": got})

    @hookimpl
    def rz_reward(self, ctx, groups):
        return score_groups(groups, self.score, "answer")
