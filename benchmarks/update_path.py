"""Seconds of one ``reasonzoo.trainer.update`` on the default batch with π_old / the k1.5
reference read from the engine's behaviour log-probs (``loss.reuse_behaviour_logprobs: true``,
:func:`reasonzoo.pg.behaviour_is_current`) and with the separate no-grad forward (``false``), for
``loss/k15`` (the default recipe) and ``loss/grpo`` (issue 11).

Setup, one process, one torch thread:

- the default config (``recipe/k15``): the default tiny Llama after the cached SFT warm-up
  (``warmup/sft``; built on first use, ~5.5 CPU-minutes, then cached under ``cache_dir``),
  16 prompts x 8 samples at T = 1, top-p = 1, at most 64 new tokens; ``train.minibatch_size`` 32
  -> 4 optimizer steps of 2 micro-batches each, AdamW as the trainer builds it;
- one rollout batch (iteration 1 of seed 0: the sampler's problems, the torch engine's rollouts,
  the reward and k1.5 length reward), collated once and held fixed;
- per repeat and loss, both arms start from the same weights and a fresh optimizer (the loss's
  ``rz_iteration_start`` runs first, as in the trainer) and see the same minibatch order
  (``ctx.iteration`` fixed); the arms alternate in order from repeat to repeat (reuse first on
  even repeats). ``--repeats`` (default 7) timings per arm: min / median / max.

Equal work except the point of the change: the same batch, the same optimizer steps and
micro-batches; the reuse arm skips the one full no-grad forward over the batch in
``rz_prepare_update``, so its gain is that saved work. Also recorded per arm: the time of
``rz_prepare_update`` alone, and the largest |parameter difference| between the two arms after the
update and the norm of that difference over the norm of the update (the reuse is exact up to
the engine's ~1e-6 log-prob agreement; AdamW's first step after k1.5's optimizer reset is
g/(|g| + 1e-8) per coordinate, so a coordinate with a near-zero gradient may move by up to ~lr
differently while the update as a whole agrees: the norms of the update and of the difference
are recorded), the
``loss/reused_behaviour_logprobs`` metric of each arm, the load average before and after, versions.

    OMP_NUM_THREADS=1 python benchmarks/update_path.py [--repeats 7] [--losses k15 grpo] [--out PATH]
        [--overrides key=value ...]   # extra config overrides (e.g. a tiny smoke run)

Writes ``benchmarks/results/update_path.json`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from _common import stats  # noqa: E402  (this folder: the script runs as python benchmarks/update_path.py)

RESULTS = Path(__file__).resolve().parent / "results" / "update_path.json"
BASE = ["logger=none", "progress=false", "threads=1"]


def _stats(xs: list[float]) -> dict:
    return {**stats(xs), "all": xs}


def rollout_batch(run_dir: Path, extra: list[str]):
    """The default config's context after the warm-up, and one collated rollout batch."""
    from reasonzoo.config import validate
    from reasonzoo.context import RunContext
    from reasonzoo.registry import build_plugins, make_manager
    from reasonzoo.train import compose
    from reasonzoo.trainer import collate, param_groups

    cfg = compose(BASE + extra)
    rc = validate(cfg)
    torch.set_num_threads(rc.threads)
    hook = make_manager(build_plugins(cfg)).hook
    ctx = RunContext(cfg=cfg, hook=hook, run_dir=run_dir)
    torch.manual_seed(rc.seed)
    problems = hook.rz_load_problems(ctx=ctx, split="train")
    ctx.policy = hook.rz_build_policy(ctx=ctx)
    ctx.engine = hook.rz_build_engine(ctx=ctx, policy=ctx.policy)
    ctx.optimizer = torch.optim.AdamW(param_groups(ctx.policy, hook.rz_trainable_parameters(ctx=ctx, policy=ctx.policy)),
                                      lr=rc.train.lr, weight_decay=rc.train.weight_decay, betas=tuple(rc.train.betas))
    hook.rz_run_start(ctx=ctx)
    t0 = time.perf_counter()
    warm = hook.rz_warmup(ctx=ctx, policy=ctx.policy, problems=problems) or {}
    t_warm = time.perf_counter() - t0
    ctx.engine.sync_weights()
    ctx.iteration = 1
    hook.rz_iteration_start(ctx=ctx)
    chosen = hook.rz_sample_problems(ctx=ctx, problems=problems, n=rc.prompts_per_iteration)
    groups = hook.rz_rollout(ctx=ctx, problems=chosen, engine=ctx.engine, samples_per_problem=rc.samples_per_prompt,
                             sampling=rc.generation.sampling())
    rewards = hook.rz_reward(ctx=ctx, groups=groups)
    groups = [replace(g, rewards=tuple(r)) for g, r in zip(groups, rewards)]
    lens = hook.rz_length_penalty(ctx=ctx, groups=groups)
    groups = [replace(g, length_rewards=tuple(x)) for g, x in zip(groups, lens)]
    batch = collate(groups, ctx.policy.pad_token_id)
    return ctx, rc, batch, {"warmup_seconds": t_warm, "warmup_cached": warm.get("warmup/cached")}


