"""Repeat detection: stop a response that has started looping (k1.5 §2.6.2, "repeat detection").

The paper gives no rule; this is the project's. A response is *repeating* at its current end when
its last ``L`` tokens have a period ``p`` (``x[i] == x[i - p]`` over the whole suffix, so it is a
block of ``p`` tokens written ``L / p`` times in a row) with ``1 <= p <= max_period`` and

    L >= needed(p) = max(min_repeats * p, min_length)   for p >= 2 (the last L tokens not all equal),
    L >= needed(1) = max(min_run, min_length)           for p = 1 (one token over and over).

A run of one token is p-periodic for every p, so without "not all equal" the longer period-1
span would never apply; for p >= 2 the thresholds grow with p, so the smallest period decides.

Defaults ``max_period=32, min_repeats=3, min_length=32, min_run=96``: one token written 96 times,
a block of 2 to 10 tokens over 32 tokens (a 7-token step written five times), a block of 11 or
more tokens written three times (a sentence repeated).

Why these numbers. Legitimate text is full of short periodic runs, and cutting one both truncates
a correct answer and charges it the repeat penalty, while a real loop goes on until the length
limit, so waiting a few dozen tokens longer costs little. Character-level examples the rule must
leave alone (tests keep them): ``100000000000000000`` and ``0.00000000000000001`` (16-17 equal
digits), a table rule ``|----------------|`` (16 dashes) or a code separator line (up to ~79 equal
characters: hence ``min_run`` above a line's width), a repeating decimal at float precision
(``0.3333333333333333``, ``0.14285714285714285``: 17 digits of period 1 or 6, hence
``min_length`` 32 rather than 16), a markdown table header ``|---|---|---|---|`` (period 4, under
32 tokens up to 7 columns). The previous rule (``L >= max(3p, 16)`` for every period) cut all of
them (``#100000000000000000`` came out as ``#10000000000000000``). Real loops still stop: one
token repeated (96 tokens), a short phrase (32 tokens), a sentence or step repeated three times.
The built-in task's steps (``a0+0=0;b0+0=0;...``) differ in their step letter, so their periodic
suffixes are at most 13 tokens long. The rule is applied to the whole response (a continued
partial rollout's prefix included), after every sampled token, so an engine stops at the first
token where it fires.

:func:`repeat_period` is the rule on a token list (the reference); :class:`RepeatTracker` the same
rule updated in O(max_period) tensor work per decode step (``run[p]``: consecutive tokens at the
end with ``x[i] == x[i - p]``; the periodic suffix is ``run[p] + p`` long, compared with
:meth:`RepeatRule.needed`). Tests check they agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class RepeatRule:
    """When a response counts as repeating (see the module docstring for the rule and its reasons)."""

    max_period: int = 32  #: longest repeated block considered, in tokens
    min_repeats: int = 3  #: a block of p >= 2 tokens must appear this many times in a row
    min_length: int = 32  #: and the repeated span must be at least this many tokens (any period)
    min_run: int = 96  #: a run of one repeated token (period 1) must be at least this long

    def __post_init__(self) -> None:
        if self.max_period < 1 or self.min_repeats < 2 or self.min_length < 2 or self.min_run < 2:
            raise ValueError(f"repeat rule {self}: needs max_period >= 1, min_repeats >= 2, min_length >= 2, min_run >= 2 "
                             "(generation.repeat_max_period / repeat_min_repeats / repeat_min_length / repeat_min_run)")

    def needed(self, p: int) -> int:
        """Length in tokens of a ``p``-periodic suffix that fires the rule (``p >= 1``)."""
        return max(self.min_run if p == 1 else self.min_repeats * p, self.min_length)


def repeat_period(tokens: Sequence[int], rule: RepeatRule) -> int | None:
    """The smallest period ``p`` for which ``tokens`` ends repeating under ``rule``, else ``None``."""
    n = len(tokens)
    for p in range(1, rule.max_period + 1):
        need = rule.needed(p)
        if need > n:
            continue
        if all(tokens[i] == tokens[i - p] for i in range(n - need + p, n)) and (
                p == 1 or any(tokens[i] != tokens[n - 1] for i in range(n - need, n))):
            return p
    return None


class RepeatTracker:
    """The rule for a batch of rows, fed one token per row per decode step.

    :param prefixes: tokens each row's response already has (a continued partial rollout).
    """

    def __init__(self, rule: RepeatRule, prefixes: Sequence[Sequence[int]]):
        self.rule, P, b = rule, rule.max_period, len(prefixes)
        self.need = torch.tensor([rule.needed(p) for p in range(1, P + 1)])  # (P,)
        self.period = torch.arange(1, P + 1)  # (P,)
        self.hist = torch.full((b, P), -1, dtype=torch.long)  # hist[:, j] = token j + 1 steps back; -1 = none
        self.run = torch.zeros((b, P), dtype=torch.long)
        width = max((len(x) for x in prefixes), default=0)
        if width:  # feed the prefixes column by column, rows with shorter ones skip the first columns
            pre = torch.full((b, width), -1, dtype=torch.long)
            for i, x in enumerate(prefixes):
                if len(x):
                    pre[i, width - len(x):] = torch.tensor(list(x))
            rows = torch.arange(b)
            for t in range(width):
                valid = pre[:, t] >= 0
                self.update(pre[valid, t], rows[valid])

    def update(self, tok: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Append ``tok (R,)`` to rows ``rows (R,)``; returns ``(R,)`` bool, True where the rule fires."""
        hist, run = self.hist[rows], self.run[rows]
        run = torch.where(hist == tok[:, None], run + 1, 0)
        self.run[rows] = run
        self.hist[rows] = torch.cat([tok[:, None], hist[:, :-1]], 1)
        periodic = run + self.period >= self.need  # (R, P): the last need[p] tokens are p-periodic
        periodic[:, 1:] &= run[:, :1] + 1 < self.need[1:]  # p >= 2: and not all one token (that is p = 1's case)
        return periodic.any(-1)


def repeat_penalties(rollouts, penalty: float) -> list[float]:
    """``-penalty`` for each rollout stopped by repeat detection, 0 for the others."""
    from .types import FinishReason

    return [-penalty if r.finish_reason is FinishReason.REPEAT else 0.0 for r in rollouts]
