"""Repeat detection: stop a response that has started looping (k1.5 §2.6.2, "repeat detection").

The paper gives no rule; this is the project's. A response is *repeating* at its current end when
its last ``L`` tokens have a period ``p`` (``x[i] == x[i - p]`` over the whole suffix, so it is a
block of ``p`` tokens written ``L / p`` times in a row) with

    1 <= p <= max_period   and   L >= max(min_repeats * p, min_length).

Defaults ``max_period=32, min_repeats=3, min_length=16``: 16 identical tokens, or a 7-token step
written three times over. Legitimate repetition stays below it: the built-in task's steps
(``a0+0=0;b0+0=0;...``) differ in their step letter, so their periodic suffixes are at most 13
tokens long. The rule is applied to the whole response (a continued partial rollout's prefix
included), after every sampled token, so an engine stops at the first token where it fires.

:func:`repeat_period` is the rule on a token list; :class:`RepeatTracker` the same rule updated in
O(max_period) tensor work per decode step (``run[p]``: consecutive tokens at the end with
``x[i] == x[i - p]``; the periodic suffix is ``run[p] + p`` long). Tests check they agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class RepeatRule:
    """When a response counts as repeating (see the module docstring)."""

    max_period: int = 32  #: longest repeated block considered, in tokens
    min_repeats: int = 3  #: the block must appear this many times in a row
    min_length: int = 16  #: and the repeated span must be at least this many tokens

    def __post_init__(self) -> None:
        if self.max_period < 1 or self.min_repeats < 2 or self.min_length < 2:
            raise ValueError(f"repeat rule {self}: needs max_period >= 1, min_repeats >= 2, min_length >= 2 "
                             "(generation.repeat_max_period / repeat_min_repeats / repeat_min_length)")

    def needed(self, p: int) -> int:
        """Length of a ``p``-periodic suffix that fires the rule."""
        return max(self.min_repeats * p, self.min_length)


def repeat_period(tokens: Sequence[int], rule: RepeatRule) -> int | None:
    """The smallest period ``p`` for which ``tokens`` ends repeating under ``rule``, else ``None``."""
    n = len(tokens)
    for p in range(1, rule.max_period + 1):
        need = rule.needed(p)
        if need > n:
            continue
        if all(tokens[i] == tokens[i - p] for i in range(n - need + p, n)):
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
        return (run + self.period >= self.need).any(-1)


def repeat_penalties(rollouts, penalty: float) -> list[float]:
    """``-penalty`` for each rollout stopped by repeat detection, 0 for the others."""
    from .types import FinishReason

    return [-penalty if r.finish_reason is FinishReason.REPEAT else 0.0 for r in rollouts]
