"""Partial rollouts vs synchronous rollouts on a heavy-tailed response-length workload (k1.5 §2.6.2).

Workload: every iteration samples ``--prompts`` fresh problems, ``--k`` responses each. Each
problem has a natural response length, drawn heavy-tailed: most short (uniform 16..64 tokens), a
fraction ``--tail`` near the maximum (0.8..1.0 x ``--max-new``). The real torch engine (fast path)
decodes a fixed tiny Llama (the default `model.tiny` shape, random weights); a thin wrapper ends each response at its natural length with STOP, as
a per-prompt EOS would (the tiny random model never emits EOS by itself).

- ``sync``: the ``rollout=sync`` plugin: all k x prompts responses to completion in one call, so an
  iteration lasts as long as its longest response, the batch thinning out behind it.
- ``partial``: the ``rollout=partial`` plugin, ``segment_tokens`` per response per iteration,
  default budget; unfinished responses are carried over (the policy version is bumped after every
  iteration, as a training step would).

Useful tokens/s = response tokens of the *returned* (complete) groups / rollout wall time, over
the same number of iterations (partial's first iterations return fewer groups: this counts against
it), and from the first iteration at which partial's longest responses can have returned on
(steady state; same iterations for both). Also: wall time per iteration and the policy-version age
of carried-over segments.

The two sides run interleaved per iteration (the same problems and lengths, the order alternating
every iteration), each after one uncounted warm-up iteration, ``--repeats`` times with other
problems; min / median / max over repeats of each side and of the ratio. Two workloads:
``heavy_tail`` (above; max 512, segments of 64) and ``trained``: the lengths the main job's trained
policy writes (the full worked solution of a d-step chain, 7d + 3 tokens, d uniform in 2..8; max 64,
segments of 16), where the tail is light and partial rollouts have little to gain. Writes
``benchmarks/results/partial_rollouts.json`` (with the load average, versions and the commit).
Goal (issue 3): >= 2x useful tokens/s on the heavy tail.

    OMP_NUM_THREADS=1 python benchmarks/partial_rollouts.py [--iterations 20] [--repeats 5]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from reasonzoo.context import RunContext  # noqa: E402
from reasonzoo.plugins.engine.torch import TorchEngine, TorchEngineConfig  # noqa: E402
from reasonzoo.plugins.rollout.partial import Partial, PartialConfig  # noqa: E402
from reasonzoo.plugins.rollout.sync import Sync  # noqa: E402
from reasonzoo.policy import Policy, build_char_tokenizer, build_tiny_model  # noqa: E402
from reasonzoo.train import compose  # noqa: E402
from reasonzoo.types import FinishReason, Generation, Problem, SamplingParams  # noqa: E402


class NaturalLength:
    """Engine wrapper: request for prompt ``x`` ends (STOP) after ``length[x]`` response tokens."""

    def __init__(self, engine, lengths: dict):
        self.engine, self.lengths = engine, lengths

    def generate(self, reqs, params, gen):
        left = [self.lengths[tuple(r.prompt_ids)] - len(r.prefix_ids) for r in reqs]
        capped = [replace(r, max_new_tokens=min(r.max_new_tokens or params.max_new_tokens, n)) for r, n in zip(reqs, left)]
        outs = self.engine.generate(capped, params, gen)
        return [Generation(o.token_ids, o.logprobs, FinishReason.STOP if len(o.token_ids) == n else o.finish_reason)
                for o, n in zip(outs, left)]

    def sync_weights(self):
        pass


class Side:
    """One scheduler driven iteration by iteration (so the two sides can be interleaved)."""

    def __init__(self, name: str, plugin, policy, args, lengths: dict, max_new: int):
        cfg = compose(["logger=none", f"prompts_per_iteration={args.prompts}", f"samples_per_prompt={args.k}"])
        self.name, self.plugin = name, plugin
        self.ctx = RunContext(cfg=cfg, hook=None, run_dir=Path("."), policy=policy, iteration=1)
        self.engine = NaturalLength(TorchEngine(TorchEngineConfig(), policy), lengths)
        self.params = SamplingParams(temperature=1.0, max_new_tokens=max_new)
        self.k, self.times, self.tokens, self.ages, self.age_max = args.k, [], [], [], 0

    def step(self, problems, count: bool = True) -> None:
        t0 = time.perf_counter()
        groups = self.plugin.rz_rollout(ctx=self.ctx, problems=problems, engine=self.engine,
                                        samples_per_problem=self.k, sampling=self.params)
        dt = time.perf_counter() - t0
        if isinstance(self.plugin, Partial):
            m = self.plugin.rz_iteration_end(ctx=self.ctx, groups=groups)
            if count and m["rollout/groups_returned"]:
                self.ages.append(m["rollout/stale_age_mean"])
            self.age_max = max(self.age_max, m["rollout/stale_age_max"]) if count else self.age_max
        if count:
            self.times.append(dt)
            self.tokens.append(sum(r.length for g in groups for r in g.rollouts))
        self.ctx.iteration += 1
        self.ctx.policy_version += 1


def draw_length(workload: str, rng: random.Random, max_new: int, tail: float) -> int:
    """A problem's natural response length (tokens) under ``workload``."""
    if workload == "heavy_tail":
        return rng.randint(int(0.8 * max_new), max_new) if rng.random() < tail else rng.randint(16, 64)
    # "trained": the main job's trained policy writes the full worked solution of a d-step chain,
    # 7d + 3 tokens (its held-out mean length at every difficulty, results/main_job.json), d = 2..8
    return min(max_new, 7 * rng.randint(2, 8) + 3)


