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
(steady state; same iterations for both). Also: wall time per iteration and the policy-version age of carried-over segments. Writes
``benchmarks/results/partial_rollouts.json``. Goal (issue 3): >= 2x useful tokens/s.

    OMP_NUM_THREADS=1 python benchmarks/partial_rollouts.py [--iterations 20]
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


def run(name, plugin, policy, args) -> dict:
    cfg = compose(["logger=none", f"prompts_per_iteration={args.prompts}", f"samples_per_prompt={args.k}"])
    ctx = RunContext(cfg=cfg, hook=None, run_dir=Path("."), policy=policy, iteration=1)
    rng = random.Random(0)  # the same problems and lengths for both schedulers
    lengths: dict = {}
    engine = NaturalLength(TorchEngine(TorchEngineConfig(), policy), lengths)
    params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new)
    warm = -(-args.max_new // args.segment)  # iterations before partial's longest responses can return
    useful = wall = s_useful = s_wall = 0.0
    per_it, ages, age_max = [], [], 0
    for it in range(args.iterations):
        problems = []
        for j in range(args.prompts):
            p = Problem(uid=f"{it}-{j}", prompt=f"{rng.randrange(10**6)}+{it}*{j}=", answer="0")
            tail = rng.random() < args.tail
            lengths[tuple(policy.encode_prompt(p.prompt))] = (rng.randint(int(0.8 * args.max_new), args.max_new) if tail
                                                              else rng.randint(16, 64))
            problems.append(p)
        t0 = time.perf_counter()
        groups = plugin.rz_rollout(ctx=ctx, problems=problems, engine=engine, samples_per_problem=args.k, sampling=params)
        dt = time.perf_counter() - t0
        wall += dt
        tokens = sum(r.length for g in groups for r in g.rollouts)
        useful += tokens
        per_it.append(dt)
        if it >= warm:
            s_useful, s_wall = s_useful + tokens, s_wall + dt
        if isinstance(plugin, Partial):
            m = plugin.rz_iteration_end(ctx=ctx, groups=groups)
            if m["rollout/groups_returned"]:
                ages.append(m["rollout/stale_age_mean"])
            age_max = max(age_max, m["rollout/stale_age_max"])
        ctx.iteration += 1
        ctx.policy_version += 1
    return {"scheduler": name, "iterations": args.iterations, "useful_tokens": useful, "wall_s": wall,
            "useful_tokens_per_s": useful / wall, "steady_useful_tokens_per_s": s_useful / s_wall,
            "steady_from_iteration": warm + 1, "s_per_iteration": wall / args.iterations,
            "s_per_iteration_max": max(per_it), "stale_age_mean": sum(ages) / len(ages) if ages else 0.0,
            "stale_age_max": age_max}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=512)
    ap.add_argument("--tail", type=float, default=0.1, help="fraction of problems with near-maximum responses")
    ap.add_argument("--segment", type=int, default=64, help="rollout.segment_tokens of the partial scheduler")
    ap.add_argument("--length-ratio", type=float, default=PartialConfig.length_ratio, help="rollout.length_ratio of the partial scheduler")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "partial_rollouts.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), "llama", 64, 4, 4, 176, args.max_new + 64, tok.pad_token_id, tok.bos_token_id,
                             tok.eos_token_id, seed=0)
    policy = Policy(model=model.eval(), tokenizer=tok)
    rows = [run("sync", Sync(None), policy, args),
            run("partial", Partial(PartialConfig(segment_tokens=args.segment, length_ratio=args.length_ratio)), policy, args)]
    ratio = rows[1]["useful_tokens_per_s"] / rows[0]["useful_tokens_per_s"]
    steady = rows[1]["steady_useful_tokens_per_s"] / rows[0]["steady_useful_tokens_per_s"]
    print(f"{'scheduler':10} {'useful tok/s':>12} {'steady tok/s':>12} {'s/iter':>8} {'max s/iter':>10} {'age mean':>8} {'age max':>7}")
    for r in rows:
        print(f"{r['scheduler']:10} {r['useful_tokens_per_s']:12.0f} {r['steady_useful_tokens_per_s']:12.0f} {r['s_per_iteration']:8.3f}"
              f" {r['s_per_iteration_max']:10.3f} {r['stale_age_mean']:8.2f} {r['stale_age_max']:7.0f}")
    print(f"partial / sync useful tokens/s: {ratio:.2f}x over all {args.iterations} iterations, {steady:.2f}x from iteration "
          f"{rows[1]['steady_from_iteration']} on (goal >= 2x)")
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "args": {k: v for k, v in vars(args).items() if k != "out"},
           "results": rows, "ratio_partial_over_sync": ratio, "ratio_steady": steady, "threads": 1}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
