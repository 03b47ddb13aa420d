"""What 2 engine actors change in a run's results: the README's main job (the k1.5 recipe, 60
iterations) under ``launcher=local`` and under ``launcher=ray`` with 2 engine actors and 2 trainer
ranks, for ``--seeds`` RL seeds, interleaved (local s0, ray s0, local s1, ...).

Why they differ at all (reasonzoo.ray_engines): with 2 engine actors a rollout's requests are cut in
two chunks, each sampled from a seed drawn from the run's generator, so the tokens come from other
random streams than the local engine's; the 2 trainer ranks sum their gradients in another order
(float32 rounding, ~1e-7). With 1 engine actor the rollouts are exactly local's
(tests/test_ray_launcher.py). The difference measured here is therefore the run-to-run spread of
other random streams, to be read against the spread over seeds.

    OMP_NUM_THREADS=1 python benchmarks/ray_vs_local.py [--seeds 3]

Needs the ray extra. Writes ``benchmarks/results/ray_vs_local.json``: per run the held-out accuracy
before and after RL, the final mean response length and the wall time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import code_state, load_average, versions  # noqa: E402

ARMS = {"local": [], "ray_e2_r2": ["launcher=ray", "launcher.engines=2", "launcher.trainer_ranks=2",
                                   "launcher.engine_cpus=0.5", "launcher.rank_cpus=0.5"]}


def run(arm: str, seed: int, root: Path) -> dict:
    from reasonzoo.train import compose
    from reasonzoo.trainer import train

    run_dir = Path(tempfile.mkdtemp(prefix=f"{arm}-s{seed}-", dir=root))
    t0 = time.perf_counter()
    summary = train(compose(["logger=none", "progress=false", f"seed={seed}", *ARMS[arm]]), run_dir)
    recs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"seed": seed, "initial_accuracy": summary["initial_eval"]["eval/accuracy"],
            "final_accuracy": summary["final_eval"]["eval/accuracy"],
            "final_length": summary["final_eval"]["eval/mean_length"],
            "train_accuracy_last10": statistics.mean(r["reward/accuracy"] for r in recs[-10:]),
            "wall_seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ray_vs_local.json"))
    args = ap.parse_args()
    import ray
    import torch

    torch.set_num_threads(1)
    load_before = load_average()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    raw: dict[str, list[dict]] = {a: [] for a in ARMS}
    with tempfile.TemporaryDirectory(prefix="ray-vs-local-") as root:
        for seed in range(args.seeds):
            for arm in ARMS:
                raw[arm].append(run(arm, seed, Path(root)))
                r = raw[arm][-1]
                print(f"seed {seed} {arm:10s} accuracy {r['initial_accuracy']:.3f} -> {r['final_accuracy']:.3f} "
                      f"length {r['final_length']:.1f} {r['wall_seconds']:.0f} s", flush=True)
    ray.shutdown()
    summary = {}
    for arm, runs in raw.items():
        acc = [r["final_accuracy"] for r in runs]
        summary[arm] = {"final_accuracy_mean": statistics.mean(acc),
                        "final_accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                        "final_length_mean": statistics.mean(r["final_length"] for r in runs),
                        "wall_seconds_median": statistics.median(r["wall_seconds"] for r in runs)}
    diffs = [r["final_accuracy"] - l["final_accuracy"] for r, l in zip(raw["ray_e2_r2"], raw["local"])]
    summary["paired_difference_ray_minus_local"] = {"per_seed": diffs, "mean": statistics.mean(diffs)}
    for arm in ARMS:
        s = summary[arm]
        print(f"{arm:10s} final accuracy {s['final_accuracy_mean']:.3f} ± {s['final_accuracy_sd']:.3f}  "
              f"length {s['final_length_mean']:.1f}  wall {s['wall_seconds_median']:.0f} s")
    print("paired difference (ray - local):", ", ".join(f"{d:+.3f}" for d in diffs))
    Path(args.out).write_text(json.dumps({
        "benchmark": "ray_vs_local", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"seeds": args.seeds, "arms": ARMS, "recipe": "k15 (the main job: 60 iterations)"},
        "summary": summary, "raw": raw, "load_average_before": load_before, "load_average_after": load_average(),
        "versions": versions(["torch", "transformers", "ray"]), "code": code_state()}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
