"""Prioritized sampling (k1.5 §2.3.4): track each problem's success rate s_i during RL and sample
problems with probability proportional to ``1 - s_i``.

s_i is the fraction of correct rollouts over all of problem i's rollouts so far; a problem not
yet seen has s_i = 0 (highest priority). ``min_weight`` floors ``1 - s_i`` so that solved
problems can still come back (the paper states no floor: 0.0 is faithful). When fewer than n
problems have a positive weight, the rest are filled uniformly. The statistics are saved in checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from reasonzoo import hookimpl, plugin


@dataclass
class PrioritizedConfig:
    min_weight: float = 0.0  #: floor of 1 - s_i (0.0 = the paper's rule)


@plugin("sampler", "prioritized", PrioritizedConfig)
class Prioritized:
    """Sampling proportional to 1 - success rate."""

    def __init__(self, cfg: PrioritizedConfig):
        if not 0.0 <= cfg.min_weight <= 1.0:
            raise ValueError(f"sampler.min_weight={cfg.min_weight}: must be in [0, 1]")
        self.cfg = cfg
        self.correct: dict[str, int] = {}
        self.attempts: dict[str, int] = {}

    def success_rate(self, uid: str) -> float:
        a = self.attempts.get(uid, 0)
        return self.correct.get(uid, 0) / a if a else 0.0

    def weights(self, problems) -> list[float]:
        return [max(self.cfg.min_weight, 1.0 - self.success_rate(p.uid)) for p in problems]

    @hookimpl
    def rz_sample_problems(self, ctx, problems, n):
        pool = list(problems)
        if n > len(pool):
            raise ValueError(f"prompts_per_iteration={n} exceeds the {len(pool)} training problems")
        w = torch.tensor(self.weights(pool), dtype=torch.float64)
        positive = int((w > 0).sum())
        if positive < n:  # too few problems with weight: fill up uniformly from the rest
            w = torch.where(w > 0, w, torch.full_like(w, 1e-12 if positive else 1.0))
        idx = torch.multinomial(w, n, replacement=False, generator=ctx.generator("sampler"))
        return [pool[i] for i in idx.tolist()]

    @hookimpl
    def rz_iteration_end(self, ctx, groups):
        for g in groups:
            uid = g.problem.uid
            self.attempts[uid] = self.attempts.get(uid, 0) + len(g.rewards)
            self.correct[uid] = self.correct.get(uid, 0) + sum(r.correct for r in g.rewards)
        rates = [self.success_rate(u) for u in self.attempts]
        return {"sampler/seen_problems": float(len(self.attempts)), "sampler/mean_success": sum(rates) / max(len(rates), 1)}

    @hookimpl
    def rz_checkpoint_state(self, ctx):
        return {"sampler/prioritized": {"correct": dict(self.correct), "attempts": dict(self.attempts)}}

    @hookimpl
    def rz_load_state(self, ctx, state):
        s = state.get("sampler/prioritized")
        if s is None:
            raise KeyError("checkpoint holds no sampler/prioritized state (was the run started with another sampler?)")
        self.correct, self.attempts = dict(s["correct"]), dict(s["attempts"])
