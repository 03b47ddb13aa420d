"""No external logger: metrics go only to ``metrics.jsonl`` and the plot in the run directory."""
from reasonzoo import plugin


@plugin("logger", "none")
class NoLogger:
    """Logs nowhere beyond the run directory."""

    def __init__(self, cfg):
        self.cfg = cfg
