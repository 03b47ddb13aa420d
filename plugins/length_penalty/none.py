"""No length penalty: the total reward is the outcome reward alone, apart from the optional
repeat penalty (§2.6.2): ``-repeat_penalty`` for a response stopped by repeat detection."""
from dataclasses import dataclass

from reasonzoo import hookimpl, plugin
from reasonzoo.repeats import repeat_penalties


@dataclass
class NoLengthPenaltyConfig:
    repeat_penalty: float = 0.0  #: subtracted from a repeat-stopped response's reward (§2.6.2); 0 = none


@plugin("length_penalty", "none", NoLengthPenaltyConfig)
class NoLengthPenalty:
    """Adds 0 to every reward (or -repeat_penalty to a repeat-stopped one)."""

    def __init__(self, cfg: NoLengthPenaltyConfig):
        self.cfg = cfg

    @hookimpl
    def rz_length_penalty(self, ctx, groups):
        return [repeat_penalties(g.rollouts, self.cfg.repeat_penalty) for g in groups]
