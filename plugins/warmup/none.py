"""No warm-up: RL starts from the policy as built or loaded (e.g. an already instruction-tuned
local model)."""
from reasonzoo import hookimpl, plugin


@plugin("warmup", "none")
class NoWarmup:
    """RL starts from the model as loaded."""

    def __init__(self, cfg):
        self.cfg = cfg

    @hookimpl
    def rz_warmup(self, ctx, policy, problems):
        return {}
