"""Per-rank memory of the trainer's data parallelism: ``launcher.strategy=ddp`` vs ``fsdp2`` on 2
gloo ranks, and one process, after one update (issue 12; docs/cluster.md, "Trainer ranks").

Setup: a freshly initialised Llama of 6.4M parameters (width 256, 6 layers, 4 heads, MLP 1024,
character tokenizer), fp32, one thread per rank; ``loss/grpo``, AdamW, one ``reasonzoo.trainer.update``
of a fixed 8-row batch (``train.minibatch_size=64``, ``train.microbatches=2``), the ranks joined
through ``DataParallel`` exactly as the trainer joins them (``dp.shard`` for fsdp2). Each rank is a
fresh ``spawn`` process.

Measured per rank after the update:

- bytes held: parameters, gradients and AdamW state of the *training* model (for fsdp2 this
  rank's shards, ``DTensor.to_local()``), and, on fsdp2's rank 0, the full view kept for the
  engine, evaluation and checkpoints;
- RSS after the update (``malloc_trim`` first, so freed buffers leave it) and peak RSS growth
  (``ru_maxrss``), both relative to the RSS before the model was built, in MB. The processes run
  with ``MALLOC_MMAP_THRESHOLD_=131072`` so that large freed tensors are returned to the OS
  (with glibc's default, the freed all-gather / reduce-scatter buffers stay in the RSS).

The three arms (one process, ddp, fsdp2) run interleaved, the order rotating, ``--repeats`` (>= 5)
times; bytes are the same every repeat, RSS figures are reported min / median / max. Writes
``benchmarks/results/fsdp_memory.json`` with the settings, load averages and versions.

    OMP_NUM_THREADS=1 python benchmarks/fsdp_memory.py [--repeats 5]   # ~1-2 minutes
    python benchmarks/fsdp_memory.py --table                          # the table of the results file
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import code_state, load_average, stats, versions  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "fsdp_memory.json"
MODEL = dict(hidden_size=256, num_layers=6, num_heads=4, intermediate_size=1024, max_position_embeddings=512)
ARMS = (("one process", 1), ("ddp", 2), ("fsdp2", 2))


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def _local_bytes(t) -> int:
    from torch.distributed.tensor import DTensor

    t = t.to_local() if isinstance(t, DTensor) else t
    return t.numel() * t.element_size()


def _rank(rank: int, world: int, strategy: str, tmp: str, q) -> None:
    try:
        import ctypes
        import importlib

        import torch

        torch.set_num_threads(1)
        from reasonzoo.config import validate
        from reasonzoo.context import RunContext
        from reasonzoo.distributed import DataParallel
        from reasonzoo.plugins.loss.grpo import GRPOLoss, GRPOLossConfig
        from reasonzoo.policy import Policy, build_char_tokenizer, build_tiny_model
        from reasonzoo.registry import make_manager
        from reasonzoo.testing import scored_group
        from reasonzoo.train import compose
        from reasonzoo.trainer import collate, param_groups, update

        if world > 1:
            torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
        for m in ("torch.distributed.fsdp", "torch.distributed.tensor"):  # imported before the baseline, on every arm
            importlib.import_module(m)
        base = _rss_kb()
        tok = build_char_tokenizer()
        model = build_tiny_model(len(tok), "llama", MODEL["hidden_size"], MODEL["num_layers"], MODEL["num_heads"],
                                 MODEL["intermediate_size"], MODEL["max_position_embeddings"], tok.pad_token_id,
                                 tok.bos_token_id, tok.eos_token_id, seed=0)
        policy = Policy(model=model.eval(), tokenizer=tok)
        cfg = compose(["logger=none", "train.minibatch_size=64", "train.microbatches=2"])
        ctx = RunContext(cfg=cfg, hook=make_manager({"loss": GRPOLoss(GRPOLossConfig())}).hook, run_dir=tmp,
                         policy=policy, iteration=1)
        ctx.optimizer = torch.optim.AdamW(param_groups(policy, []), lr=1e-5)
        dp = DataParallel(rank, world, strategy=strategy) if world > 1 else None
        ctx.data_parallel = dp
        if dp is not None:
            dp.shard(ctx)
        texts = ["1+2=3;" * 8 + "#3", "#4" * 20, "1+2=3;3+4=7;7*2=4;#4" * 2, "12;#3" * 9]
        batch = collate([scored_group(policy, [1, 0, 0, 1], texts, "p"), scored_group(policy, [0, 1, 1, 0], texts, "q")],
                        policy.pad_token_id)
        ctx.hook.rz_iteration_start(ctx=ctx)
        update(ctx, batch, validate(cfg))
        sharded = dp.sharded if dp is not None else None
        train_model = sharded.policy.model if sharded is not None else policy.model
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        q.put({"rank": rank,
               "parameters": sum(p.numel() for p in model.parameters()),
               "param_bytes": sum(_local_bytes(p) for p in train_model.parameters()),
               "grad_bytes": sum(_local_bytes(p.grad) for p in train_model.parameters() if p.grad is not None),
               "optimizer_bytes": sum(_local_bytes(v) for s in ctx.optimizer.state.values() for v in s.values()
                                      if torch.is_tensor(v) and v.dim() > 0),
               "full_view_bytes": sum(_local_bytes(p) for p in policy.model.parameters()) if sharded is not None and rank == 0 else 0,
               "rss_after_update_mb": (_rss_kb() - base) / 1024,
               "peak_rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024})
        if world > 1:
            torch.distributed.destroy_process_group()
    except BaseException:
        q.put({"rank": rank, "error": traceback.format_exc()})


def run_arm(strategy: str, world: int) -> list[dict]:
    mp = multiprocessing.get_context("spawn")
    q = mp.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [mp.Process(target=_rank, args=(r, world, strategy, tmp, q)) for r in range(world)]
        for p in procs:
            p.start()
        out = sorted((q.get(timeout=600) for _ in procs), key=lambda r: r["rank"])
        for p in procs:
            p.join()
    for r in out:
        if "error" in r:
            raise RuntimeError(f"{strategy} rank {r['rank']} failed:\n{r['error']}")
    return out


def table(res: dict) -> str:
    rows = ["| arm | rank | params / grads / AdamW state held (MiB) | full view (MiB) | RSS after update (MiB) | peak RSS growth (MiB) |",
            "|---|---:|---:|---:|---:|---:|"]
    mb = 2 ** 20
    for arm in res["arms"]:
        for r in arm["ranks"]:
            rows.append(f"| {arm['arm']} | {r['rank']} | {r['param_bytes'] / mb:.1f} / {r['grad_bytes'] / mb:.1f} / "
                        f"{r['optimizer_bytes'] / mb:.1f} | {r['full_view_bytes'] / mb:.1f} | "
                        f"{r['rss_after_update_mb']['median']:.0f} ({r['rss_after_update_mb']['min']:.0f}-{r['rss_after_update_mb']['max']:.0f}) | "
                        f"{r['peak_rss_growth_mb']['median']:.0f} ({r['peak_rss_growth_mb']['min']:.0f}-{r['peak_rss_growth_mb']['max']:.0f}) |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--table", action="store_true", help="print the table of the results file and exit")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(OUT.read_text())))
        return
    if args.repeats < 5:
        ap.error("--repeats: at least 5")
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"  # inherited by the spawned ranks
    start, load0 = code_state(), load_average()
    runs: dict[str, list[list[dict]]] = {a: [] for a, _ in ARMS}
    for i in range(args.repeats):
        for arm, world in ARMS[i % 3:] + ARMS[: i % 3]:  # rotating order
            strategy = "ddp" if arm == "one process" else arm
            runs[arm].append(run_arm(strategy, world))
            print(f"repeat {i + 1} {arm}: " + ", ".join(f"rank {r['rank']} rss {r['rss_after_update_mb']:.0f} MB peak "
                                                       f"{r['peak_rss_growth_mb']:.0f} MB" for r in runs[arm][-1]), flush=True)
    arms = []
    for arm, world in ARMS:
        ranks = []
        for rank in range(world):
            reps = [rep[rank] for rep in runs[arm]]
            fixed = {k: reps[0][k] for k in ("parameters", "param_bytes", "grad_bytes", "optimizer_bytes", "full_view_bytes")}
            if any({k: r[k] for k in fixed} != fixed for r in reps):
                raise RuntimeError(f"{arm} rank {rank}: bytes held differ between repeats")
            ranks.append({"rank": rank, **fixed, **{k: stats([r[k] for r in reps]) for k in ("rss_after_update_mb", "peak_rss_growth_mb")}})
        arms.append({"arm": arm, "world_size": world, "ranks": ranks})
    res = {"benchmark": "fsdp_memory", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "OMP_NUM_THREADS=1 python benchmarks/fsdp_memory.py " + " ".join(sys.argv[1:]),
           "settings": {"model": {"arch": "llama", **MODEL}, "loss": "grpo", "optimizer": "AdamW", "rows": 8,
                        "minibatch_size": 64, "microbatches": 2, "threads": 1, "backend": "gloo",
                        "MALLOC_MMAP_THRESHOLD_": 131072, "repeats": args.repeats,
                        "interleaved": "arms in rotating order, each rank a fresh spawn process"},
           "arms": arms, "load_average_before": load0, "load_average_after": load_average(),
           "versions": versions(["torch"]), "code_at_start": start, "code_at_end": code_state()}
    OUT.write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
