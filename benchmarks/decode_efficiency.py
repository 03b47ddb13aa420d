"""Decode efficiency at 12.9M parameters, and whether ``torch.compile`` pays on the CPU (issue 11).

Three measurements, each a "run" of ``benchmarks/results/decode_efficiency.json`` under the key
``<run>/<size>[/<workloads>]`` (a run replaces its own entry and keeps the others):

- ``--run decode``: the fraction of the one-core fp32 matmul peak reached by the torch engine's
  decode path (``reasonzoo.fastdecode.FastDecoder``) on a freshly initialised Llama of
  ``--size`` (default ``12.9M``: hidden 384, 6 layers, 6 heads of 64, MLP 1344, the 260-token
  character vocabulary, tied embeddings: 12,933,504 parameters, N = 12,928,512 in matmuls),
  batch 256, 128 new tokens per row, equal work (EOS masked: every row generates exactly
  ``--max-new`` tokens, checked). Two workloads: ``shared`` (32 prompts x 8 samples, the RL
  rollout: one prefill per prompt) and ``distinct`` (256 different prompts: 256 prefills).
  Arms: ``eager`` (the current module) and, with ``--baseline FILE``, ``baseline``: the class of
  an earlier ``fastdecode.py`` (``git show <commit>:core/fastdecode.py > FILE``), loaded as a
  module of the ``reasonzoo`` package, so before / after are measured side by side;
- ``--run compile_decode``: ``eager`` vs ``compiled`` (the decode step, ``FastDecoder._decode``,
  wrapped by ``torch.compile(dynamic=True)``; the first call's cost reported apart, as
  ``warmup_s``), on ``--size``, shared workload;
- ``--run compile_train``: the lean training forward + backward (``reasonzoo.fasttrain.token_logprobs``
  then ``.sum().backward()``) on the batch of ``step_vs_trl.py`` at max length 128 (8 prompts x 8
  samples, 19-token prompts, 128-token completions) of ``--size``, eager vs
  ``torch.compile(token_logprobs, dynamic=True)``; a second batch with other completion lengths
  (96..128 at 128) is run after the timed rounds to count recompiles on a change of shapes.

Rules of ``benchmarks/README.md``: arms interleaved per round (order alternating), one untimed
warm-up round, ``--repeats`` (>= 5) timed rounds, min / median / max per arm and of the per-round
ratios, load averages at the start / end and per round, versions and commit. Wall seconds are
the figure; each call's process CPU seconds are recorded too (``cpu_s``: less sensitive to the
other processes of a shared box, still not to their use of memory bandwidth). Compiled arms:
``warmup_s`` = the first call (compilation included); ``payback_calls`` = (warm-up - an eager
call) / (eager - compiled per call) when compiled is faster, else null (never pays);
``recompiles`` = graphs compiled after the first (``torch._dynamo`` frame counter). Correctness
of every compiled arm is recorded against eager on the same inputs: tokens equal (same seed) and
max |delta log-prob|; for training also max |delta gradient|.

FLOPs: 2 N per generated token (N = ``nn.Linear`` weights, ``_common.matmul_params``; prefill
and attention scores left out) for decode; 6 N per trained token for training; the fraction is of
``_common.matmul_peak`` (best of 7 1024^3 ``torch.mm`` on one thread).

    OMP_NUM_THREADS=1 python benchmarks/decode_efficiency.py --run decode [--baseline /tmp/fastdecode_old.py]
    OMP_NUM_THREADS=1 python benchmarks/decode_efficiency.py --run compile_decode --size tiny
    OMP_NUM_THREADS=1 python benchmarks/decode_efficiency.py --run compile_train --size tiny
    python benchmarks/decode_efficiency.py --table   # the README table of results/decode_efficiency.json
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from _common import code_state, eos_masked, fmt, load_average, matmul_params, matmul_peak, stats, versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "decode_efficiency.json"
#: hidden, layers, heads, MLP width. "tiny" = the default model.tiny shape (conf/model/hf.yaml)
SIZES = {"tiny": (64, 4, 4, 176), "12.9M": (384, 6, 6, 1344)}
GOAL = 0.40  #: decode fraction of the matmul peak at 12.9M, batch 256 (issue 11)
PROMPT_LEN = 19  #: ~ the default task's mean prompt length in tokens


def build(size: str):
    from reasonzoo.policy import build_char_tokenizer, build_tiny_model

    tok = build_char_tokenizer()
    h, layers, heads, inter = SIZES[size]
    model = build_tiny_model(len(tok), "llama", h, layers, heads, inter, 512, tok.pad_token_id, tok.bos_token_id,
                             tok.eos_token_id, seed=0)
    return model, tok


def prompts(workload: str, batch: int, gen: torch.Generator) -> list[tuple[int, ...]]:
    """``shared``: batch / 8 random prompts, each 8 times (k = 8 samples); ``distinct``: batch prompts."""
    n = batch // 8 if workload == "shared" else batch
    ps = [tuple(torch.randint(3, 90, (PROMPT_LEN,), generator=gen).tolist()) for _ in range(n)]
    return ps * 8 if workload == "shared" else ps


def load_baseline(path: str):
    """``FastDecoder`` of an earlier copy of ``core/fastdecode.py``, imported inside the
    ``reasonzoo`` package (its relative imports resolve to the installed modules)."""
    spec = importlib.util.spec_from_file_location("reasonzoo._fastdecode_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    import reasonzoo.fastdecode as current

    # its sampler is the current module's, looked up at each call, so that _common.eos_masked reaches it
    mod.sample_next = lambda logits, params, gen: current.sample_next(logits, params, gen)
    return mod.FastDecoder


def dynamo_frames() -> int:
    """Graphs compiled so far in this process (``torch._dynamo`` counters)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def summarise(raw: dict, work: float, peak: float) -> dict:
    """Per arm: stats of wall and CPU seconds, work / s, fraction of peak at the median; per-round
    speed ratios compiled / eager and eager / baseline."""
    out = {}
    for k, v in raw.items():
        out[k] = {"seconds": stats(v["s"]), "cpu_seconds": stats(v["cpu"]),
                  "rate": stats([work / s for s in v["s"]]),
                  "fraction_of_peak": work * v["flops_per_unit"] / statistics.median(v["s"]) / peak,
                  "fraction_of_peak_cpu_time": work * v["flops_per_unit"] / statistics.median(v["cpu"]) / peak,
                  "raw_seconds": [round(s, 4) for s in v["s"]], "raw_cpu_seconds": [round(s, 4) for s in v["cpu"]]}
    if "compiled" in raw:  # > 1: compiled faster than eager
        out["compiled_speedup"] = stats([e / c for e, c in zip(raw["eager"]["s"], raw["compiled"]["s"])])
    if "baseline" in raw:  # > 1: the current code faster than the baseline file
        out["eager_speedup_over_baseline"] = stats([b / e for e, b in zip(raw["eager"]["s"], raw["baseline"]["s"])])
    return out


