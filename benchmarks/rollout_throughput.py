"""Rollout throughput: Hugging Face ``generate`` vs the ``torch`` engine vs the ``vllm`` engine.

The same model, prompts and sampling settings through each generator, generated tokens per
second at batch 16, 64 and 256 (issue 3; goal: the torch engine >= 2x HF ``generate`` at 64):

- model: a freshly initialised Llama of the default ``model.tiny`` size (width 64, 4 layers,
  ~0.2M parameters, character tokenizer; 2 heads of 32, as vLLM's CPU kernels need head size
  >= 32, where the default has 4 of 16), and with ``--sizes tiny small`` also a ~5M-parameter
  one (width 256, 6 layers, 8 heads), fp32, one torch thread. Untrained, so EOS comes with p ~ 1/vocab per
  token and response lengths vary (as RL rollouts do); every side samples the same distribution;
- prompts: ``batch`` distinct modular-arithmetic prompts of the default task, one sample each;
- sampling: T = 1, top-p = 1 (HF: ``top_k=0``, no other logits processor), up to ``--max-new``
  tokens, stop at EOS;
- HF ``generate``: left-padded batch, ``do_sample=True``, its own KV cache; it returns no
  log-probs here (the engines do: RL needs them), which favours HF;
- ``torch``: ``reasonzoo.plugins.engine.torch.TorchEngine`` (lean decode path, continuous
  batching, ``max_batch`` = batch);
- ``vllm``: ``reasonzoo.plugins.engine.vllm.VllmEngine`` in process (``pip install -e '.[vllm]'``);
  when vLLM is not installed its column says so.

Each side runs ``--repeats`` times, interleaved, after one warm-up call; reported: generated tokens
(EOS included) / wall seconds, median. Writes ``benchmarks/results/rollout_throughput.json``.

    OMP_NUM_THREADS=1 python benchmarks/rollout_throughput.py [--batches 16 64 256] [--sizes tiny small]
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from reasonzoo.plugins.engine.torch import TorchEngine, TorchEngineConfig  # noqa: E402
from reasonzoo.plugins.task.modarith import ModArith, ModArithConfig  # noqa: E402
from reasonzoo.policy import Policy, build_char_tokenizer, build_tiny_model  # noqa: E402
from reasonzoo.types import GenerationRequest, SamplingParams  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "rollout_throughput.json"
# hidden, layers, heads, intermediate. vLLM's CPU attention needs a head size >= 32, so "tiny" is
# the default model.tiny shape with 2 heads of 32 instead of 4 of 16 (same parameter count)
SIZES = {"tiny": (64, 4, 2, 176), "small": (256, 6, 8, 704)}


def make_policy(size: str, max_new: int) -> Policy:
    tok = build_char_tokenizer()
    h, layers, heads, inter = SIZES[size]
    model = build_tiny_model(len(tok), "llama", h, layers, heads, inter, max_new + 64, tok.pad_token_id,
                             tok.bos_token_id, tok.eos_token_id, seed=0)
    return Policy(model=model.eval(), tokenizer=tok)


class HFGenerate:
    """``model.generate`` on a left-padded batch: the reference."""

    def __init__(self, policy: Policy):
        self.policy = policy

    def generate(self, reqs, params, gen):
        pol = self.policy
        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), width), pol.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(reqs):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=gen)))
        with torch.inference_mode():
            out = pol.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                     max_new_tokens=params.max_new_tokens, eos_token_id=pol.eos_token_id,
                                     pad_token_id=pol.pad_token_id)
        new = out[:, width:]
        # tokens up to and including the first EOS (generate pads finished rows)
        is_eos = (new == pol.eos_token_id).long()
        before = is_eos.cumsum(-1) - is_eos == 0
        return int(before.sum())


def count(outs) -> int:
    return sum(len(o.token_ids) for o in outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--sizes", nargs="+", default=["tiny"], choices=sorted(SIZES))
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-vllm", action="store_true", help="leave the vllm engine out (say so in the output)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new)
    task = ModArith(ModArithConfig())
    prompts = [p.prompt for p in task.rz_load_problems(ctx=SimpleNamespace(seed=0), split="train")]
    vllm_note = None
    if args.no_vllm:
        vllm_note = "left out (--no-vllm)"
    else:
        try:
            from reasonzoo.plugins.engine.vllm import VllmEngine, VllmEngineConfig
            importlib.import_module("vllm")  # importable, not only present: a broken install fails here
        except ImportError as e:
            vllm_note = f"not installed ({e.__class__.__name__}: {e}); pip install -e '.[vllm]'"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            policy = make_policy(size, args.max_new)
            n_params = sum(p.numel() for p in policy.model.parameters())
            sides = {"hf_generate": HFGenerate(policy)}
            vllm_engine = None
            if vllm_note is None:
                vllm_engine = VllmEngine(VllmEngineConfig(max_model_len=args.max_new + 64, kv_cache_memory_bytes=1 << 30), policy, Path(tmp) / size)
            for batch in args.batches:
                reqs = [GenerationRequest(policy.encode_prompt(p)) for p in prompts[:batch]]
                sides["torch"] = TorchEngine(TorchEngineConfig(max_batch=batch), policy)
                if vllm_engine is not None:
                    sides["vllm"] = vllm_engine
                rates: dict[str, list[float]] = {k: [] for k in sides}
                tokens: dict[str, list[int]] = {k: [] for k in sides}
                gen = torch.Generator().manual_seed(batch)
                for rep in range(args.repeats + 1):  # first round: warm-up, not counted
                    for name, side in sides.items():
                        t0 = time.perf_counter()
                        out = side.generate(reqs, params, gen)
                        dt = time.perf_counter() - t0
                        n = out if isinstance(out, int) else count(out)
                        if rep:
                            rates[name].append(n / dt)
                            tokens[name].append(n)
                row = {"size": size, "params": n_params, "batch": batch,
                       **{f"{k}_tokens_per_s": statistics.median(v) for k, v in rates.items()},
                       **{f"{k}_mean_tokens": statistics.mean(v) / batch for k, v in tokens.items()}}
                row["torch_over_hf"] = row["torch_tokens_per_s"] / row["hf_generate_tokens_per_s"]
                if "vllm" in rates:
                    row["vllm_over_hf"] = row["vllm_tokens_per_s"] / row["hf_generate_tokens_per_s"]
                rows.append(row)
                print(f"{size:5} ({n_params / 1e6:.2f}M) batch {batch:4}: " + "  ".join(
                    f"{k} {row[f'{k}_tokens_per_s']:7.0f} tok/s ({row[f'{k}_mean_tokens']:.0f} tok/seq)" for k in rates)
                    + f"  | torch/HF {row['torch_over_hf']:.2f}x" + (f", vllm/HF {row['vllm_over_hf']:.2f}x" if "vllm_over_hf" in row else ""),
                    flush=True)
            if vllm_engine is not None:
                vllm_engine.close()
    if vllm_note:
        print(f"vllm engine: {vllm_note}")
    goal = next((r["torch_over_hf"] for r in rows if r["size"] == "tiny" and r["batch"] == 64), None)
    if goal is not None:
        print(f"goal (torch engine >= 2x HF generate at batch 64, tiny model): {goal:.2f}x")
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "settings": {"max_new_tokens": args.max_new, "temperature": 1.0, "top_p": 1.0, "repeats": args.repeats,
                        "threads": 1, "dtype": "float32", "torch": torch.__version__, "machine": platform.machine()},
           "vllm": vllm_note or "included", "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
