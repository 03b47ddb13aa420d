"""No length penalty: the total reward is the outcome reward alone."""
from reasonzoo import hookimpl, plugin


@plugin("length_penalty", "none")
class NoLengthPenalty:
    """Adds 0 to every reward."""

    def __init__(self, cfg):
        self.cfg = cfg

    @hookimpl
    def rz_length_penalty(self, ctx, groups):
        return [[0.0] * len(g.rollouts) for g in groups]