def run_decode(args, peak: float, arms: list[str]) -> dict:
    from reasonzoo.fastdecode import FastDecoder
    from reasonzoo.types import SamplingParams

    model, tok = build(args.size)
    model.eval()
    n_mm = matmul_params(model)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new)
    makers = {"eager": lambda: FastDecoder(model)}
    if "baseline" in arms:
        Old = load_baseline(args.baseline)
        makers["baseline"] = lambda: Old(model)
    if "compiled" in arms:
        def compiled():
            fd = FastDecoder(model)
            fd._decode = torch.compile(fd._decode, dynamic=True)
            return fd
        makers["compiled"] = compiled
    decoders = {k: makers[k]() for k in arms}
    workloads = ["shared"] if args.run == "compile_decode" else args.workloads
    rows, loads, extra = [], [], {}
    for w in workloads:
        ctx = prompts(w, args.batch, torch.Generator().manual_seed(1))
        raw = {k: {"s": [], "cpu": [], "flops_per_unit": 2 * n_mm} for k in arms}
        for rnd in range(args.repeats + 1):
            loads.append(os.getloadavg()[0])
            for k in (arms if rnd % 2 == 0 else arms[::-1]):
                gen = torch.Generator().manual_seed(rnd)
                with eos_masked([tok.eos_token_id]):
                    out, s, cpu = timed(lambda: decoders[k].generate(ctx, [args.max_new] * len(ctx), params, gen,
                                                                      tok.pad_token_id, tok.eos_token_id))
                n = sum(len(o[0]) for o in out)
                if n != len(ctx) * args.max_new:
                    sys.exit(f"{k}: {n} tokens generated, expected {len(ctx)} x {args.max_new}")
                if rnd == 0 and k == "compiled":
                    extra["warmup_s"], extra["warmup_cpu_s"] = s, cpu
                    extra["graphs_after_warmup"] = dynamo_frames()
                if rnd == 0:
                    extra.setdefault("first_call_s", {})[k] = s
                    extra.setdefault("outputs", {})[k] = out
                else:
                    raw[k]["s"].append(s)
                    raw[k]["cpu"].append(cpu)
        row = {"workload": w, "tokens_per_call": len(ctx) * args.max_new, **summarise(raw, len(ctx) * args.max_new, peak)}
        outs = extra.pop("outputs")
        for k in arms:  # same seed, round 0: every arm's tokens and log-probs against eager
            if k != "eager":
                same = sum(a[0] == b[0] for a, b in zip(outs[k], outs["eager"])) / len(ctx)
                dlp = max(max((abs(x - y) for x, y in zip(a[1], b[1])), default=0.0)
                          for a, b in zip(outs[k], outs["eager"]) if a[0] == b[0]) if same else None
                row[f"{k}_rows_equal_to_eager"] = same
                row[f"{k}_max_abs_logprob_diff"] = dlp
        if "compiled" in arms:
            row["recompiles"] = dynamo_frames() - extra["graphs_after_warmup"]
            e, c = row["eager"]["seconds"]["median"], row["compiled"]["seconds"]["median"]
            row["warmup_s"] = extra["warmup_s"]
            row["payback_calls"] = (extra["warmup_s"] - e) / (e - c) if c < e else None
        row["first_call_s"] = extra.pop("first_call_s")
        rows.append(row)
        print(f"{args.size} batch {args.batch} {w}: " + "  ".join(
            f"{k} {fmt(row[k]['rate'], '.0f')} tok/s ({100 * row[k]['fraction_of_peak']:.1f}% of peak; "
            f"{100 * row[k]['fraction_of_peak_cpu_time']:.1f}% by CPU time)" for k in arms)
            + "".join(f"  {k} {fmt(row[k])}x" for k in ("compiled_speedup", "eager_speedup_over_baseline") if k in row), flush=True)
        if "compiled" in arms:
            pay = "never" if row["payback_calls"] is None else f"{row['payback_calls']:.0f} calls"
            print(f"  compiled: warm-up {row['warmup_s']:.1f} s, recompiles {row['recompiles']}, payback {pay}; "
                  f"rows equal to eager {row['compiled_rows_equal_to_eager']:.3f}", flush=True)
    return {"size": args.size, "params": sum(p.numel() for p in model.parameters()), "matmul_params": n_mm,
            "shape": dict(zip(("hidden", "layers", "heads", "intermediate"), SIZES[args.size])),
            "batch": args.batch, "max_new_tokens": args.max_new, "prompt_tokens": PROMPT_LEN,
            "load_average_1min_per_round": stats(loads), "results": rows}


