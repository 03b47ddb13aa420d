"""Partial rollouts (k1.5 §2.6.2): a fixed output-token budget per iteration; a response that does
not finish within it is saved and continued in a later iteration by the policy current then.

Each iteration, in this order:

1. *Continue* saved responses, oldest group first: ``GenerationRequest(prompt_ids,
   prefix_ids=tokens so far, max_new_tokens=min(segment_tokens, tokens left))``.
2. *Start* the sampled problems, k responses each, in the sampler's order.
3. The engine runs them in one call (``length_ratio: 0``, default): the torch engine's fast path
   prefills contexts in buckets of similar length and lets each row attend only to its span of
   similar lengths, so 15-token prompts beside 500-token continuations cost no padding.
   ``length_ratio: r > 0`` instead makes one engine call per group of contexts (prompt + prefix)
   at most ``r`` x apart: for engines that pad every context of a call to the longest (the torch
   engine's HF-forward path); each call then costs its own decode loop.

Budget: each scheduled request *reserves* ``min(segment_tokens, max_new_tokens - its length)``
tokens, and requests are scheduled (whole groups, continuations first) while the reservations fit
in ``tokens_per_iteration``; so an iteration generates at most that many tokens. A sampled problem
that does not fit is not started (``rollout/problems_skipped``; the sampler draws afresh next time).
``tokens_per_iteration: 0`` = ``prompts_per_iteration * samples_per_prompt * segment_tokens``.

A response ends STOP (EOS / stop string), REPEAT (repeat detection, ``generation.repeat_*``) or
LENGTH (``generation.max_new_tokens`` reached in total); one cut only by ``segment_tokens`` stays
PENDING. Every call's new tokens form a ``Segment(start, end, policy_version)`` (the version the
engine served); every loss says how it treats the older ones (``loss.stale``: ``truncated_is``,
``ignore`` or ``exclude``; docs/losses.md). A group is returned (scored, trained
on) only once all k responses have ended; the rest stay in the buffer, which is saved with every
checkpoint (``rz_checkpoint_state``), so a resumed run loses no in-flight response.

Metrics (``rz_iteration_end``): ``rollout/tokens`` generated this iteration; ``rollout/frac_stop``,
``frac_length``, ``frac_repeat``, ``frac_carried``: end states of the responses worked on this
iteration; ``rollout/stale_age_mean`` / ``_max``: age in policy versions of the returned groups'
segments from older policies (0 when none), ``stale_token_frac`` their share of the tokens;
``groups_returned``, ``problems_skipped``, ``buffer_groups``, ``buffer_responses``.
"""
from __future__ import annotations

from dataclasses import dataclass

from reasonzoo import hookimpl, plugin
from reasonzoo.engine import StopStrings
from reasonzoo.types import FinishReason, GenerationRequest, Rollout, RolloutGroup, Segment

KEY = "rollout/partial"


@dataclass
class PartialConfig:
    segment_tokens: int = 16  #: most new tokens one response gets per iteration
    tokens_per_iteration: int = 0  #: token budget of an iteration (reserved per request); 0 = prompts * k * segment_tokens
    length_ratio: float = 0.0  #: 0 = one engine call; r > 0: one call per group of contexts at most r x apart in length


@dataclass
class _Response:
    """One response in flight: what a Rollout holds, mutable while it grows."""

    tokens: list
    logprobs: list
    segments: list
    reason: FinishReason = FinishReason.PENDING


