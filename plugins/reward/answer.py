"""Rule-based answer checking (k1.5 §2.1: verifiable rewards): r = 1 when the answer extracted
from the response equals the reference answer, else 0.

The answer is the first group of the last match of ``pattern`` (default: the text after the last
``#``, the built-in task's answer marker), compared after stripping whitespace (and case, when
``ignore_case``). No match scores 0. ``info["extracted"]`` is the extracted answer (lower-cased
when ``ignore_case``, so equal answers give equal strings for majority voting).

Implementation details: every rollout is scored in a worker process under ``timeout_s``
(:class:`reasonzoo.rewards.WorkerPool`: a user ``pattern`` with catastrophic backtracking cannot
stall the run; a time-out scores 0 and counts in ``reward/timeouts``); truncated responses are
treated by ``truncated`` (:class:`reasonzoo.rewards.RewardConfig`, default ``zero``: a response cut
at the maximum length never scores, even when its last characters look like the answer).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from reasonzoo import hookimpl, plugin
from reasonzoo.rewards import LazyPool, TimedRewardConfig, check_config, extract, reward_metrics, score_in_workers


@dataclass
class AnswerConfig(TimedRewardConfig):
    pattern: Optional[str] = "#([^#]*)$"  #: regex whose first group is the answer; None = whole response
    ignore_case: bool = False  #: compare case-insensitively


def score_answer(reference: str, text: str, pattern: str | None, ignore_case: bool) -> dict:
    """Exact match of the extracted answer with ``reference`` (runs in a worker process).

    :returns: ``{"score": 0.0 | 1.0, "correct": bool, "info": {"extracted": str | None}}``.
    """
    got = extract(pattern, text)
    want = reference.strip()
    if ignore_case:
        got, want = (got.lower() if got is not None else None), want.lower()
    ok = got is not None and got == want
    return {"score": float(ok), "correct": ok, "info": {"extracted": got}}


@plugin("reward", "answer", AnswerConfig)
class Answer:
    """Exact match of the extracted answer."""

    problem_fields_required = ("answer",)  #: checked against the task at config validation

    def __init__(self, cfg: AnswerConfig):
        check_config(cfg)
        if cfg.pattern is not None:
            try:
                re.compile(cfg.pattern)
            except re.error as exc:
                raise ValueError(f"reward.pattern={cfg.pattern!r}: not a valid regex ({exc})") from None
        self.cfg = cfg
        self.pool = LazyPool(cfg.workers, preload=(__name__,))

    def call(self, rollout):
        return score_answer, (rollout.problem.answer, rollout.text, self.cfg.pattern, self.cfg.ignore_case)

    @hookimpl
    def rz_reward(self, ctx, groups):
        return score_in_workers(groups, self.pool.get(), self.call, "answer", truncated=self.cfg.truncated,
                                timeout_s=self.cfg.timeout_s)

    @hookimpl
    def rz_iteration_end(self, ctx, groups):
        return reward_metrics(groups)

    @hookimpl
    def rz_run_end(self, ctx, summary):
        self.pool.close()
