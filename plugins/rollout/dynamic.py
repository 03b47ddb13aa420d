"""DAPO's dynamic sampling (Yu et al. 2025, arXiv 2503.14476 §3.2, eq. 11: "over-sample and
filter out prompts with the accuracy equal to 1 and 0"): keep generating groups until the batch
holds enough groups whose rewards vary.

A group whose k rewards are all equal has a zero group-normalised advantage: it carries no
gradient and, under a token mean, only shrinks the others' weight. This scheduler draws its
candidates from the sampler's problems (``prompts_per_iteration`` of them, DAPO's generation
batch; the recipe sets 3x the kept groups, as verl's DAPO recipe does with ``gen_prompt_bsz``)
and works through them in rounds of ``round_size`` problems: generate k responses each (as
``rollout/sync``), score them with ``ctx.hook.rz_reward``, keep the groups whose reward scores
are not all equal, stop once ``groups`` are kept or the candidates run out.

Implementation details:
- Variance is judged on the outcome score r (DAPO: accuracy), before the length penalty; the
  loss's ``drop_uniform_groups`` judges total returns, what its advantages are made of.
- The kept groups are returned unscored, as the ``rz_rollout`` contract says, so the trainer
  scores them again: deterministic rewards give the same values; the reward cost of kept groups
  is paid twice (cheap for rule-based rewards; with reward=code it doubles sandbox runs).
- The first round uses the ``rollout`` random stream (the same draw as rollout/sync), round j
  the stream ``rollout/round<j>``: same seed, same batch.
- Fewer than ``groups`` informative groups after the last candidate: the smaller batch is used
  (DAPO would sample another generation batch; ``rollout/dynamic_short`` counts those
  iterations). None at all: the iteration skips its update, as the trainer does for an empty
  rollout.
- Every rollout has a single segment tagged with ``ctx.policy_version``.
- ``groups`` above ``prompts_per_iteration`` can never be reached: refused at ``rz_run_start``,
  before the warm-up.

Metrics (``rz_iteration_end``): ``rollout/dynamic_rounds``, ``rollout/dynamic_generated`` (groups
generated), ``rollout/tokens`` (tokens generated in all rounds, dropped groups included: what the
run's ``tokens/generated`` and ``budget.generated_tokens`` count), ``rollout/dynamic_kept``, ``rollout/dynamic_uniform_frac`` (share of the generated
groups dropped), ``rollout/dynamic_short`` (1 when fewer than ``groups`` were found).
"""
from __future__ import annotations

from dataclasses import dataclass

from reasonzoo import hookimpl, plugin
from reasonzoo.ranges import ranged
from reasonzoo.registry import PluginError
from reasonzoo.trainer import make_rollout
from reasonzoo.types import GenerationRequest, RolloutGroup


@dataclass
class DynamicConfig:
    groups: int = ranged(0, ge=0)  #: informative groups to keep per iteration (DAPO's train batch); 0 = every one found
    round_size: int = ranged(0, ge=0)  #: problems generated per round (engine call); 0 = groups (or all candidates)


def informative(scores) -> bool:
    """True when the rewards of a group are not all equal."""
    return len(set(float(s) for s in scores)) > 1


@plugin("rollout", "dynamic", DynamicConfig)
class Dynamic:
    """Groups with reward variance only, refilled from the sampler's candidates round by round."""

    def __init__(self, cfg: DynamicConfig):
        self.cfg = cfg
        self.metrics: dict[int, dict[str, float]] = {}  # per iteration of the rollout call (asynchronous runs produce ahead)

    def _generate(self, ctx, problems, engine, k, sampling, stream) -> list[RolloutGroup]:
        prompts = [ctx.policy.encode_prompt(p.prompt) for p in problems]
        reqs = [GenerationRequest(ids) for ids in prompts for _ in range(k)]
        gens = engine.generate(reqs, sampling, ctx.generator(stream))
        return [RolloutGroup(p, tuple(make_rollout(ctx, p, ids, g) for g in gens[i * k:(i + 1) * k]))
                for i, (p, ids) in enumerate(zip(problems, prompts))]

    @staticmethod
    def check_run_config(cfg: DynamicConfig, rc) -> None:
        """Refuse, at config validation (before any job of a sweep runs), a target no iteration
        can reach. :raises PluginError: ``groups`` above ``prompts_per_iteration``."""
        n = int(rc.prompts_per_iteration)
        if cfg.groups > n:
            raise PluginError(f"rollout.groups={cfg.groups}: more than the prompts_per_iteration={n} candidates; "
                              f"allowed: 0 (keep every informative group) to {n}")

    @hookimpl
    def rz_rollout(self, ctx, problems, engine, samples_per_problem, sampling):
        target = self.cfg.groups or len(problems)
        size = self.cfg.round_size or target
        kept: list[RolloutGroup] = []
        generated = rounds = tokens = 0
        pos = 0
        while len(kept) < target and pos < len(problems):
            batch = problems[pos:pos + size]
            pos += len(batch)
            groups = self._generate(ctx, batch, engine, samples_per_problem, sampling,
                                    "rollout" if rounds == 0 else f"rollout/round{rounds}")
            rewards = ctx.reward(groups)
            kept += [g for g, r in zip(groups, rewards) if informative(x.score for x in r)]
            generated += len(groups)
            tokens += sum(r.length for g in groups for r in g.rollouts)
            rounds += 1
        found, kept = len(kept), kept[:target]
        self.metrics[ctx.iteration] = {"rollout/dynamic_rounds": float(rounds), "rollout/dynamic_generated": float(generated),
                        "rollout/dynamic_kept": float(len(kept)), "rollout/tokens": float(tokens),
                        "rollout/dynamic_uniform_frac": 1 - found / generated if generated else 0.0,
                        "rollout/dynamic_short": float(0 < self.cfg.groups and len(kept) < target)}
        return kept

    @hookimpl
    def rz_iteration_end(self, ctx, groups):
        out = self.metrics.pop(ctx.iteration, {})
        self.metrics = {i: m for i, m in self.metrics.items() if i > ctx.iteration}
        return out

    @hookimpl
    def rz_checkpoint_state(self, ctx):
        return {"rollout/dynamic/metrics": dict(self.metrics)}  # of rollouts produced ahead of their iteration

    @hookimpl
    def rz_load_state(self, ctx, state):
        self.metrics = dict(state.get("rollout/dynamic/metrics", {}))
