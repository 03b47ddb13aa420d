"""Shared fixtures. Tests import the installed ``reasonzoo`` (``--import-mode=importlib``)."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # two busy-waiting OpenMP threads on 2 cores: up to 10x slower
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

#: A run small enough for tests: tiny task range, few short iterations.
TINY = [
    "logger=none", "progress=false", "iterations=2", "prompts_per_iteration=4", "samples_per_prompt=4",
    "task.min_steps=2", "task.max_steps=3", "task.train_size=200", "task.eval_per_difficulty=20",
    "warmup.steps=10", "warmup.batch_size=16", "eval.problems_per_difficulty=8", "eval.every=1",
    "generation.max_new_tokens=24", "train.minibatch_size=8",
]


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REASONZOO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def tiny_policy():
    from reasonzoo.policy import Policy, build_char_tokenizer, build_tiny_model

    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), "llama", 32, 2, 2, 64, 128, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, seed=0)
    return Policy(model=model.eval(), tokenizer=tok)


@pytest.fixture
def tiny_overrides():
    return list(TINY)


@pytest.fixture
def make_ctx(tmp_path):
    """Build a RunContext over the composed tiny config: ``make_ctx(overrides, policy=..., iteration=...)``."""
    from reasonzoo.context import RunContext
    from reasonzoo.train import compose

    def make(overrides=(), policy=None, iteration=1, hook=None):
        cfg = compose(list(TINY) + list(overrides))
        return RunContext(cfg=cfg, hook=hook, run_dir=tmp_path, policy=policy, iteration=iteration)

    return make
