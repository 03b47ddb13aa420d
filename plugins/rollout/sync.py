"""Synchronous rollouts: all k responses of every sampled problem are generated with the current
policy in one engine call (one batch), each to completion or to the length limit.

Every rollout has a single segment tagged with ``ctx.policy_version``.
"""
from reasonzoo import hookimpl, plugin
from reasonzoo.trainer import make_rollout
from reasonzoo.types import GenerationRequest, RolloutGroup


@plugin("rollout", "sync")
class Sync:
    """k full responses per problem from the current policy."""

    def __init__(self, cfg):
        self.cfg = cfg

    @hookimpl
    def rz_rollout(self, ctx, problems, engine, samples_per_problem, sampling):
        prompts = [ctx.policy.encode_prompt(p.prompt) for p in problems]
        reqs = [GenerationRequest(ids) for ids in prompts for _ in range(samples_per_problem)]
        gens = engine.generate(reqs, sampling, ctx.generator("rollout"))
        k = samples_per_problem
        return [
            RolloutGroup(p, tuple(make_rollout(ctx, p, ids, g) for g in gens[i * k : (i + 1) * k]))
            for i, (p, ids) in enumerate(zip(problems, prompts))
        ]