def train_batch(lengths: list[int], gen: torch.Generator):
    rows = []
    for p in range(8):
        pr = torch.randint(3, 90, (PROMPT_LEN,), generator=gen)
        for k in range(8):
            rows.append(torch.cat([pr, torch.randint(3, 90, (lengths[p * 8 + k],), generator=gen)]))
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids, torch.tensor([len(r) for r in rows])


def run_compile_train(args, peak: float) -> dict:
    import reasonzoo.fasttrain as ft

    model, _ = build(args.size)
    model.train()
    n_mm = matmul_params(model)
    ids, lengths = train_batch([args.max_new] * 64, torch.Generator().manual_seed(0))
    fns = {"eager": ft.token_logprobs, "compiled": torch.compile(ft.token_logprobs, dynamic=True)}

    def call(k, ids, lengths):
        model.zero_grad(set_to_none=True)
        lp = fns[k](model, ids, lengths)
        lp.sum().backward()
        return lp.detach(), [p.grad.clone() for p in model.parameters()]

    arms = ["eager", "compiled"]
    tokens = int(lengths.sum())
    raw = {k: {"s": [], "cpu": [], "flops_per_unit": 6 * n_mm} for k in arms}
    loads, first, outs = [], {}, {}
    for rnd in range(args.repeats + 1):
        loads.append(os.getloadavg()[0])
        for k in (arms if rnd % 2 == 0 else arms[::-1]):
            out, s, cpu = timed(lambda: call(k, ids, lengths))
            if rnd == 0:
                first[k], outs[k] = s, out
                if k == "compiled":
                    graphs = dynamo_frames()
            else:
                raw[k]["s"].append(s)
                raw[k]["cpu"].append(cpu)
    row = {"tokens_per_call": tokens, **summarise(raw, tokens, peak)}
    row["max_abs_logprob_diff"] = float((outs["compiled"][0] - outs["eager"][0]).abs().max())
    row["max_abs_grad_diff"] = max(float((a - b).abs().max()) for a, b in zip(outs["compiled"][1], outs["eager"][1]))
    e, c = row["eager"]["seconds"]["median"], row["compiled"]["seconds"]["median"]
    row["warmup_s"], row["first_call_s"] = first["compiled"], first
    row["payback_calls"] = (first["compiled"] - e) / (e - c) if c < e else None
    row["recompiles_in_timed_rounds"] = dynamo_frames() - graphs
    ids2, len2 = train_batch(torch.randint(3 * args.max_new // 4, args.max_new + 1, (64,), generator=torch.Generator().manual_seed(1)).tolist(),
                             torch.Generator().manual_seed(2))
    before = dynamo_frames()
    _, s2, _ = timed(lambda: call("compiled", ids2, len2))
    row["other_lengths"] = {"graphs_compiled": dynamo_frames() - before, "seconds": s2}
    print(f"{args.size} train fwd+bwd, {tokens} tokens: " + "  ".join(
        f"{k} {fmt(row[k]['seconds'], '.3f')} s ({100 * row[k]['fraction_of_peak']:.1f}% of peak)" for k in arms)
        + f"  compiled speed-up {fmt(row['compiled_speedup'])}x; warm-up {row['warmup_s']:.1f} s; "
        f"max |dlogp| {row['max_abs_logprob_diff']:.1e}, |dgrad| {row['max_abs_grad_diff']:.1e}; "
        f"other lengths: {row['other_lengths']['graphs_compiled']} new graphs, {s2:.1f} s", flush=True)
    return {"size": args.size, "params": sum(p.numel() for p in model.parameters()), "matmul_params": n_mm,
            "batch": "8 prompts x 8 samples, prompt 19 tokens (shared), completion max_new tokens",
            "max_new_tokens": args.max_new, "load_average_1min_per_round": stats(loads), "results": [row]}


def markdown(doc: dict) -> str:
    """The ``benchmarks/README.md`` table of a results file: one line per (run, workload, arm);
    seconds per call and per-round speed ratios as median (min-max); fractions of peak at the
    median; "speed-up, CPU time": the ratio of the two arms' median CPU seconds."""
    lines = ["| run | model | batch x new tokens | workload | arm | s/call | % of peak wall / CPU time | speed-up | "
             "speed-up, CPU time | warm-up s | payback calls | recompiles | load (1 min) |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, run in doc["runs"].items():
        for r in run["results"]:
            for k in (a for a in ("baseline", "eager", "compiled") if a in r):
                ratio = {"compiled": r.get("compiled_speedup"), "eager": r.get("eager_speedup_over_baseline")}.get(k)
                ref = {"compiled": "eager", "eager": "baseline"}.get(k)
                cpu = (f"{r[ref]['cpu_seconds']['median'] / r[k]['cpu_seconds']['median']:.2f}x" if ref in r else "")
                comp = ["", "", ""]
                if k == "compiled":
                    comp = [f"{r['warmup_s']:.1f}", "never" if r["payback_calls"] is None else f"{r['payback_calls']:.0f}",
                            str(r.get("recompiles", r.get("recompiles_in_timed_rounds")))]
                batch = run["batch"] if isinstance(run["batch"], int) else 64
                run_name, label = key.split("/")[0], key.split("/")[2:]  # <run>/<size>[/<workloads>][/<label>]
                label = [x for x in label if x not in ("shared", "distinct", "shared+distinct")]
                cells = [run_name + (f" ({label[0]})" if label else ""),
                         f"{run['size']} ({run['params'] / 1e6:.2f}M)", f"{batch} x {run['max_new_tokens']}",
                         r.get("workload", "train fwd+bwd"), k, fmt(r[k]["seconds"], ".3f"),
                         f"{100 * r[k]['fraction_of_peak']:.1f} / {100 * r[k]['fraction_of_peak_cpu_time']:.1f}",
                         f"{fmt(ratio)}x" if ratio else "", cpu, *comp, fmt(run["load_average_1min_per_round"], ".1f")]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", action="store_true", help="only print the README table of the results file (--out)")
    ap.add_argument("--run", choices=["decode", "compile_decode", "compile_train"])
    ap.add_argument("--size", choices=sorted(SIZES), default="12.9M")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--workloads", nargs="+", choices=["shared", "distinct"], default=["shared", "distinct"])
    ap.add_argument("--baseline", help="an earlier core/fastdecode.py to measure beside the current one (--run decode)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()
    if a.table:
        print(markdown(json.loads(Path(a.out).read_text())))
        return
    if a.run is None:
        ap.error("--run is required (decode, compile_decode or compile_train), or --table")
    if a.repeats < 5:
        ap.error(f"--repeats={a.repeats}: the benchmark rules ask for at least 5")
    if a.batch < 8 or a.batch % 8:
        ap.error(f"--batch={a.batch}: must be a positive multiple of 8 (k = 8 samples per prompt)")
    t_start = time.perf_counter()
    load_start, code_start = load_average(), code_state()
    peak = matmul_peak()  # sets one torch thread
    print(f"single-thread fp32 matmul peak: {peak['best_gflops']:.1f} GFLOP/s; load average {load_start}", flush=True)
    if a.run == "compile_train":
        body = run_compile_train(a, peak["best_gflops"] * 1e9)
    else:
        arms = ["eager"] + (["compiled"] if a.run == "compile_decode" else []) + (["baseline"] if a.baseline else [])
        body = run_decode(a, peak["best_gflops"] * 1e9, arms)
    if a.run == "decode":
        r = next(r for r in body["results"] if r["workload"] == "shared")
        f = r["eager"]["fraction_of_peak"]
        body["goal"] = f"eager fraction_of_peak >= {GOAL} at 12.9M, batch 256 (shared workload)"
        body["goal_verdict"] = "met" if f >= GOAL else "not met"
        if a.baseline:
            body["baseline_file"] = a.baseline
    body.update({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "command": "OMP_NUM_THREADS=1 python benchmarks/decode_efficiency.py " + " ".join(sys.argv[1:]),
                 "versions": versions(["reasonzoo", "torch", "transformers"]),
                 "code_at_start": code_start, "code_at_end": code_state(),
                 "load_average_at_start": load_start, "load_average_at_end": load_average(),
                 "matmul_peak": peak, "repeats": a.repeats, "warmup_rounds": 1, "torch_threads": torch.get_num_threads(),
                 "dtype": "float32", "cpu_count": os.cpu_count(), "wall_seconds": time.perf_counter() - t_start})
    out = Path(a.out)
    doc = json.loads(out.read_text()) if out.exists() else {"name": "decode_efficiency", "runs": {}}
    key = f"{a.run}/{a.size}" + (f"/{'+'.join(a.workloads)}" if a.run == "decode" else "")
    doc["runs"][key] = body
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out} ({body['wall_seconds']:.0f} s; load average {load_start} at the start, {body['load_average_at_end']} at the end)")


if __name__ == "__main__":
    main()
