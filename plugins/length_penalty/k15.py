"""Length penalty of k1.5 (§2.3.3), computed per prompt group.

For the k responses of one prompt with lengths len(i) (tokens), min_len and max_len over the group:

    λ_i = 0.5 − (len(i) − min_len) / (max_len − min_len)
    len_reward(i) = λ_i            if response i is correct
                    min(0, λ_i)    if it is incorrect
    len_reward(i) = 0 for all i    if max_len == min_len

Total reward = r + w · len_reward. No penalty during the first ``warmup_iterations`` iterations
(the paper warms up with no penalty, then applies a constant weight). Min and max are taken per
group, never across the batch (open-r1's batch-wide min/max is a known deviation).

``repeat_penalty`` (§2.6.2: a repeating response "can be given a penalty"; the value is ours): a
response stopped by repeat detection (``FinishReason.REPEAT``) gets ``-repeat_penalty`` added to
its term, from iteration 1 (no warm-up). 0 (default) = no penalty.
"""
from __future__ import annotations

from dataclasses import dataclass

from reasonzoo import hookimpl, plugin
from reasonzoo.repeats import repeat_penalties


@dataclass
class K15LengthPenaltyConfig:
    weight: float = 0.1  #: w; the paper gives no value (a weight of 1.0 from the start collapsed the tiny model to short wrong answers)
    warmup_iterations: int = 10  #: iterations 1..N get no penalty; undisclosed in the paper
    repeat_penalty: float = 0.0  #: subtracted from a repeat-stopped response's reward (§2.6.2); 0 = none


def len_rewards(lengths: list[int], correct: list[bool]) -> list[float]:
    """The unweighted len_reward of each response of one group."""
    lo, hi = min(lengths), max(lengths)
    if hi == lo:
        return [0.0] * len(lengths)
    lam = [0.5 - (n - lo) / (hi - lo) for n in lengths]
    return [l if c else min(0.0, l) for l, c in zip(lam, correct)]


@plugin("length_penalty", "k15", K15LengthPenaltyConfig)
class K15LengthPenalty:
    """Per-group length reward of k1.5 with warm-up."""

    def __init__(self, cfg: K15LengthPenaltyConfig):
        if cfg.warmup_iterations < 0:
            raise ValueError(f"length_penalty.warmup_iterations={cfg.warmup_iterations}: must be >= 0")
        self.cfg = cfg

    @hookimpl
    def rz_length_penalty(self, ctx, groups):
        w = self.cfg.weight if ctx.iteration > self.cfg.warmup_iterations else 0.0
        return [
            [w * x + p for x, p in zip(len_rewards([r.length for r in g.rollouts], [rw.correct for rw in g.rewards]),
                                       repeat_penalties(g.rollouts, self.cfg.repeat_penalty))]
            for g in groups
        ]