@plugin("rollout", "partial", PartialConfig)
class Partial:
    """Token-budgeted rollouts; unfinished responses are carried over to later iterations."""

    def __init__(self, cfg: PartialConfig):
        if cfg.segment_tokens < 1:
            raise ValueError(f"rollout.segment_tokens={cfg.segment_tokens}: must be >= 1")
        if cfg.length_ratio and cfg.length_ratio < 1:
            raise ValueError(f"rollout.length_ratio={cfg.length_ratio}: must be >= 1, or 0 for one engine call")
        if cfg.tokens_per_iteration < 0:
            raise ValueError(f"rollout.tokens_per_iteration={cfg.tokens_per_iteration}: must be >= 0 (0 = automatic)")
        self.cfg = cfg
        self.buffer: list[dict] = []  # groups in flight, oldest first: problem, prompt_ids, responses
        self.metrics: dict[int, dict[str, float]] = {}  # per iteration of the rollout call (asynchronous runs produce ahead)

    @hookimpl
    def rz_rollout(self, ctx, problems, engine, samples_per_problem, sampling):
        k, seg, max_new = samples_per_problem, self.cfg.segment_tokens, sampling.max_new_tokens
        budget = self.cfg.tokens_per_iteration or int(ctx.cfg.prompts_per_iteration) * k * seg
        if budget < k * min(seg, max_new):
            raise ValueError(f"rollout.tokens_per_iteration={budget} cannot hold one group: needs >= samples_per_prompt "
                             f"* min(rollout.segment_tokens, generation.max_new_tokens) = {k * min(seg, max_new)}")
        new = [{"problem": p, "prompt_ids": tuple(ctx.policy.encode_prompt(p.prompt)),
                "responses": [_Response([], [], []) for _ in range(k)]} for p in problems]
        fresh = {id(g) for g in new}
        work, used, started = [], 0, []  # (group, response) pairs for this iteration's engine call
        for g in self.buffer + new:  # continuations first, oldest first; then the new problems
            todo = [r for r in g["responses"] if r.reason is FinishReason.PENDING]
            cost = sum(min(seg, max_new - len(r.tokens)) for r in todo)
            if used + cost > budget:
                continue
            used += cost
            work += [(g, r) for r in todo]
            if id(g) in fresh:
                started.append(g)
        self.buffer += started
        skipped = len(new) - len(started)
        reqs = [GenerationRequest(g["prompt_ids"], tuple(r.tokens), min(seg, max_new - len(r.tokens))) for g, r in work]
        gens = self._generate(ctx, engine, reqs, sampling)
        for (g, r), out in zip(work, gens):
            start = len(r.tokens)
            r.tokens += out.token_ids
            r.logprobs += out.logprobs
            if out.token_ids:
                r.segments.append((start, len(r.tokens), ctx.policy_version if out.policy_version is None else out.policy_version))
            if out.finish_reason is not FinishReason.LENGTH:
                r.reason = out.finish_reason
            elif len(r.tokens) >= max_new:
                r.reason = FinishReason.LENGTH
        done = [g for g in self.buffer if all(r.reason is not FinishReason.PENDING for r in g["responses"])]
        self.buffer = [g for g in self.buffer if any(r.reason is FinishReason.PENDING for r in g["responses"])]
        groups = [self._group(ctx, g, sampling) for g in done]
        self.metrics[ctx.iteration] = self._metrics(ctx, work, gens, groups, skipped)
        return groups

    def _generate(self, ctx, engine, reqs, sampling) -> list:
        """Run ``reqs`` in engine calls of similar context length (see ``length_ratio``)."""
        size = [len(r.prompt_ids) + len(r.prefix_ids) for r in reqs]
        calls: list[list[int]] = []
        for i in sorted(range(len(reqs)), key=size.__getitem__):
            if calls and (not self.cfg.length_ratio or size[i] <= self.cfg.length_ratio * size[calls[-1][0]]):
                calls[-1].append(i)
            else:
                calls.append([i])
        gens: list = [None] * len(reqs)
        gen = ctx.generator("rollout")
        for call in calls:
            for i, out in zip(call, engine.generate([reqs[i] for i in call], sampling, gen)):
                gens[i] = out
        return gens

    def _group(self, ctx, g, sampling) -> RolloutGroup:
        """A finished group's rollouts; a response stopped by a stop string has its text cut right
        after the string (as the engines cut a single-call response)."""
        p, ids = g["problem"], g["prompt_ids"]
        stops = StopStrings(ctx.policy.decode, sampling.stop_strings) if sampling.stop_strings else None

        def text(r) -> str:
            cut = stops.cut(r.tokens) if stops is not None and r.reason is FinishReason.STOP else None
            return ctx.policy.decode(r.tokens) if cut is None else cut

        return RolloutGroup(p, tuple(
            Rollout(p, ids, tuple(r.tokens), tuple(r.logprobs), r.reason, tuple(Segment(*s) for s in r.segments), text(r))
            for r in g["responses"]))

    def _metrics(self, ctx, work, gens, groups, skipped) -> dict[str, float]:
        n = max(len(work), 1)
        ends = [r.reason for _, r in work]
        ages = [ctx.policy_version - s.policy_version for g in groups for r in g.rollouts for s in r.segments
                if s.policy_version < ctx.policy_version]
        toks = [(s.end - s.start, ctx.policy_version > s.policy_version) for g in groups for r in g.rollouts for s in r.segments]
        return {
            "rollout/tokens": float(sum(len(o.token_ids) for o in gens)),  # generated this iteration
            "rollout/requests": float(len(work)),
            "rollout/frac_stop": ends.count(FinishReason.STOP) / n,
            "rollout/frac_length": ends.count(FinishReason.LENGTH) / n,
            "rollout/frac_repeat": ends.count(FinishReason.REPEAT) / n,
            "rollout/frac_carried": ends.count(FinishReason.PENDING) / n,
            "rollout/groups_returned": float(len(groups)),
            "rollout/problems_skipped": float(skipped),
            "rollout/stale_age_mean": sum(ages) / len(ages) if ages else 0.0,  # policy versions, carried-over segments
            "rollout/stale_age_max": float(max(ages, default=0)),
            "rollout/stale_token_frac": sum(t for t, old in toks if old) / max(sum(t for t, _ in toks), 1),
            "rollout/buffer_groups": float(len(self.buffer)),
            "rollout/buffer_responses": float(sum(r.reason is FinishReason.PENDING for g in self.buffer for r in g["responses"])),
        }

    @hookimpl
    def rz_iteration_end(self, ctx, groups):
        out = self.metrics.pop(ctx.iteration, {})
        self.metrics = {i: m for i, m in self.metrics.items() if i > ctx.iteration}
        return out

    @hookimpl
    def rz_checkpoint_state(self, ctx):
        return {KEY: [{"problem": g["problem"], "prompt_ids": g["prompt_ids"],
                       "responses": [(list(r.tokens), list(r.logprobs), list(r.segments), r.reason.value) for r in g["responses"]]}
                      for g in self.buffer],
                f"{KEY}/metrics": dict(self.metrics)}  # of rollouts produced ahead of their iteration (asynchronous runs)

    @hookimpl
    def rz_load_state(self, ctx, state):
        if KEY not in state:
            raise KeyError(f"checkpoint holds no {KEY} state (was the run started with another rollout scheduler?)")
        self.metrics = dict(state.get(f"{KEY}/metrics", {}))
        self.buffer = [{"problem": g["problem"], "prompt_ids": tuple(g["prompt_ids"]),
                        "responses": [_Response(list(t), list(lp), list(s), FinishReason(why)) for t, lp, s, why in g["responses"]]}
                       for g in state[KEY]]
