"""Uniform sampling: each iteration draws ``n`` distinct problems uniformly from the pool (the
baseline of k1.5 §2.3.4)."""
from reasonzoo import hookimpl, plugin


@plugin("sampler", "uniform")
class Uniform:
    """n distinct problems uniformly at random per iteration."""

    def __init__(self, cfg):
        self.cfg = cfg

    @hookimpl
    def rz_sample_problems(self, ctx, problems, n):
        if n > len(problems):
            raise ValueError(f"prompts_per_iteration={n} exceeds the {len(problems)} training problems")
        return ctx.rng("sampler").sample(list(problems), n)
