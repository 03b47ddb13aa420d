"""Math answers checked with the ``math-verify`` library: r = 1 when
``verify(parse(reference), parse(response))`` holds (equivalent expressions, fractions vs
decimals, ``\\boxed{}`` answers), else 0.

math-verify's own timeouts use ``signal.alarm``, which works only in the main thread; they are
turned off outside it. A parse or verify error scores 0 and is logged, never a crash.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

from reasonzoo import hookimpl, plugin
from reasonzoo.rewards import extract, score_groups
from reasonzoo.types import RewardResult


@dataclass
class MathConfig:
    pattern: Optional[str] = None  #: regex whose first group holds the answer; None = give math-verify the whole response
    timeout_seconds: int = 5  #: math-verify time limit per parse/verify (main thread only)


@plugin("reward", "math", MathConfig)
class MathVerify:
    """Equivalence of math answers via math-verify."""

    def __init__(self, cfg: MathConfig):
        self.cfg = cfg

    def score(self, rollout) -> RewardResult:
        from math_verify import parse, verify

        main = threading.current_thread() is threading.main_thread()
        kw = {"parsing_timeout": self.cfg.timeout_seconds if main else None}
        text = extract(self.cfg.pattern, rollout.text)
        if text is None:
            return RewardResult(0.0, False, info={"extracted": None})
        gold = parse(rollout.problem.answer, **kw)
        pred = parse(text, **kw)
        ok = bool(verify(gold, pred, timeout_seconds=self.cfg.timeout_seconds if main else None))
        return RewardResult(float(ok), ok, info={"extracted": str(pred[-1]) if pred else None})

    @hookimpl
    def rz_reward(self, ctx, groups):
        return score_groups(groups, self.score, "math")
