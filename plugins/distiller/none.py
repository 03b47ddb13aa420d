"""No long2short distillation after RL."""
from reasonzoo import hookimpl, plugin


@plugin("distiller", "none")
class NoDistiller:
    """Keeps the RL policy as it is."""

    def __init__(self, cfg):
        self.cfg = cfg

    @hookimpl
    def rz_distill(self, ctx, policy):
        return None
