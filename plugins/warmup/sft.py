"""Long-CoT supervised warm-up (k1.5 §2.2): fine-tune the policy on reference solutions before RL.

Each training example is a problem's prompt followed by one of its reference ``solutions``,
chosen with probabilities ``mix`` per example. Batches are drawn uniformly from the whole pool:
batches of one difficulty (less padding) made the tiny model's warm-up collapse to a constant
answer in our trials (for the built-in task: solution 0 = worked step by step,
solution 1 = direct answer; the default 50/50 mix leaves RL something to discover: that working
pays on harder problems). Cross-entropy on response tokens only, AdamW with cosine decay.

The tiny model's warm-up is sensitive to rounding: in our trials about one warm-up in three
(other learning rates, batch layouts, or the lean forward of ``Policy.token_logprobs`` instead of
the HF forward used here) under-learned the operand copy and started RL near chance. The default
seed with this exact code path gives near-perfect worked solutions (loss ~0.07).

The result is cached under ``<cache_dir>/warmup/<key>``, the key hashing the model, task and
warm-up configs, ``warmup_seed`` and ``data_seed`` and the tokenizer, so the main job trains it once and
reuses it afterwards, and the RL seeds of a sweep (``seed=0,1,2``) all start from the same warm-up. Processes needing the same key at once take turns on a lock
(``<key>.lock``): the first trains, the others wait and load its result.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from reasonzoo import __version__, hookimpl, plugin
from reasonzoo.checkpoint import load_into
from reasonzoo.runlog import progress_bars
from reasonzoo.policy import tokenizer_fingerprint

log = logging.getLogger("reasonzoo")


@dataclass
class SFTConfig:
    steps: int = 1200  #: optimizer steps
    batch_size: int = 64  #: examples per step
    lr: float = 2e-3  #: peak learning rate (cosine decay to 10%)
    warmup_steps: int = 50  #: linear learning-rate warm-up
    mix: list[float] = field(default_factory=lambda: [0.5, 0.5])  #: probability of each reference solution index
    cache: bool = True  #: reuse a cached warm-up with the same key


@plugin("warmup", "sft", SFTConfig)
class SFTWarmup:
    """Supervised fine-tuning on reference solutions, cached."""

    def __init__(self, cfg: SFTConfig):
        if not cfg.mix or any(w < 0 for w in cfg.mix) or sum(cfg.mix) <= 0:
            raise ValueError(f"warmup.mix={cfg.mix}: needs non-negative weights with a positive sum")
        self.cfg = cfg

    def cache_key(self, ctx, policy) -> str:
        """16 hex digits hashing the model, task and warm-up configs, ``warmup_seed`` and
        ``data_seed`` (not the RL ``seed``: every RL seed of a sweep shares the warm-up), the package
        version and the policy's tokenizer (:func:`reasonzoo.policy.tokenizer_fingerprint`: a
        cache trained with another vocabulary or chat template must never load)."""
        parts = {k: OmegaConf.to_container(ctx.cfg[k], resolve=True) for k in ("model", "task", "warmup")}
        parts.update(seed=ctx.warmup_seed, data_seed=ctx.data_seed, version=__version__,
                     tokenizer=tokenizer_fingerprint(policy.tokenizer))
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    @hookimpl
    def rz_warmup(self, ctx, policy, problems):
        cache = Path(os.path.expanduser(ctx.cfg.cache_dir)) / "warmup" / self.cache_key(ctx, policy)
        if not self.cfg.cache:
            return {**self._train_usable(ctx, policy, problems), "warmup/cached": 0.0}
        cache.parent.mkdir(parents=True, exist_ok=True)
        # One writer per key: processes started together (the two jobs a sweep runs at once, two
        # runs started in one folder) wait for the first one's warm-up and load it instead of
        # training it again and racing to rename it into place (the second rename failed).
        with open(cache.with_name(f"{cache.name}.lock"), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process's warm-up into %s", cache)
                fcntl.flock(lock, fcntl.LOCK_EX)
            if (cache / "metrics.json").is_file():
                load_into(policy.model, cache)
                return {**json.loads((cache / "metrics.json").read_text()), "warmup/cached": 1.0}
            metrics = self._train_usable(ctx, policy, problems)
            tmp = cache.with_name(f".tmp-{cache.name}-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            policy.save(tmp)
            (tmp / "metrics.json").write_text(json.dumps(metrics))
            if cache.exists():  # an incomplete entry (no metrics.json): never a finished one
                shutil.rmtree(cache)
            os.rename(tmp, cache)
        return {**metrics, "warmup/cached": 0.0}

    def _train_usable(self, ctx, policy, problems) -> dict[str, float]:
        usable = [p for p in problems if p.solutions]
        if not usable:
            raise ValueError("warmup=sft needs problems with reference solutions; this task has none (use warmup=none)")
        return self.train(ctx, policy, usable)

    def train(self, ctx, policy, problems) -> dict[str, float]:
        cfg, model = self.cfg, policy.model
        rng = random.Random(f"sft-{ctx.warmup_seed}")
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)) * (
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, cfg.steps))))))
        model.train()
        t0, losses = time.perf_counter(), []
        for _ in tqdm(range(cfg.steps), desc="warm-up (SFT)", disable=not progress_bars(ctx.cfg.progress)):
            seqs, starts = [], []
            for p in rng.choices(problems, k=cfg.batch_size):
                k = min(rng.choices(range(len(cfg.mix)), weights=cfg.mix)[0], len(p.solutions) - 1)
                prompt = policy.encode_prompt(p.prompt)
                seqs.append(prompt + policy.encode_response(p.solutions[k]))
                starts.append(len(prompt))
            t = max(map(len, seqs))
            ids = torch.full((len(seqs), t), policy.pad_token_id)
            mask = torch.zeros((len(seqs), t), dtype=torch.long)
            target_mask = torch.zeros((len(seqs), t - 1))
            for i, (s, st) in enumerate(zip(seqs, starts)):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
                target_mask[i, st - 1 : len(s) - 1] = 1
            # the plain HF forward: with the lean path (Policy.token_logprobs, same maths, other
            # rounding) the default seed's warm-up under-learned the operand copy (see module doc)
            ids, mask, target_mask = (t.to(policy.device) for t in (ids, mask, target_mask))  # train.device
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
            loss = (nll.view_as(target_mask) * target_mask).sum() / target_mask.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
        model.eval()
        tail = losses[-50:]
        return {"warmup/loss": sum(tail) / len(tail), "warmup/steps": float(cfg.steps), "warmup/seconds": time.perf_counter() - t0}
