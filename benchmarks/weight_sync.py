"""Weight sync into a live vLLM engine vs a plain in-memory copy of the same bytes, by model size.

For each size a tiny-task Llama (fp32, random weights, character tokenizer) is served by
``engine=vllm`` (:class:`reasonzoo.plugins.engine.vllm.VllmEngine`, in-process) and timed, side by
side in one process:

- ``push``: ``VllmEngine.sync_weights()`` as the trainer calls it after every update: the live
  ``state_dict`` handed to vLLM's ``reload_weights`` (copied into vLLM's fused parameters) and the
  prefix cache reset;
- ``copy``: the reference, ``q.copy_(p)`` for every tensor of the same ``state_dict`` into
  preallocated clones (the least any push must do: touch every byte once);
- ``start``: saving the policy and starting a fresh engine on it (the restart a push avoids).

Median of ``--repeats`` after 2 warm-up pushes. After the timings the weights are perturbed and
pushed once more, and the engine's log-probs of a fixed sequence are compared with the trainer's
(``max_abs_logprob_diff``; the stale engine's difference before that push is reported too).
Writes ``benchmarks/results/weight_sync.json``. Needs the vllm extra (README).

    OMP_NUM_THREADS=1 python benchmarks/weight_sync.py [--sizes 0.2M,2M,10M,40M,100M] [--repeats 10]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from reasonzoo.plugins.engine.vllm import VllmEngine, VllmEngineConfig  # noqa: E402
from reasonzoo.policy import Policy, build_char_tokenizer, build_tiny_model  # noqa: E402

#: name -> (hidden_size, layers, heads, intermediate_size); head size 32 or 64 (vLLM's CPU kernel)
SIZES = {
    "0.2M": (64, 4, 2, 176),  # the default model.tiny shape, with 2 heads
    "2M": (128, 10, 4, 352),
    "10M": (256, 12, 8, 704),
    "40M": (512, 12, 8, 1408),
    "100M": (768, 14, 12, 2048),
}


def _median_ms(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times), times


def _logprob_gap(engine: VllmEngine, policy: Policy, seq: list[int]) -> float:
    with torch.no_grad():
        ref = policy.token_logprobs(torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))[0]
    return float((torch.tensor(engine.score([seq])[0]) - ref).abs().max())


def measure(name: str, repeats: int, workdir: Path) -> dict:
    hidden, layers, heads, inter = SIZES[name]
    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), "llama", hidden, layers, heads, inter, 256, tok.pad_token_id, tok.bos_token_id,
                             tok.eos_token_id, seed=0).eval()
    policy = Policy(model=model, tokenizer=tok)
    t = time.perf_counter()
    engine = VllmEngine(VllmEngineConfig(), policy, workdir / name, cache_root=workdir / "cache")
    start_s = time.perf_counter() - t
    try:
        items = list(model.state_dict().items())
        nbytes = sum(v.numel() * v.element_size() for _, v in items)
        clones = [v.clone() for _, v in items]

        def copy():
            for (_, p), q in zip(items, clones):
                q.copy_(p)

        for _ in range(2):  # warm-up
            engine.sync_weights()
            copy()
        push_ms, push_all = _median_ms(engine.sync_weights, repeats)
        copy_ms, copy_all = _median_ms(copy, repeats)
        seq = list(policy.encode_prompt("3a+4b*2c-2=")) + list(policy.encode_response("a3+4=2;b2*2=4;c4-2=2;#2"))
        with torch.no_grad():  # a stand-in for an update, then the push the trainer would make
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        stale = _logprob_gap(engine, policy, seq)
        engine.sync_weights()
        fresh = _logprob_gap(engine, policy, seq)
    finally:
        engine.close()
    params = sum(p.numel() for p in model.parameters())
    row = {"size": name, "shape": {"hidden": hidden, "layers": layers, "heads": heads, "intermediate": inter},
           "params": params, "mbytes": nbytes / 1e6, "push_ms": push_ms, "copy_ms": copy_ms,
           "ratio_push_over_copy": push_ms / copy_ms, "push_gb_per_s": nbytes / 1e6 / push_ms,
           "engine_start_s": start_s, "push_ms_all": push_all, "copy_ms_all": copy_all,
           "max_abs_logprob_diff_before_push": stale, "max_abs_logprob_diff_after_push": fresh}
    print(f"{name:>5} {params / 1e6:8.2f}M {row['mbytes']:8.1f} {push_ms:9.2f} {copy_ms:9.3f} {row['ratio_push_over_copy']:7.1f}x "
          f"{row['push_gb_per_s']:7.2f} {start_s:8.2f} {fresh:9.1e}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="0.2M,2M,10M,40M,100M", help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "weight_sync.json"))
    args = ap.parse_args()
    sizes = args.sizes.split(",")
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        raise SystemExit(f"--sizes: unknown {', '.join(bad)}; allowed: {', '.join(SIZES)}")
    torch.set_num_threads(1)
    t = time.perf_counter()
    import vllm

    import_s = time.perf_counter() - t
    print(f"import vllm {vllm.__version__}: {import_s:.1f} s; median of {args.repeats}, fp32, one thread")
    print(f"{'size':>5} {'params':>9} {'MB':>8} {'push ms':>9} {'copy ms':>9} {'ratio':>8} {'push GB/s':>7} {'start s':>8} {'|dlogp|':>9}")
    with tempfile.TemporaryDirectory(prefix="rz-weight-sync-") as tmp:
        rows = [measure(s, args.repeats, Path(tmp)) for s in sizes]
    import transformers

    out = {"date": datetime.date.today().isoformat(),
           "settings": {"repeats": args.repeats, "warmup": 2, "dtype": "float32", "threads": torch.get_num_threads(),
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count(),
                        "load_average": os.getloadavg(), "engine": "engine=vllm, in-process, default VllmEngineConfig",
                        "vllm": vllm.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version(), "import_vllm_s": import_s},
           "results": rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
