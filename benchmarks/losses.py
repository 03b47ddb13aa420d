"""Seconds per iteration of each loss recipe relative to ``k15`` on the same batches, and peak
memory (maximum resident set size) of each, ``ppo`` with its critic included.

Every (recipe, repeat) is one fresh ``reasonzoo.trainer.train`` run in its own child process (this
script with ``--child``), so each child's peak RSS (``os.wait4``'s ``ru_maxrss``) covers exactly one
recipe: the imports, the model, the optimizer state, a critic, rollouts and updates, on the same
footing for all. Interleaved: repeat r runs every variant once, in an order rotated by r, so a
change of the box's load hits all variants alike; ``--repeats`` (>= 5) repeats.

Each run is the recipe at its natural settings (``conf/recipe/<name>.yaml`` with the default task,
model and the cached SFT warm-up), for ``--iterations`` iterations, with ``logger=none
progress=false eval.before=false eval.every=0 eval.problems_per_difficulty=1`` (the final
evaluation's time is subtracted anyway) and ``checkpoint.every`` = the last iteration. "The same
batches": every run shares ``seed``, ``data_seed`` and ``warmup_seed``, so it starts from the same
cached warm-up weights and its iteration 1 samples the same problems and the same rollouts (checked:
``same_batch`` compares iteration 1's response tokens with k15's). The exception is ``dapo``,
whose dynamic sampling draws up to 48 candidate problems, 16 per round, until 16 groups with
varying rewards are kept (k15's batch only when its first round's groups all vary, as happened
in iteration 1 of the recorded run; reported at this natural setting), hence also ``dapo_loss``
(``rollout=sync prompts_per_iteration=16``: k15's batch, DAPO's loss and overlong filtering).

Two measures, both median per child and then min / median / max over the repeats:

- **update** (equal work: same tokens, same optimizer steps): ``reasonzoo.trainer.update`` on
  iteration 1's collated batch, the part in which the losses differ (``rz_prepare_update``, loss
  forward/backward, optimizer steps). The child wraps ``update``: on iteration 1 it runs it
  ``1 + --update-repeats`` times from the same start (every optimizer param group's tensors, the
  optimizer state and the torch RNG state restored before each), the first call untimed (first-use
  allocations), and keeps the last call's result, so the run continues exactly as without the
  wrapper (``update_identical``: every repeat returned the same metrics).
- **iteration** (natural settings): ``time/iteration - time/eval`` of iterations 2..N of the
  trainer's records (iteration 1 holds the repeated updates): rollouts, rewards, length penalty,
  update, weight sync. Tokens differ from iteration 2 on (the policies diverge): the generated
  tokens per iteration are reported beside it.

Ratios to ``k15`` are taken per repeat (variant / k15 of the same repeat), then min / median / max.
Peak RSS is reported in MiB. Variants ``ppo_head`` and ``ppo_model`` are ``recipe=ppo`` with
``loss.critic=head`` (a value head on the policy's trunk) and ``loss.critic=model`` (a separate
trunk copy), both with ``loss.critic_warmup=0``: the recipe's first 2 iterations step the critic
only (a cheaper update, and with ``head`` no backward through the trunk), so at the recipe's
setting iterations 1-2 would time the critic warm-up instead of the PPO update of every later
iteration. Writes ``benchmarks/results/losses.json`` with the settings, load average, library
versions and every raw figure.

    OMP_NUM_THREADS=1 python benchmarks/losses.py [--repeats 5] [--iterations 2] [--update-repeats 2]
    OMP_NUM_THREADS=1 python benchmarks/losses.py --variants k15 ppo_head   # a subset (k15 always runs)
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import main_job  # noqa: E402  (this folder: the scripts run as python benchmarks/<name>.py)
from _common import code_state, stats, versions  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "1")

RESULTS = Path(__file__).resolve().parent / "results" / "losses.json"
REFERENCE = "k15"
#: variant -> overrides on top of the defaults (the recipe at its natural settings)
VARIANTS: dict[str, list[str]] = {
    "k15": ["recipe=k15"],
    "reinforce": ["recipe=reinforce"],
    "rloo": ["recipe=rloo"],
    "grpo": ["recipe=grpo"],
    "dr_grpo": ["recipe=dr_grpo"],
    "dapo": ["recipe=dapo"],
    "dapo_loss": ["recipe=dapo", "rollout=sync", "prompts_per_iteration=16", "~rollout.groups", "~rollout.round_size"],
    "ppo_head": ["recipe=ppo", "loss.critic=head", "loss.critic_warmup=0"],
    "ppo_model": ["recipe=ppo", "loss.critic=model", "loss.critic_warmup=0"],
}
#: every run: no logging, no evaluation but the final one (on one problem per difficulty)
COMMON = ["logger=none", "progress=false", "eval.before=false", "eval.every=0", "eval.problems_per_difficulty=1"]


# ---- child: one run of one variant ---------------------------------------------------------------


def child(spec: dict) -> None:
    """One ``train`` run with iteration 1's update timed ``spec['update_repeats']`` times on the
    same batch from the same state; writes timings and the run's records to ``spec['out']``."""
    import torch

    import reasonzoo.trainer as trainer
    from reasonzoo.train import compose

    real_update = trainer.update
    timed: list[float] = []
    results: list[dict] = []

    def update(ctx, batch, cfg):
        if ctx.iteration != 1:
            return real_update(ctx, batch, cfg)
        params = [p for g in ctx.optimizer.param_groups for p in g["params"]]  # the policy's and a critic's
        saved = [p.detach().clone() for p in params]
        opt_state = copy.deepcopy(ctx.optimizer.state_dict())
        rng = torch.get_rng_state()
        out = None
        for i in range(1 + spec["update_repeats"]):
            if i:
                with torch.no_grad():
                    for p, s in zip(params, saved):
                        p.copy_(s)
                ctx.optimizer.load_state_dict(copy.deepcopy(opt_state))
                torch.set_rng_state(rng)
            t0 = time.perf_counter()
            out = real_update(ctx, batch, cfg)
            seconds = time.perf_counter() - t0
            if i:
                timed.append(seconds)
            results.append(out)
        return out

    trainer.update = update
    iterations = spec["iterations"]
    cfg = compose(COMMON + spec["overrides"] + [f"iterations={iterations}", f"checkpoint.every={iterations}"])
    summary = trainer.train(cfg, spec["run_dir"])
    recs = [json.loads(line) for line in (Path(spec["run_dir"]) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    keys = ("iteration", "time/iteration", "time/eval", "time/rollout", "time/update", "response/tokens",
            "rollout/tokens", "response/groups", "reward/accuracy", "warmup/cached", "loss/total")
    Path(spec["out"]).write_text(json.dumps({
        "update_s": timed,
        "update_identical": all(r == results[0] for r in results),
        "records": [{k: r[k] for k in keys if k in r} for r in recs],
        "stopped_by": summary.get("stopped_by"),
        "threads": torch.get_num_threads(),
    }))


# ---- parent: interleaved repeats, one child per (variant, repeat) --------------------------------


def run_child(overrides: list[str], tmp: Path, tag: str, args) -> dict:
    """Run one child; returns its figures plus ``peak_rss_mib`` (its ru_maxrss) and ``wall_s``."""
    spec = {"overrides": overrides, "run_dir": str(tmp / tag), "out": str(tmp / f"{tag}.json"),
            "iterations": args.iterations, "update_repeats": args.update_repeats}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{tag} failed (exit {proc.returncode}): {' '.join(overrides)}\n{output.decode()[-3000:]}")
    out = json.loads(Path(spec["out"]).read_text())
    out.update(peak_rss_mib=usage.ru_maxrss / 1024, wall_s=wall)  # Linux: ru_maxrss in KiB
    return out


def per_child(r: dict) -> dict:
    """A child's figures: median timed update, median whole iteration (2..N, eval time excluded)."""
    recs = [x for x in r["records"] if x["iteration"] >= 1]
    later = [x for x in recs if x["iteration"] >= 2]
    return {
        "update_s": statistics.median(r["update_s"]),
        "iteration_s": statistics.median(x["time/iteration"] - x.get("time/eval", 0.0) for x in later),
        "peak_rss_mib": r["peak_rss_mib"],
        "batch_tokens": recs[0].get("response/tokens"),  # iteration 1's trained response tokens
        "generated_tokens_per_iteration": statistics.mean(x.get("rollout/tokens", x.get("response/tokens", 0)) for x in later),
        "update_identical": r["update_identical"],
        "warmup_cached": r["records"][0].get("warmup/cached"),  # iteration 0's record
        "wall_s": r["wall_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats, >= 5 (default 5)")
    ap.add_argument("--iterations", type=int, default=2, help="iterations per run, >= 2 (default 2)")
    ap.add_argument("--update-repeats", type=int, default=2, help="timed updates of iteration 1's batch, >= 1 (default 2)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.repeats < 5:
        ap.error(f"--repeats={args.repeats}: the benchmark rules ask for at least 5")
    if args.iterations < 2:
        ap.error(f"--iterations={args.iterations}: needs >= 2 (iteration 1 is the update measurement)")
    if args.update_repeats < 1:
        ap.error(f"--update-repeats={args.update_repeats}: needs >= 1")
    names = [REFERENCE] + [v for v in args.variants if v != REFERENCE]
    raw: dict[str, list[dict]] = {v: [] for v in names}
    loads = []
    code = code_state()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rz-bench-losses-") as tmp:
        for rep in range(args.repeats):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for v in order:
                loads.append(os.getloadavg()[0])
                r = run_child(VARIANTS[v], Path(tmp), f"{v}-{rep}", args)
                raw[v].append(per_child(r))
                print(f"repeat {rep + 1}/{args.repeats} {v:10s} update {raw[v][-1]['update_s']:.3f} s  "
                      f"iteration {raw[v][-1]['iteration_s']:.3f} s  peak RSS {raw[v][-1]['peak_rss_mib']:.0f} MiB  "
                      f"(child {r['wall_s']:.1f} s, load {loads[-1]:.1f})", flush=True)
    ref = raw[REFERENCE]
    table = {}
    for v in names:
        rows = raw[v]
        table[v] = {
            "overrides": VARIANTS[v],
            "same_batch": all(a["batch_tokens"] == b["batch_tokens"] for a, b in zip(rows, ref)),
            "update_identical": all(x["update_identical"] for x in rows),
            "warmup_cached": all(x["warmup_cached"] == 1.0 for x in rows),
            "batch_tokens": rows[0]["batch_tokens"],
            "generated_tokens_per_iteration": stats([x["generated_tokens_per_iteration"] for x in rows]),
            **{m: stats([x[m] for x in rows]) for m in ("update_s", "iteration_s", "peak_rss_mib")},
            **{f"{m}_ratio": stats([x[m] / y[m] for x, y in zip(rows, ref)])
               for m in ("update_s", "iteration_s", "peak_rss_mib")},
            "raw": rows,
        }
    import torch

    result = {
        "name": "losses",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "OMP_NUM_THREADS=1 python benchmarks/losses.py " + " ".join(sys.argv[1:]),
        "settings": {"repeats": args.repeats, "iterations": args.iterations, "update_repeats": args.update_repeats,
                     "common_overrides": COMMON, "reference": REFERENCE, "cpu_count": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                     "interleaved": "repeat r runs every variant once, the order rotated by r; one child process each"},
        "versions": versions(main_job.PACKAGES),
        "code_at_start": code, "code_at_end": code_state(),
        "load_average_1min": stats(loads),
        "wall_seconds": time.perf_counter() - t_start,
        "variants": table,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{'variant':10s} {'update s':>9s} {'x k15 (min-max)':>20s} {'iteration s':>12s} {'x k15 (min-max)':>20s} "
          f"{'peak RSS MiB':>13s} {'x k15':>6s} {'same batch':>10s}")
    for v, t in table.items():
        u, ur, i, ir = t["update_s"], t["update_s_ratio"], t["iteration_s"], t["iteration_s_ratio"]
        print(f"{v:10s} {u['median']:9.3f} {ur['median']:7.2f} ({ur['min']:.2f}-{ur['max']:.2f}) "
              f"{i['median']:12.3f} {ir['median']:7.2f} ({ir['min']:.2f}-{ir['max']:.2f}) "
              f"{t['peak_rss_mib']['median']:13.0f} {t['peak_rss_mib_ratio']['median']:6.2f} {str(t['same_batch']):>10s}")
    print(f"written to {args.out} ({result['wall_seconds']:.0f} s, load {result['load_average_1min']['median']:.1f})")


if __name__ == "__main__":
    main()
