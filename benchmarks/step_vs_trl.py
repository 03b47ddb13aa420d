"""Seconds per RL step: one reasonzoo k1.5 iteration vs one ``trl.GRPOTrainer`` step.

Both sides, in one process, alternating step by step (TRL step, our iteration, TRL step, ...):

- the same weights: the default tiny Llama (``conf/model/hf.yaml``'s ``tiny`` block, built by
  ``reasonzoo.policy.build_tiny_model`` with ``build_char_tokenizer()``), saved with
  ``save_pretrained`` into a temporary folder and loaded from there by each side (ours through
  ``model.path``, i.e. the ``model/hf`` plugin). Freshly initialised, never trained;
- the same prompts: the training problems of the default task (``task/modarith``);
- the same batch and optimizer work per step: 8 prompts x k=8 samples, T=1.0, top_p=1.0, max
  completion length 32 and 128, fp32, one torch thread, one optimizer step with the same learning
  rate (TRL GRPO does one optimizer step per generation batch by default; ours is set to
  ``train.minibatch_size=64``, ``train.epochs=1``, i.e. one step over the 64 rollouts);
- ours: the default recipe (``recipe/k15``: k15 loss, k15 length penalty, answer reward, sync
  rollouts, torch engine) composed with ``reasonzoo.train.compose``, the plugins in a fresh plugin
  manager, and one iteration = exactly the body of ``reasonzoo.trainer.train``'s loop (iteration
  start, sample problems, rollouts, reward, length penalty, collate, update, iteration end)
  without evaluation, metric files, logging or checkpointing (TRL's step has none of these either);
  ``warmup=none`` (the fresh model above);
- TRL: ``GRPOTrainer.train()`` with ``max_steps`` = warm-up + measured steps; a callback times each
  step from the end of the previous one (everything the trainer does per step) and runs our
  iteration after it, outside TRL's timing. The reward function uses the same answer check as
  ``reward/answer`` (``reasonzoo.rewards.extract`` with its default pattern).

Two workloads per max length:

- **equal** (equal work): EOS cannot be sampled on either side, so every completion is exactly the
  max length and both sides generate and train on the same number of tokens (checked: any other
  count stops the script). TRL: ``generation_kwargs={"min_new_tokens": max_len}`` (HF's
  ``MinNewTokensLengthLogitsProcessor`` sets the EOS logits to -inf); ours: the same mask before
  the torch engine's sampler (``_common.eos_masked``, in this benchmark only);
- **natural**: stop at EOS (p ~ 1/vocab per token for the untrained model). Our engine drops
  finished rows, HF ``generate`` (inside TRL) keeps decoding them padded until the longest row
  ends, so part of this ratio is work TRL does and we skip; mean generated tokens per step are
  reported per side.

Reported per side: min / median / max seconds per step over the measured steps after the warm-up
steps; the ratio TRL / ours per step pair, then min / median / max; the achieved fraction of the
single-thread fp32 ``torch.mm`` rate measured at the start (``_common.matmul_peak``), from the
model FLOPs of a step estimated as 2 N per generated token (decode) + 6 N per trained token
(prompt + completion, forward and backward), N = the ``nn.Linear`` weights
(``_common.matmul_params``; prefill, attention scores and the optimizer left out); and ours' rollout
alone as a decode fraction (2 N per generated token). Goal (issue): ours >= 3x faster, judged at
equal work. Writes ``benchmarks/results/step_vs_trl.json`` with the settings, load averages,
library versions and every raw figure. Needs the ``bench`` extra (``pip install -e '.[bench]'``).

    OMP_NUM_THREADS=1 python benchmarks/step_vs_trl.py [--warmup 2] [--repeats 5] [--lengths 32 128]
    python benchmarks/step_vs_trl.py --table   # the README table of results/step_vs_trl.json
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from _common import code_state, eos_masked, fmt, load_average, matmul_params, matmul_peak, stats, versions  # noqa: E402

PROMPTS = 8  #: prompts per step
K = 8  #: samples per prompt (TRL num_generations)
LR = 1e-4  #: both sides (reasonzoo's default train.lr)
GOAL = 3.0  #: TRL s/step / ours s/step at equal work (issue)
WORKLOADS = ("equal", "natural")
RESULTS = Path(__file__).resolve().parent / "results" / "step_vs_trl.json"


def save_model(path: str) -> tuple[int, int, dict]:
    """Build our default tiny model + char tokenizer and save both; returns (parameters,
    matmul parameters N of the FLOP estimate, tiny cfg)."""
    from omegaconf import OmegaConf

    from reasonzoo.policy import build_char_tokenizer, build_tiny_model
    from reasonzoo.train import compose

    cfg = compose()
    tiny = OmegaConf.to_container(cfg.model.tiny)
    tok = build_char_tokenizer()
    model = build_tiny_model(vocab_size=len(tok), **tiny, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, seed=int(cfg.seed))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return sum(p.numel() for p in model.parameters()), matmul_params(model), tiny


class Ours:
    """One reasonzoo run context; :meth:`step` runs one iteration of ``train``'s loop body."""

    def __init__(self, model_dir: str, run_dir: str, max_len: int, equal: bool):
        from reasonzoo.config import validate
        from reasonzoo.context import RunContext
        from reasonzoo.registry import build_plugins, make_manager
        from reasonzoo.train import compose

        self.overrides = [
            f"model.path={model_dir}", "warmup=none", "logger=none", "progress=false", "threads=1",
            f"prompts_per_iteration={PROMPTS}", f"samples_per_prompt={K}", f"generation.max_new_tokens={max_len}",
            "generation.temperature=1.0", "generation.top_p=1.0", f"train.lr={LR}",
            f"train.minibatch_size={PROMPTS * K}", "train.epochs=1",
        ]
        cfg = compose(self.overrides)
        self.rc = rc = validate(cfg)
        torch.set_num_threads(rc.threads)
        self.hook = hook = make_manager(build_plugins(cfg)).hook
        self.ctx = ctx = RunContext(cfg=cfg, hook=hook, run_dir=Path(run_dir))
        torch.manual_seed(rc.seed)
        self.problems = hook.rz_load_problems(ctx=ctx, split="train")
        ctx.policy = hook.rz_build_policy(ctx=ctx)
        ctx.engine = hook.rz_build_engine(ctx=ctx, policy=ctx.policy)
        ctx.optimizer = torch.optim.AdamW(ctx.policy.model.parameters(), lr=rc.train.lr,
                                          weight_decay=rc.train.weight_decay, betas=tuple(rc.train.betas))
        ctx.engine.sync_weights()
        hook.rz_run_start(ctx=ctx)
        self.sampling = rc.generation.sampling()  # as trainer.train builds it
        self.it = 0
        self.equal = equal  #: sample with EOS masked (the equal-work workload)

    def step(self) -> dict:
        """The body of ``reasonzoo.trainer.train``'s loop, minus eval/metrics file/log/checkpoint."""
        from reasonzoo.trainer import _merge, collate, rollout_metrics, update

        hook, ctx, rc = self.hook, self.ctx, self.rc
        self.it += 1
        t_it = time.perf_counter()
        ctx.iteration = self.it
        hook.rz_iteration_start(ctx=ctx)
        problems = hook.rz_sample_problems(ctx=ctx, problems=self.problems, n=rc.prompts_per_iteration)
        t0 = time.perf_counter()
        with eos_masked(ctx.policy.eos_token_ids) if self.equal else contextlib.nullcontext():
            groups = hook.rz_rollout(ctx=ctx, problems=problems, engine=ctx.engine,
                                     samples_per_problem=rc.samples_per_prompt, sampling=self.sampling)
        t_roll = time.perf_counter() - t0
        rewards = hook.rz_reward(ctx=ctx, groups=groups)
        groups = [replace(g, rewards=tuple(r)) for g, r in zip(groups, rewards)]
        lens = hook.rz_length_penalty(ctx=ctx, groups=groups)
        groups = [replace(g, length_rewards=tuple(x)) for g, x in zip(groups, lens)]
        t0 = time.perf_counter()
        batch = collate(groups, ctx.policy.pad_token_id)
        record = {**rollout_metrics(groups), **update(ctx, batch, rc)}
        ctx.policy_version += 1
        ctx.engine.sync_weights()
        t_upd = time.perf_counter() - t0
        record.update(_merge(hook.rz_iteration_end(ctx=ctx, groups=groups), "rz_iteration_end"))
        return {"seconds": time.perf_counter() - t_it, "rollout_s": t_roll, "update_s": t_upd,
                "tokens": record["response/tokens"], "threads": torch.get_num_threads()}


