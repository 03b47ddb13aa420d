"""``sampler=hard_first``: draw problems with probability proportional to difficulty ** power.

A minimal third-party plugin: one class with ``@plugin``, a config dataclass, one hook, and its
conf file in ``reasonzoo_hardfirst/conf/sampler/hard_first.yaml``.
"""
from dataclasses import dataclass

from reasonzoo import hookimpl, plugin


@dataclass
class HardFirstConfig:
    power: float = 2.0  #: weight = difficulty ** power (problems without a label weigh 1)


@plugin("sampler", "hard_first", HardFirstConfig)
class HardFirst:
    """Samples hard problems more often."""

    def __init__(self, cfg: HardFirstConfig):
        self.cfg = cfg

    @hookimpl
    def rz_sample_problems(self, ctx, problems, n):
        weights = [float(p.difficulty or 1) ** self.cfg.power for p in problems]
        return ctx.rng("sampler").choices(list(problems), weights=weights, k=n)
