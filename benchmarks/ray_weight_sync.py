"""Seconds per ``sync_weights()`` of ``launcher=ray``'s engine actors: ``weight_sync=object_store``
(one ``ray.put`` of the state dict, a reference pushed to each actor) against ``weight_sync=broadcast``
(the driver and the actors in a gloo process group of their own: the version, then one flat buffer
per dtype), with 2 engine actors, for the default tiny model and a ~27M-parameter one built from
config.

Interleaved: each repeat syncs both ways, in an order that alternates per repeat; the weights are
changed (× 1.0001) and the version bumped before every sync, so each one moves new weights. One
untimed repeat, then ``--repeats`` (>= 5) timed ones; min / median / max per way and of the ratio
broadcast / object_store per repeat. On one CPU node the object store needs no copy to reach a
local actor (Ray maps it), while gloo copies every byte over the loopback network; the broadcast
is meant for NCCL across GPUs, which this box cannot measure.

    OMP_NUM_THREADS=1 python benchmarks/ray_weight_sync.py [--repeats 5]

Needs the ray extra. Writes ``benchmarks/results/ray_weight_sync.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import code_state, fmt, load_average, stats, versions  # noqa: E402

MODELS = {
    "tiny": [],
    "27M": ["model.tiny.hidden_size=512", "model.tiny.num_layers=8", "model.tiny.num_heads=8",
            "model.tiny.intermediate_size=1536"],
}
WAYS = ("object_store", "broadcast")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ray_weight_sync.json"))
    args = ap.parse_args()
    import ray
    import torch

    from reasonzoo.context import RunContext
    from reasonzoo.ray_engines import RayEngineGroup
    from reasonzoo.registry import build_plugins, make_manager
    from reasonzoo.train import compose

    torch.set_num_threads(1)
    load_before = load_average()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    results = {}
    with tempfile.TemporaryDirectory(prefix="ray-weight-sync-") as root:
        for label, extra in MODELS.items():
            cfg = compose(["logger=none", "progress=false", *extra])
            ctx = RunContext(cfg=cfg, hook=None, run_dir=Path(root) / label)
            ctx.policy = make_manager(build_plugins(cfg)).hook.rz_build_policy(ctx=ctx)
            n = sum(p.numel() for p in ctx.policy.model.parameters())
            groups = {w: RayEngineGroup(ctx, 2, actor_options={"num_cpus": 0.25}, weight_sync=w) for w in WAYS}
            times: dict[str, list[float]] = {w: [] for w in WAYS}
            try:
                for r in range(args.repeats + 1):
                    for w in (WAYS if r % 2 == 0 else WAYS[::-1]):
                        with torch.no_grad():
                            for p in ctx.policy.model.parameters():
                                p.mul_(1.0001)
                        ctx.policy_version += 1
                        t0 = time.perf_counter()
                        groups[w].sync_weights()
                        if r:  # the first repeat is untimed (first-use costs)
                            times[w].append(time.perf_counter() - t0)
                fallbacks = {w: g.fault_counts().get("ray/weight_sync_fallbacks", 0) for w, g in groups.items()}
            finally:
                for g in groups.values():
                    g.close()
            results[label] = {"parameters": n, "bytes": 4 * n, "fallbacks": fallbacks,
                              **{w: stats(v) for w, v in times.items()}, "raw": times,
                              "ratio_broadcast_to_object_store": stats([b / o for b, o in zip(times["broadcast"],
                                                                                              times["object_store"])])}
            res = results[label]
            print(f"{label} ({n / 1e6:.2f}M params): object_store {fmt(res['object_store'], '.4f', ' s')}, "
                  f"broadcast {fmt(res['broadcast'], '.4f', ' s')}, ratio {fmt(res['ratio_broadcast_to_object_store'])}x",
                  flush=True)
    ray.shutdown()
    Path(args.out).write_text(json.dumps({
        "benchmark": "ray_weight_sync", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"repeats": args.repeats, "engine_actors": 2, "models": MODELS, "ray_cluster_cpus": 2},
        "results": results, "load_average_before": load_before, "load_average_after": load_average(),
        "versions": versions(["torch", "ray"]), "code": code_state()}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
