"""Seconds per RL step at equal work: one reasonzoo k1.5 iteration vs one ``trl.GRPOTrainer`` step.

Both sides, in one process, alternating step by step (TRL step, our iteration, TRL step, ...):

- the same weights: the default tiny Llama (``conf/model/hf.yaml``'s ``tiny`` block, built by
  ``reasonzoo.policy.build_tiny_model`` with ``build_char_tokenizer()``), saved with
  ``save_pretrained`` into a temporary folder and loaded from there by each side (ours through
  ``model.path``, i.e. the ``model/hf`` plugin). Freshly initialised, never trained: its next-token
  distribution is near uniform, so EOS comes with p ~ 1/vocab per token on both sides and neither
  side stops early systematically (TRL could suppress EOS, reasonzoo has no switch for that; a
  fresh model keeps both sides on the same code path). Mean generated tokens are reported per side;
- the same prompts: the training problems of the default task (``task/modarith``);
- equal work per step: 8 prompts x k=8 samples, T=1.0, top_p=1.0, max completion length 32 and 128,
  fp32, one torch thread, one optimizer step with the same learning rate (TRL GRPO does one
  optimizer step per generation batch by default; ours is set to ``train.minibatch_size=64``,
  ``train.epochs=1``, i.e. one step over the 64 rollouts);
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

Reports the median seconds per step of each side after the warm-up steps and the ratio TRL/ours,
per max length; writes ``benchmarks/results/step_vs_trl.json``. Goal (issue): ours >= 3x faster.
Needs the ``bench`` extra (``pip install -e '.[bench]'``).

    OMP_NUM_THREADS=1 python benchmarks/step_vs_trl.py [--warmup 2] [--repeats 5] [--lengths 32 128]
"""
from __future__ import annotations

import argparse
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

PROMPTS = 8  #: prompts per step
K = 8  #: samples per prompt (TRL num_generations)
LR = 1e-4  #: both sides (reasonzoo's default train.lr)
RESULTS = Path(__file__).resolve().parent / "results" / "step_vs_trl.json"


def save_model(path: str) -> tuple[int, dict]:
    """Build our default tiny model + char tokenizer and save both; returns (parameters, tiny cfg)."""
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
    return sum(p.numel() for p in model.parameters()), tiny


class Ours:
    """One reasonzoo run context; :meth:`step` runs one iteration of ``train``'s loop body."""

    def __init__(self, model_dir: str, run_dir: str, max_len: int):
        from reasonzoo.config import validate
        from reasonzoo.context import RunContext
        from reasonzoo.registry import build_plugins, make_manager
        from reasonzoo.train import compose
        from reasonzoo.types import SamplingParams

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
        self.sampling = SamplingParams(rc.generation.temperature, rc.generation.top_p, rc.generation.max_new_tokens)
        self.it = 0

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


def trl_trainer(model_dir: str, out_dir: str, max_len: int, steps: int, problems, callback):
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
    )
    return GRPOTrainer(model=model, reward_funcs=answer_reward, args=args, train_dataset=data,
                       processing_class=tok, callbacks=[callback])