def trl_trainer(model_dir: str, out_dir: str, max_len: int, steps: int, problems, callback, equal: bool):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from reasonzoo.plugins.reward.answer import AnswerConfig
    from reasonzoo.rewards import extract

    pattern = AnswerConfig().pattern

    def answer_reward(completions, answer, **_):  # the check of reward/answer: exact match after '#'
        return [float(extract(pattern, c) == a.strip()) for c, a in zip(completions, answer)]

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    data = Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in problems])
    args = GRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
        learning_rate=LR, lr_scheduler_type="constant", max_completion_length=max_len, num_generations=K,
        per_device_train_batch_size=PROMPTS * K,  # counted in completions: 64 = 8 prompts x 8 samples
        temperature=1.0, top_p=1.0, max_steps=steps, save_strategy="no", logging_steps=10**6,
        disable_tqdm=True, seed=0, dataloader_num_workers=0,
        generation_kwargs={"min_new_tokens": max_len} if equal else None,  # EOS logits -inf until max_len
    )
    return GRPOTrainer(model=model, reward_funcs=answer_reward, args=args, train_dataset=data,
                       processing_class=tok, callbacks=[callback])


def measure(model_dir: str, tmp: str, max_len: int, workload: str, warmup: int, repeats: int,
            n_mm: int, peak_gflops: float) -> dict:
    """One TRL training run of ``warmup + repeats`` steps with one of our iterations after each;
    returns the row of the results file for (``max_len``, ``workload``).

    :param n_mm: N of the FLOP estimate (the trained prompt tokens per row: the mean over the task's
        training problems, encoded as our policy encodes them);
    :param peak_gflops: the measured matmul peak in GFLOP/s.
    :raises RuntimeError: a step count, a thread count or (equal work) a token count is off.
    """
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    equal = workload == "equal"
    ours = Ours(model_dir, os.path.join(tmp, f"ours{max_len}{workload}"), max_len, equal)
    prompt_tokens = statistics.fmean(len(ours.ctx.policy.encode_prompt(p.prompt)) for p in ours.problems)
    steps = warmup + repeats
    trl_rows: list[dict] = []
    our_rows: list[dict] = []
    loads: list[float] = []

    class Interleave(TrainerCallback):
        """Times each TRL step (end of the previous one to its end), then runs one of ours."""

        def on_train_begin(self, args, state, control, **kw):
            loads.append(os.getloadavg()[0])
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            dt = time.perf_counter() - self.t
            lens = trainer._metrics["train"]["completions/mean_length"]
            trl_rows.append({"seconds": dt, "tokens": lens[-1] * PROMPTS * K, "threads": torch.get_num_threads()})
            our_rows.append(ours.step())
            print(f"  L={max_len} {workload} step {state.global_step}/{steps}: trl {dt:.3f}s ({trl_rows[-1]['tokens']:.0f} tok)"
                  f"  ours {our_rows[-1]['seconds']:.3f}s ({our_rows[-1]['tokens']} tok)", flush=True)
            loads.append(os.getloadavg()[0])
            self.t = time.perf_counter()

    trainer = trl_trainer(model_dir, os.path.join(tmp, f"trl{max_len}{workload}"), max_len, steps, ours.problems,
                          Interleave(), equal)
    trainer.remove_callback(PrinterCallback)  # no end-of-training metrics dump
    trainer.train()
    if len(trl_rows) != steps:
        raise RuntimeError(f"TRL ran {len(trl_rows)} steps, expected {steps}")
    if {r["threads"] for r in trl_rows + our_rows} != {1}:
        raise RuntimeError("a step ran with more than one torch thread")
    if equal and {round(r["tokens"]) for r in trl_rows + our_rows} != {PROMPTS * K * max_len}:
        raise RuntimeError(f"equal work: generated tokens per step {[r['tokens'] for r in trl_rows]} (TRL), "
                           f"{[r['tokens'] for r in our_rows]} (ours); expected {PROMPTS * K * max_len}")
    m_trl, m_ours = trl_rows[warmup:], our_rows[warmup:]

    def flops(gen_tokens: float) -> float:  # model FLOPs of one step: decode 2N, training 6N per token
        return 2 * n_mm * gen_tokens + 6 * n_mm * (gen_tokens + PROMPTS * K * prompt_tokens)

    peak = peak_gflops * 1e9
    out = {
        "max_completion_length": max_len,
        "workload": workload,
        "trl_s_per_step": stats([r["seconds"] for r in m_trl]),
        "ours_s_per_step": stats([r["seconds"] for r in m_ours]),
        "ratio_trl_over_ours": stats([a["seconds"] / b["seconds"] for a, b in zip(m_trl, m_ours)]),
        "ours_rollout_s": stats([r["rollout_s"] for r in m_ours]),
        "ours_update_s": stats([r["update_s"] for r in m_ours]),
        "trl_tokens_per_step": statistics.fmean(r["tokens"] for r in m_trl),
        "ours_tokens_per_step": statistics.fmean(r["tokens"] for r in m_ours),
        "trl_fraction_of_peak": statistics.median(flops(r["tokens"]) / r["seconds"] / peak for r in m_trl),
        "ours_fraction_of_peak": statistics.median(flops(r["tokens"]) / r["seconds"] / peak for r in m_ours),
        "ours_rollout_decode_fraction_of_peak": statistics.median(2 * n_mm * r["tokens"] / r["rollout_s"] / peak for r in m_ours),
        "mean_prompt_tokens": prompt_tokens,
        "load_average_1min": stats(loads),
        "trl_steps_s": [round(r["seconds"], 4) for r in trl_rows],
        "ours_steps_s": [round(r["seconds"], 4) for r in our_rows],
        "trl_steps_tokens": [r["tokens"] for r in trl_rows],
        "ours_steps_tokens": [r["tokens"] for r in our_rows],
    }
    return out


