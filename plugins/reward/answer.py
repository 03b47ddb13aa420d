"""Rule-based answer checking (k1.5 §2.1: verifiable rewards): r = 1 when the answer extracted
from the response equals the reference answer, else 0.

The answer is the first group of the last match of ``pattern`` (default: the text after the last
``#``, the built-in task's answer marker), compared after stripping whitespace (and case, when
``ignore_case``). No match scores 0. With ``numbers: value`` (default) a reference and an answer
that are both plain decimal numbers (``-12``, ``3.0``, ``1e20``, ``0.00001``; no thousands
separators) are compared by exact value (``decimal.Decimal``, no rounding): ``3`` matches a
reference written ``3.0``, ``1`` does not match ``0.00001``; ``numbers: text`` compares the strings.
``info["extracted"]`` is the extracted answer (lower-cased when ``ignore_case``; a number in its
normalised form, so equal answers give equal strings for majority voting).

Implementation details: every rollout is scored in a worker process under ``timeout_s``
(:class:`reasonzoo.rewards.WorkerPool`: a user ``pattern`` with catastrophic backtracking cannot
stall the run; a time-out scores 0 and counts in ``reward/timeouts``); truncated responses are
treated by ``truncated`` (:class:`reasonzoo.rewards.RewardConfig`, default ``zero``: a response cut
at the maximum length never scores, even when its last characters look like the answer).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Optional

from reasonzoo import plugin
from reasonzoo.rewards import TimedRewardConfig, WorkerReward, extract


@dataclass
class AnswerConfig(TimedRewardConfig):
    pattern: Optional[str] = "#([^#]*)$"  #: regex whose first group is the answer; None = whole response
    ignore_case: bool = False  #: compare case-insensitively
    numbers: str = "value"  #: value: plain decimal numbers compare by exact value (3 == 3.0); text: as strings

NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
NUMBER_MODES = ("value", "text")


def as_number(text: str) -> Decimal | None:
    """The exact value of a plain decimal number (optional sign, digits, point, exponent), else None."""
    if not NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def score_answer(reference: str, text: str, pattern: str | None, ignore_case: bool, numbers: str = "value") -> dict:
    """Exact match of the extracted answer with ``reference`` (runs in a worker process); plain
    numbers by exact value when ``numbers == "value"``.

    :returns: ``{"score": 0.0 | 1.0, "correct": bool, "info": {"extracted": str | None}}``.
    """
    got = extract(pattern, text)
    want = reference.strip()
    if ignore_case:
        got, want = (got.lower() if got is not None else None), want.lower()
    ok = got is not None and got == want
    if numbers == "value" and got is not None:
        g, w = as_number(got), as_number(want)
        if g is not None:
            got = format(g.normalize(), "f") if abs(g.adjusted()) < 30 else str(g.normalize())  # one string per value
            ok = ok or (w is not None and g == w)
    return {"score": float(ok), "correct": ok, "info": {"extracted": got}}


@plugin("reward", "answer", AnswerConfig)
class Answer(WorkerReward):
    """Exact match of the extracted answer."""

    problem_fields_required = ("answer",)  #: checked against the task at config validation

    def __init__(self, cfg: AnswerConfig):
        if cfg.numbers not in NUMBER_MODES:
            raise ValueError(f"reward.numbers={cfg.numbers!r}: allowed values are {', '.join(NUMBER_MODES)}")
        super().__init__(cfg)

    def call(self, rollout):
        return score_answer, (rollout.problem.answer, rollout.text, self.cfg.pattern, self.cfg.ignore_case, self.cfg.numbers)
