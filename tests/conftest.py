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
def qwen2_gqa_policy():
    """A tiny Qwen2 with non-zero q/k/v biases and grouped-query attention (4 query heads, 2 KV
    heads), so the fast paths' bias and GQA handling are exercised."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from reasonzoo.policy import Policy, build_char_tokenizer

    tok = build_char_tokenizer()
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.2)
    return Policy(model=model, tokenizer=tok)


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


#: Metrics measured with a wall clock: they differ between otherwise identical runs.
WALL_CLOCK = ("warmup/cached", "warmup/seconds", "response/tokens_per_s", "response/generated_tokens_per_s")


def _run_metrics(run_dir):
    import json
    from pathlib import Path

    recs = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k not in WALL_CLOCK} for r in recs]


def _cli(args):
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "reasonzoo.train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def run_metrics():
    """``run_metrics(run_dir)``: the run's metrics.jsonl records without wall-clock measurements."""
    return _run_metrics


@pytest.fixture
def cli():
    """``cli(args)``: start ``python -m reasonzoo.train args`` (a Popen, output piped)."""
    return _cli


@pytest.fixture
def kill_and_resume(tmp_path):
    """``kill_and_resume(args, after=2, before_resume=None)`` runs ``args`` to the end in ``ref/``,
    runs them again in ``killed/``, sends SIGKILL once iteration ``after`` is checkpointed, calls
    ``before_resume(killed_dir)`` if given, resumes that run, and returns ``(ref_dir, killed_dir)``."""
    import signal
    import subprocess
    import sys
    import time

    def run(args, after=2, before_resume=None):
        ref = _cli(args + [f"hydra.run.dir={tmp_path}/ref"])
        out, _ = ref.communicate(timeout=600)
        assert ref.returncode == 0, out
        killed = tmp_path / "killed"
        proc = _cli(args + [f"hydra.run.dir={killed}"])
        deadline = time.time() + 300
        while time.time() < deadline:
            if (killed / "checkpoints" / f"iter_{after:06d}" / "state.pt").exists():
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (killed / "final").exists(), "the run finished before it was killed"
        if before_resume is not None:
            before_resume(killed)
        res = subprocess.run([sys.executable, "-m", "reasonzoo.train", f"resume={killed}"], capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stdout + res.stderr
        return tmp_path / "ref", killed

    return run


@pytest.fixture(scope="session")
def ray_start():
    """``ray_start(*paths)``: start a local Ray cluster of 2 CPUs (the box) whose workers have
    ``paths`` (plugin packages) on their PYTHONPATH and one torch thread; the caller shuts it down."""

    def start(*paths):
        import os

        import ray

        path = os.pathsep.join([*map(str, paths), os.environ.get("PYTHONPATH", "")])
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})

    return start


@pytest.fixture(scope="session")
def wait_killed():
    """``wait_killed(actor, pid)``: poll (up to 60 s) until a kill has landed (``ray.kill`` only
    asks): the actor fails a call or answers from a new process, so the next call surely meets the
    restart."""

    def wait(actor, pid):
        import time

        import ray

        for _ in range(600):
            try:
                if ray.get(actor.where.remote(), timeout=60)["pid"] != pid:
                    return
            except ray.exceptions.RayActorError:
                return
            time.sleep(0.1)
        pytest.fail(f"the killed actor still answers from pid {pid}")

    return wait
