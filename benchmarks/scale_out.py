"""Throughput of ``launcher=ray`` against ``launcher=local``: 1 and 2 engine actors, synchronous and
asynchronous (``max_staleness=1``) rollouts, in one run on one local Ray cluster.

Arms (each a whole ``reasonzoo.trainer.train`` run of the default k1.5 recipe and task, in this
process, the cached warm-up, ``--iterations`` iterations of 16 problems x 8 samples, up to 64 tokens):

- ``local``: today's single process (engine/torch in the trainer's process);
- ``ray_e1`` / ``ray_e2``: 1 / 2 engine actors (engine/torch inside), trainer in this process;
- ``ray_e1_async`` / ``ray_e2_async``: the same with the next iteration's rollouts generated while
  the current one trains.

Interleaved: repeat r runs every arm once, in an order rotated by r; ``--repeats`` (>= 5). Per run,
iterations 2..N (iteration 1 pays first-call costs; every arm's first iteration is synchronous):
**generated tokens per second** (Σ ``response/tokens`` / Σ iteration seconds, evaluation excluded)
and **iterations per second** (1 / median iteration seconds); the run's **start-up** (its wall time
less its iterations': Ray actors starting, the warm-up cache load, the final evaluation) is reported
beside. Ratios to ``local`` are per repeat, then min / median / max.

Equal work: every arm runs the same iterations with the same seed; with 1 engine actor the rollouts
are token for token those of ``local`` (reasonzoo.ray_engines), with 2 they come from other random
streams and lengths differ a little, hence tokens per second as the work-normalised figure (and
the tokens per iteration recorded beside it). On this 2-core box the engine actors, the trainer
and Ray's own processes share two cores: expect overheads, not speed-ups (the figures say how much).

    OMP_NUM_THREADS=1 python benchmarks/scale_out.py [--repeats 5] [--iterations 6]

Needs the ray extra (``pip install -e '.[ray]'``). Writes ``benchmarks/results/scale_out.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import code_state, fmt, load_average, stats, versions  # noqa: E402

ARMS = {
    "local": [],
    "ray_e1": ["launcher=ray", "launcher.engines=1"],
    "ray_e2": ["launcher=ray", "launcher.engines=2"],
    "ray_e1_async": ["launcher=ray", "launcher.engines=1", "max_staleness=1"],
    "ray_e2_async": ["launcher=ray", "launcher.engines=2", "max_staleness=1"],
}
BASE = ["logger=none", "progress=false", "eval.before=false", "eval.every=0", "eval.problems_per_difficulty=1",
        "launcher.engine_cpus=0.5"]


def run_arm(name: str, iterations: int, root: Path) -> dict:
    """One run of arm ``name``: per-iteration seconds and tokens of iterations 2..N, and start-up."""
    from reasonzoo.train import compose
    from reasonzoo.trainer import train

    overrides = BASE + [f"iterations={iterations}", f"checkpoint.every={iterations}"] + ARMS[name]
    if name == "local":
        overrides = [o for o in overrides if not o.startswith("launcher.")]
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    t0 = time.perf_counter()
    train(compose(overrides), run_dir)
    wall = time.perf_counter() - t0
    recs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    its = [r for r in recs if r["iteration"] >= 2]
    secs = [r["time/iteration"] - r.get("time/eval", 0.0) for r in its]
    tokens = [r["response/tokens"] for r in its]
    all_secs = sum(r["time/iteration"] for r in recs if "time/iteration" in r)
    return {"tokens_per_s": sum(tokens) / sum(secs), "iterations_per_s": 1 / statistics.median(secs),
            "tokens_per_iteration": statistics.mean(tokens), "startup_s": wall - all_secs,
            "staleness_mean": statistics.mean(r.get("rollout/staleness_mean", 0.0) for r in its),
            "accuracy_last": recs[-1].get("reward/accuracy")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "scale_out.json"))
    args = ap.parse_args()
    if args.repeats < 1 or args.iterations < 3:
        ap.error("--repeats >= 1 and --iterations >= 3 (iterations 2..N are timed)")
    import ray
    import torch

    torch.set_num_threads(1)
    load_before = load_average()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    arms = ["local"] + [a for a in args.arms if a != "local"]
    raw: dict[str, list[dict]] = {a: [] for a in arms}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scale-out-") as root:
        for r in range(args.repeats):
            order = arms[r % len(arms):] + arms[: r % len(arms)]
            for a in order:
                raw[a].append(run_arm(a, args.iterations, Path(root)))
                print(f"repeat {r + 1}/{args.repeats} {a:13s} {raw[a][-1]['tokens_per_s']:8.0f} tok/s "
                      f"{raw[a][-1]['iterations_per_s']:.3f} it/s start-up {raw[a][-1]['startup_s']:.1f} s", flush=True)
    ray.shutdown()
    summary = {}
    for a in arms:
        s = {k: stats([x[k] for x in raw[a]]) for k in ("tokens_per_s", "iterations_per_s", "tokens_per_iteration", "startup_s")}
        if a != "local":
            for k in ("tokens_per_s", "iterations_per_s"):
                s[f"{k}_ratio_to_local"] = stats([x[k] / l[k] for x, l in zip(raw[a], raw["local"])])
        summary[a] = s
        line = f"{a:13s} tokens/s {fmt(s['tokens_per_s'], '.0f')}  it/s {fmt(s['iterations_per_s'], '.3f')}  " \
               f"start-up {fmt(s['startup_s'], '.1f', ' s')}"
        if a != "local":
            line += f"  ratio to local: tokens/s {fmt(s['tokens_per_s_ratio_to_local'])}x"
        print(line)
    result = {
        "benchmark": "scale_out", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"repeats": args.repeats, "iterations": args.iterations, "arms": {a: ARMS[a] for a in arms},
                     "base_overrides": BASE, "timed_iterations": f"2..{args.iterations}", "ray_cluster_cpus": 2,
                     "cores": os.cpu_count(), "threads": 1},
        "summary": summary, "raw": raw, "wall_seconds": time.perf_counter() - t_start,
        "load_average_before": load_before, "load_average_after": load_average(),
        "versions": versions(["torch", "transformers", "ray"]), "code": code_state(),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