def repeat(workload: str, policy, args, seed: int, max_new: int, segment: int) -> dict:
    """One repeat: both schedulers on the same problems and lengths, interleaved per iteration
    (the order alternating), after one uncounted warm-up iteration each."""
    rng, lengths = random.Random(seed), {}
    sides = [Side("sync", Sync(None), policy, args, lengths, max_new),
             Side("partial", Partial(PartialConfig(segment_tokens=segment, length_ratio=args.length_ratio)), policy,
                  args, lengths, max_new)]

    def problems(it: int) -> list[Problem]:
        out = []
        for j in range(args.prompts):
            p = Problem(uid=f"{seed}-{it}-{j}", prompt=f"{rng.randrange(10**6)}+{it}*{j}=", answer="0")
            lengths[tuple(policy.encode_prompt(p.prompt))] = draw_length(workload, rng, max_new, args.tail)
            out.append(p)
        return out

    warm = problems(-1)
    for side in sides:
        side.step(warm, count=False)  # first-call costs paid on both sides, not counted
    for it in range(args.iterations):
        probs = problems(it)
        for side in (sides if it % 2 == 0 else sides[::-1]):
            side.step(probs)
    steady_from = -(-max_new // segment)  # iterations before partial's longest responses can return
    out = {}
    for side in sides:
        out[side.name] = {
            "useful_tokens_per_s": sum(side.tokens) / sum(side.times),
            "steady_useful_tokens_per_s": (sum(side.tokens[steady_from:]) / sum(side.times[steady_from:])
                                           if side.times[steady_from:] else float("nan")),
            "s_per_iteration": sum(side.times) / len(side.times), "s_per_iteration_max": max(side.times),
            "stale_age_mean": sum(side.ages) / len(side.ages) if side.ages else 0.0, "stale_age_max": side.age_max}
    out["ratio"] = out["partial"]["useful_tokens_per_s"] / out["sync"]["useful_tokens_per_s"]
    out["ratio_steady"] = out["partial"]["steady_useful_tokens_per_s"] / out["sync"]["steady_useful_tokens_per_s"]
    out["steady_from_iteration"] = steady_from + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=512, help="heavy-tail workload's max length (trained: 64)")
    ap.add_argument("--tail", type=float, default=0.1, help="fraction of problems with near-maximum responses")
    ap.add_argument("--segment", type=int, default=64, help="rollout.segment_tokens, heavy-tail workload (trained: 16)")
    ap.add_argument("--length-ratio", type=float, default=PartialConfig.length_ratio, help="rollout.length_ratio of the partial scheduler")
    ap.add_argument("--workloads", nargs="+", default=["heavy_tail", "trained"], choices=["heavy_tail", "trained"])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "partial_rollouts.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from _common import code_state, load_average, stats, versions

    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), "llama", 64, 4, 4, 176, args.max_new + 64, tok.pad_token_id, tok.bos_token_id,
                             tok.eos_token_id, seed=0)
    policy = Policy(model=model.eval(), tokenizer=tok)
    settings = {"heavy_tail": (args.max_new, args.segment), "trained": (64, 16)}
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "args": {k: v for k, v in vars(args).items() if k != "out"}, "threads": 1, "versions": versions(("torch", "transformers")),
              "code": code_state(), "loadavg_at_start": load_average(), "workloads": {}}
    for w in args.workloads:
        max_new, segment = settings[w]
        reps = [repeat(w, policy, args, seed, max_new, segment) for seed in range(args.repeats)]
        summary = {"max_new_tokens": max_new, "segment_tokens": segment, "repeats": reps,
                   "ratio": stats([r["ratio"] for r in reps]), "ratio_steady": stats([r["ratio_steady"] for r in reps])}
        for side in ("sync", "partial"):
            summary[side] = {k: stats([r[side][k] for r in reps]) for k in reps[0][side]}
        record["workloads"][w] = summary
        print(f"{w} (max {max_new} tokens, segment {segment}, {args.repeats} repeats, interleaved per iteration):")
        for side in ("sync", "partial"):
            u = summary[side]["useful_tokens_per_s"]
            print(f"  {side:8} useful tok/s min/median/max {u['min']:.0f} / {u['median']:.0f} / {u['max']:.0f}")
        r, rs = summary["ratio"], summary["ratio_steady"]
        print(f"  partial / sync: {r['min']:.2f} / {r['median']:.2f} / {r['max']:.2f}x (steady {rs['min']:.2f} / "
              f"{rs['median']:.2f} / {rs['max']:.2f}x)")
    record["loadavg_at_end"] = load_average()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