def measure(model_dir: str, tmp: str, max_len: int, warmup: int, repeats: int) -> dict:
    from transformers import TrainerCallback

    ours = Ours(model_dir, os.path.join(tmp, f"ours{max_len}"), max_len)
    steps = warmup + repeats
    trl_rows: list[dict] = []
    our_rows: list[dict] = []

    class Interleave(TrainerCallback):
        """Times each TRL step (end of the previous one to its end), then runs one of ours."""

        def on_train_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            dt = time.perf_counter() - self.t
            lens = trainer._metrics["train"]["completions/mean_length"]
            trl_rows.append({"seconds": dt, "tokens": lens[-1] * PROMPTS * K, "threads": torch.get_num_threads()})
            our_rows.append(ours.step())
            print(f"  L={max_len} step {state.global_step}/{steps}: trl {dt:.3f}s ({trl_rows[-1]['tokens']:.0f} tok)"
                  f"  ours {our_rows[-1]['seconds']:.3f}s ({our_rows[-1]['tokens']} tok)", flush=True)
            self.t = time.perf_counter()

    from transformers.trainer_callback import PrinterCallback

    trainer = trl_trainer(model_dir, os.path.join(tmp, f"trl{max_len}"), max_len, steps, ours.problems, Interleave())
    trainer.remove_callback(PrinterCallback)  # no end-of-training metrics dump
    trainer.train()
    if len(trl_rows) != steps:
        raise RuntimeError(f"TRL ran {len(trl_rows)} steps, expected {steps}")
    if {r["threads"] for r in trl_rows + our_rows} != {1}:
        raise RuntimeError("a step ran with more than one torch thread")
    m_trl, m_ours = trl_rows[warmup:], our_rows[warmup:]
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    mean = lambda rows, k: statistics.fmean(r[k] for r in rows)  # noqa: E731
    out = {
        "max_completion_length": max_len,
        "trl_s_per_step": med(m_trl, "seconds"),
        "ours_s_per_step": med(m_ours, "seconds"),
        "ours_rollout_s": med(m_ours, "rollout_s"),
        "ours_update_s": med(m_ours, "update_s"),
        "trl_tokens_per_step": mean(m_trl, "tokens"),
        "ours_tokens_per_step": mean(m_ours, "tokens"),
        "trl_steps_s": [round(r["seconds"], 4) for r in trl_rows],
        "ours_steps_s": [round(r["seconds"], 4) for r in our_rows],
    }
    out["ratio_trl_over_ours"] = out["trl_s_per_step"] / out["ours_s_per_step"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warmup", type=int, default=2, help="steps per side discarded before measuring")
    ap.add_argument("--repeats", type=int, default=5, help="measured steps per side")
    ap.add_argument("--lengths", type=int, nargs="+", default=[32, 128], help="max completion lengths")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import transformers
    import trl

    transformers.utils.logging.disable_progress_bar()
    results = []
    with tempfile.TemporaryDirectory(prefix="rz-bench-") as tmp:
        model_dir = os.path.join(tmp, "model")
        n_params, tiny = save_model(model_dir)
        print(f"tiny llama {n_params:,} parameters; {PROMPTS} prompts x {K} samples per step; "
              f"{a.warmup} warm-up + {a.repeats} measured steps per side", flush=True)
        for length in a.lengths:
            results.append(measure(model_dir, tmp, length, a.warmup, a.repeats))

    head = f"{'max len':>7} | {'TRL s/step':>10} | {'ours s/step':>11} | {'TRL/ours':>8} | {'TRL tok/step':>12} | {'ours tok/step':>13}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        print(f"{r['max_completion_length']:>7} | {r['trl_s_per_step']:>10.3f} | {r['ours_s_per_step']:>11.3f} | "
              f"{r['ratio_trl_over_ours']:>7.2f}x | {r['trl_tokens_per_step']:>12.0f} | {r['ours_tokens_per_step']:>13.0f}")
    doc = {
        "benchmark": "seconds per RL step at equal work: reasonzoo k1.5 iteration vs trl.GRPOTrainer step",
        "date": datetime.date.today().isoformat(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                     "python": sys.version.split()[0]},
        "settings": {
            "model": {"name": "reasonzoo default tiny model (conf/model/hf.yaml), freshly initialised", "parameters": n_params, **tiny},
            "prompts_per_step": PROMPTS, "samples_per_prompt": K, "temperature": 1.0, "top_p": 1.0,
            "dtype": "float32", "torch_threads": 1, "learning_rate": LR, "optimizer_steps_per_step": 1,
            "ours": "recipe k15, warmup=none, train.minibatch_size=64, train.epochs=1; one iteration = "
                    "trainer.train loop body without eval/metrics file/checkpoint",
            "trl": "GRPOConfig defaults (loss dapo, beta 0, num_iterations 1) + use_cpu, fp32, "
                   "per_device_train_batch_size=64, num_generations=8, lr_scheduler constant",
            "eos": "not suppressed on either side; fresh model so EOS is rare and equally likely on both",
            "warmup_steps": a.warmup, "measured_steps": a.repeats, "statistic": "median",
        },
        "results": results,
        "goal": "ratio_trl_over_ours >= 3",
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
