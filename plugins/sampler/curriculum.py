"""Curriculum sampling (k1.5 §2.3.4): easy to hard by difficulty label.

``schedule: mixed_then_hard`` is the paper's ablation: uniform over all problems for the first
``switch_iteration`` iterations (the paper switches at 24), then only problems with difficulty
``>= hard_min_difficulty``.

``schedule: linear`` grows the allowed difficulty window: at iteration i problems up to the
``min + (max - min) * i / ramp_iterations`` level are eligible (the machine notes' "growing max
steps", which reached uniform's accuracy ~7x sooner on the built-in task).

Problems without a difficulty label are always eligible.
"""
from __future__ import annotations

from dataclasses import dataclass

from reasonzoo import hookimpl, plugin

SCHEDULES = ("mixed_then_hard", "linear")


@dataclass
class CurriculumConfig:
    schedule: str = "mixed_then_hard"  #: mixed_then_hard (paper) or linear
    switch_iteration: int = 24  #: mixed_then_hard: last iteration of the uniform phase (paper: 24)
    hard_min_difficulty: int = 5  #: mixed_then_hard: difficulties >= this count as hard
    ramp_iterations: int = 20  #: linear: iterations until every level is eligible


@plugin("sampler", "curriculum", CurriculumConfig)
class Curriculum:
    """Easy-to-hard sampling by difficulty label."""

    def __init__(self, cfg: CurriculumConfig):
        if cfg.schedule not in SCHEDULES:
            raise ValueError(f"sampler.schedule={cfg.schedule!r}: allowed values are {', '.join(SCHEDULES)}")
        self.cfg = cfg

    def eligible(self, problems, iteration):
        levels = sorted({p.difficulty for p in problems if p.difficulty is not None})
        if not levels:
            return list(problems)
        if self.cfg.schedule == "mixed_then_hard":
            if iteration <= self.cfg.switch_iteration:
                return list(problems)
            keep = lambda d: d >= self.cfg.hard_min_difficulty  # noqa: E731
        else:
            frac = min(1.0, iteration / max(1, self.cfg.ramp_iterations))
            top = levels[0] + (levels[-1] - levels[0]) * frac
            keep = lambda d: d <= top  # noqa: E731
        out = [p for p in problems if p.difficulty is None or keep(p.difficulty)]
        return out or list(problems)

    @hookimpl
    def rz_sample_problems(self, ctx, problems, n):
        pool = self.eligible(problems, ctx.iteration)
        rng = ctx.rng("sampler")
        return rng.sample(pool, n) if n <= len(pool) else rng.choices(pool, k=n)