def verdict(ratio: dict) -> str:
    """The goal judged on the per-step ratios: met / not met / within noise of it."""
    if ratio["min"] >= GOAL:
        return "met"
    if ratio["max"] < GOAL:
        return "not met"
    return "within noise (the range of the step pairs spans the goal)"


def markdown(doc: dict) -> str:
    """The ``benchmarks/README.md`` table of a results file: medians with (min-max) ranges."""
    lines = ["| max length | workload | TRL s/step | ours s/step | TRL / ours | tokens/step TRL / ours | "
             "% of matmul peak TRL / ours | ours rollout, % of peak (decode) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in doc["results"]:
        lines.append(f"| {r['max_completion_length']} | {r['workload']} | {fmt(r['trl_s_per_step'], '.3f')} | "
                     f"{fmt(r['ours_s_per_step'], '.3f')} | {fmt(r['ratio_trl_over_ours'])}x | "
                     f"{r['trl_tokens_per_step']:.0f} / {r['ours_tokens_per_step']:.0f} | "
                     f"{100 * r['trl_fraction_of_peak']:.1f} / {100 * r['ours_fraction_of_peak']:.1f} | "
                     f"{100 * r['ours_rollout_decode_fraction_of_peak']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", action="store_true", help="only print the README table of the results file (--out)")
    ap.add_argument("--warmup", type=int, default=2, help="steps per side discarded before measuring")
    ap.add_argument("--repeats", type=int, default=5, help="measured steps per side, >= 5")
    ap.add_argument("--lengths", type=int, nargs="+", default=[32, 128], help="max completion lengths")
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()
    if a.table:
        print(markdown(json.loads(Path(a.out).read_text())))
        return
    if a.repeats < 5:
        ap.error(f"--repeats={a.repeats}: the benchmark rules ask for at least 5")
    if a.warmup < 0:
        ap.error(f"--warmup={a.warmup}: needs >= 0")

    t_start = time.perf_counter()
    load_start, code_start = load_average(), code_state()
    peak = matmul_peak()  # sets one torch thread
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    print(f"single-thread fp32 matmul peak: {peak['best_gflops']:.1f} GFLOP/s (best of {peak['repeats']} "
          f"{peak['n']}x{peak['n']} mm; median {peak['median_gflops']:.1f}); load average {load_start}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="rz-bench-") as tmp:
        model_dir = os.path.join(tmp, "model")
        n_params, n_mm, tiny = save_model(model_dir)
        print(f"tiny llama {n_params:,} parameters ({n_mm:,} in matmuls); {PROMPTS} prompts x {K} samples per step; "
              f"{a.warmup} warm-up + {a.repeats} measured steps per side", flush=True)
        for length in a.lengths:
            for w in a.workloads:
                results.append(measure(model_dir, tmp, length, w, a.warmup, a.repeats, n_mm, peak["best_gflops"]))

    head = (f"{'max len':>7} | {'workload':8} | {'TRL s/step':>19} | {'ours s/step':>19} | {'TRL/ours':>17} | "
            f"{'TRL tok':>7} | {'ours tok':>8} | {'TRL %pk':>7} | {'ours %pk':>8} | {'roll %pk':>8}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        print(f"{r['max_completion_length']:>7} | {r['workload']:8} | {fmt(r['trl_s_per_step'], '.3f'):>19} | "
              f"{fmt(r['ours_s_per_step'], '.3f'):>19} | {fmt(r['ratio_trl_over_ours']):>17} | "
              f"{r['trl_tokens_per_step']:>7.0f} | {r['ours_tokens_per_step']:>8.0f} | {100 * r['trl_fraction_of_peak']:>6.2f}% | "
              f"{100 * r['ours_fraction_of_peak']:>7.2f}% | {100 * r['ours_rollout_decode_fraction_of_peak']:>7.2f}%")
    verdicts = {str(r["max_completion_length"]): verdict(r["ratio_trl_over_ours"]) for r in results if r["workload"] == "equal"}
    for length, v in verdicts.items():
        print(f"goal (ours >= {GOAL:g}x faster than TRL per step at equal work), max length {length}: {v}")
    doc = {
        "name": "step_vs_trl",
        "benchmark": "seconds per RL step: reasonzoo k1.5 iteration vs trl.GRPOTrainer step, equal work and natural lengths",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "OMP_NUM_THREADS=1 python benchmarks/step_vs_trl.py " + " ".join(sys.argv[1:]),
        "versions": versions(["reasonzoo", "torch", "transformers", "trl", "accelerate", "datasets"]),
        "code_at_start": code_start, "code_at_end": code_state(),
        "load_average_at_start": load_start, "load_average_at_end": load_average(),
        "matmul_peak": peak,
        "settings": {
            "model": {"name": "reasonzoo default tiny model (conf/model/hf.yaml), freshly initialised", "parameters": n_params,
                      "matmul_parameters": n_mm, **tiny},
            "prompts_per_step": PROMPTS, "samples_per_prompt": K, "temperature": 1.0, "top_p": 1.0,
            "dtype": "float32", "torch_threads": 1, "cpu_count": os.cpu_count(), "learning_rate": LR,
            "optimizer_steps_per_step": 1,
            "ours": "recipe k15, warmup=none, train.minibatch_size=64, train.epochs=1; one iteration = "
                    "trainer.train loop body without eval/metrics file/checkpoint",
            "trl": "GRPOConfig defaults (loss dapo, beta 0, num_iterations 1) + use_cpu, fp32, "
                   "per_device_train_batch_size=64, num_generations=8, lr_scheduler constant",
            "equal_workload": "EOS logits -inf on both sides (TRL generation_kwargs min_new_tokens=max_len; ours "
                              "_common.eos_masked); every completion max_len tokens (checked)",
            "natural_workload": "stop at EOS on both sides (untrained model: p(EOS) ~ 1/vocab per token)",
            "interleaved": "TRL step, then our iteration, alternating; one TRL run per (length, workload)",
            "flops": "per step 2 N x generated tokens + 6 N x (generated + prompt tokens), N = nn.Linear weights; "
                     "prefill, attention scores and optimizer left out; fraction of matmul_peak.best_gflops",
            "warmup_steps": a.warmup, "measured_steps": a.repeats,
            "statistic": "min / median / max over the measured steps; ratio per step pair",
        },
        "results": results,
        "goal": f"ratio_trl_over_ours >= {GOAL:g} at equal work",
        "goal_verdict": verdicts,
        "wall_seconds": time.perf_counter() - t_start,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {a.out} ({doc['wall_seconds']:.0f} s; load average {load_start} at the start, "
          f"{doc['load_average_at_end']} at the end)")


if __name__ == "__main__":
    main()