def make_loss(name: str, reuse: bool, extra: list[str]):
    """The loss plugin as the trainer builds it from the default config plus ``loss=<name>``."""
    from reasonzoo.registry import build_plugins
    from reasonzoo.train import compose

    cfg = compose(BASE + extra + [f"loss={name}", f"loss.reuse_behaviour_logprobs={str(reuse).lower()}"])
    return build_plugins(cfg)[f"loss/{name}"]


def timed_update(ctx, rc, batch, loss, weights: dict) -> tuple[float, float, list[torch.Tensor], dict]:
    """Restore ``weights``, fresh AdamW, then time ``rz_prepare_update`` alone and ``update``."""
    from reasonzoo.registry import make_manager
    from reasonzoo.trainer import update

    model = ctx.policy.model
    model.load_state_dict(weights)
    ctx.hook = make_manager({"loss": loss}).hook
    ctx.optimizer = torch.optim.AdamW(model.parameters(), lr=rc.train.lr, weight_decay=rc.train.weight_decay,
                                      betas=tuple(rc.train.betas))
    loss.rz_iteration_start(ctx=ctx)
    t0 = time.perf_counter()
    with torch.no_grad():
        model.eval()
        loss.rz_prepare_update(ctx=ctx, batch=batch)
    t_prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = update(ctx, batch, rc)
    t_upd = time.perf_counter() - t0
    return t_upd, t_prep, [p.detach().clone() for p in model.parameters()], metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--losses", nargs="+", default=["k15", "grpo"])
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory() as tmp:
        ctx, rc, batch, warm = rollout_batch(Path(tmp), args.overrides)
    weights = {k: v.detach().clone() for k, v in ctx.policy.model.state_dict().items()}
    start = [p.detach().clone() for p in ctx.policy.model.parameters()]
    from reasonzoo.pg import behaviour_is_current, uniform_groups

    out = {
        "benchmark": "update_path", "date": started, "overrides": args.overrides,
        "settings": {"prompts": rc.prompts_per_iteration, "samples_per_prompt": rc.samples_per_prompt,
                     "max_new_tokens": rc.generation.max_new_tokens, "temperature": rc.generation.temperature,
                     "top_p": rc.generation.top_p, "minibatch_size": rc.train.minibatch_size,
                     "microbatches": rc.train.microbatches, "epochs": rc.train.epochs, "threads": torch.get_num_threads(),
                     "repeats": args.repeats, "rows": len(batch), "padded_width": int(batch.input_ids.shape[1]),
                     "response_tokens": int(batch.response_mask.sum()), "model": dict(ctx.cfg.model.tiny),
                     "rows_in_groups_of_equal_returns": int(uniform_groups(batch.returns, batch.group_index).sum()),
                     "parameters": sum(p.numel() for p in ctx.policy.model.parameters()), **warm},
        "behaviour_is_current": behaviour_is_current(ctx, batch),
        "losses": {},
    }
    for name in args.losses:
        arms = {True: make_loss(name, True, args.overrides), False: make_loss(name, False, args.overrides)}
        times = {True: [], False: []}
        prep = {True: [], False: []}
        diffs, step_norm, diff_norm, flags = [], [], [], {}
        for r in range(args.repeats):
            params = {}
            for reuse in ((True, False) if r % 2 == 0 else (False, True)):
                t_upd, t_prep, params[reuse], metrics = timed_update(ctx, rc, batch, arms[reuse], weights)
                times[reuse].append(t_upd)
                prep[reuse].append(t_prep)
                flags[reuse] = metrics.get("loss/reused_behaviour_logprobs")
            diffs.append(max(float((a - b).abs().max()) for a, b in zip(params[True], params[False])))
            step_norm.append(float(torch.cat([(b - w).flatten() for b, w in zip(params[False], start)]).norm()))  # forward arm's update
            diff_norm.append(float(torch.cat([(a - b).flatten() for a, b in zip(params[True], params[False])]).norm()))
            print(f"{name} repeat {r}: reuse {times[True][-1]:.3f} s, forward {times[False][-1]:.3f} s", file=sys.stderr)
        med_r, med_f = statistics.median(times[True]), statistics.median(times[False])
        out["losses"][name] = {
            "update_seconds_reuse": _stats(times[True]), "update_seconds_forward": _stats(times[False]),
            "prepare_seconds_reuse": _stats(prep[True]), "prepare_seconds_forward": _stats(prep[False]),
            "median_saving_fraction": 1 - med_r / med_f, "speedup_median": med_f / med_r,
            "max_abs_param_diff_between_arms": max(diffs),
            "update_norm_forward": max(step_norm), "update_diff_norm_between_arms": max(diff_norm),
            "reused_metric": {"reuse": flags[True], "forward": flags[False]},
        }
        print(f"{name}: update median {med_r:.3f} s (reuse) vs {med_f:.3f} s (forward): "
              f"{100 * (1 - med_r / med_f):.1f}% less; max |dparam| {max(diffs):.2e}, "
              f"|d update| {max(diff_norm):.2e} vs |update| {max(step_norm):.2e}", file=sys.stderr)
    import transformers

    out["load_average"] = {"before": load_before, "after": os.getloadavg()}
    out["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                       "transformers": transformers.__version__, "cpu_count": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
