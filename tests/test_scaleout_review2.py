"""Second review of the scale-out features (issue 12): ``train.device``, ``launcher.strategy=fsdp2``
and ``launcher.backend=nccl`` as a user from verl/OpenRLHF meets them (CLI runs with the tiny
overrides on the 2-CPU box, 2026-11-30). Each test reproduces one fault, all fixed now; each failed on the code before its fix.

Tried and found sound (no test added): ``train.device=gpu|cuda:-1|CPU|mps|0|''|null`` and
``train.device=cuda`` here (one line, exit 2, before any work); ``train.device=auto`` runs on the
CPU; ``launcher.strategy=FSDP2|''|null`` on both launchers (one line); fsdp2 on 2 ranks with each
recipe (grpo, dapo, rloo, ppo with ``critic=head``, rest, reinforce; ``train/ranks`` 2 and the
sharding log line), with ``rollout=partial`` and, under ``launcher=ray``, ``max_staleness=1``;
``loss.critic=model`` refused in one line, in a sweep too, before the first job; kill -9 and
Ctrl-C of a 2-rank fsdp2 run (one line, no follower left, no temp dir), resumed as fsdp2 on 2
ranks (metrics equal the uninterrupted run) and as ddp on 1 rank (equal to 1e-7 in grad_norm);
``resume=<run>`` with ``iterations=``/``train.lr=`` refused and ``train.device=gpu`` or
``launcher.strategy=FSDP2`` refused in one line; ``-m launcher.strategy=ddp,fsdp2`` and
``fsdp2,ddp`` x two seeds (every job 2 ranks; the fsdp2 job equals its standalone run).

Faults (what a test below reproduces):

- ``launcher.strategy=fsdp2`` with ``launcher.trainer_ranks=1`` ran the plain one-process update
  without a word (no sharding, no ``train/ranks``): now ``launcher=local`` logs one warning line
  saying so (fixed in plugins/launcher/local.py).
- ``launcher.backend=nccl train.device=cpu`` was refused only with ``trainer_ranks > 1``; on one
  rank it ran, contrary to docs/cluster.md ("refused in one line"). Fixed in both launchers.
- ``launcher.backend=nccl train.device=cuda:0 launcher.trainer_ranks=2`` passed validation: every
  local rank takes ``cuda:0`` (``reasonzoo.device.resolve``), which NCCL refuses at the first
  collective ("duplicate GPU"). Now refused at validation in one line (plugins/launcher/local.py).
- ``reasonzoo.device.resolve("cuda", rank)`` in a process that sees no GPU (a ``launcher=ray``
  rank actor with the default ``launcher.rank_gpus=0``: Ray hides every GPU from it) divided by
  zero. Now a one-line ``ValueError`` naming the key (core/device.py), and ``launcher=ray`` refuses ``train.device=cuda`` ranks without ``launcher.rank_gpus`` at validation.
- ``kill -9`` of the follower rank of a 2-rank run (fsdp2 here; ddp takes the same path): rank 0
  names the dead rank and the resume command, but as the last line of Hydra's "Error executing
  job" and two chained tracebacks (~50 lines, gloo's "Connection reset by peer" included), exit 1.
  The run resumes fine. Fixed: the diagnosis is a ``reasonzoo.errors.PlacementError``, which ``report`` prints in one line.
- Every ``conf/sweep/`` file runs its jobs with hydra-joblib-launcher (loky worker processes), and
  there ``launcher.trainer_ranks=2`` (ddp or fsdp2) fails after the warm-up: the follower, started
  with the ``spawn`` context, is handed the worker's global start method ``loky`` and dies in
  ``multiprocessing.spawn.prepare`` ("cannot find context for 'loky'"); rank 0 then reports
  "trainer rank 1 died: exit code 1". Fixed: ``LocalPlacement.start_trainer`` starts its processes with the global start method set to ``spawn`` (the old one restored after).
- ``launcher.timeout_s`` shorter than a follower's start (0.3 s; a follower takes seconds to
  import torch) fails the rendezvous with a 40-line traceback ending in gloo's bare
  ``RuntimeError: Wait timeout``, the key not named. Fixed: ``init_rank`` raises a ``PlacementError`` naming ``launcher.timeout_s``, reported in one line; a follower prints no traceback for it.
"""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reasonzoo import device as rzdevice
from reasonzoo.config import validate
from reasonzoo.registry import PluginError
from reasonzoo.train import compose


def _fake_gpus(monkeypatch, n: int) -> None:
    """This torch sees ``n`` CUDA GPUs and has NCCL (validation only: nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)


# --- fsdp2 on one rank ----------------------------------------------------------------------------

def test_fsdp2_on_one_local_rank_says_nothing_is_sharded(caplog):
    from reasonzoo.plugins.launcher.local import Local, LocalLauncherConfig

    with caplog.at_level(logging.INFO, logger="reasonzoo"):
        Local(LocalLauncherConfig(strategy="fsdp2")).rz_place(None)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "launcher.strategy=fsdp2" in lines[0] and "launcher.trainer_ranks=1" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reasonzoo"):  # ddp on one rank, fsdp2 on two: nothing to say
        Local(LocalLauncherConfig()).rz_place(None)
        Local(LocalLauncherConfig(strategy="fsdp2", trainer_ranks=2)).rz_place(None)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- nccl -----------------------------------------------------------------------------------------

def test_local_nccl_with_cpu_is_refused_on_one_rank_too(tiny_overrides, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    cfg = compose([*tiny_overrides, "launcher.backend=nccl", "train.device=cpu"])
    with pytest.raises(PluginError, match=r"^launcher.backend=nccl with train.device=cpu: .*launcher.backend=gloo$"):
        validate(cfg)


def test_ray_nccl_with_cpu_is_refused_on_one_rank_too(tiny_overrides, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    cfg = compose([*tiny_overrides, "launcher=ray", "launcher.backend=nccl", "train.device=cpu"])
    with pytest.raises(PluginError, match=r"^launcher.backend=nccl with train.device=cpu"):
        validate(cfg)


@pytest.mark.parametrize("spec", ["cuda:0", "cuda:1"])
def test_nccl_ranks_pinned_to_one_gpu_are_refused_at_validation(tiny_overrides, monkeypatch, spec):
    _fake_gpus(monkeypatch, 2)
    cfg = compose([*tiny_overrides, "launcher.trainer_ranks=2", "launcher.backend=nccl", f"train.device={spec}"])
    with pytest.raises(PluginError) as err:
        validate(cfg)
    msg = str(err.value)
    assert "\n" not in msg and f"train.device={spec}" in msg and "launcher.trainer_ranks=2" in msg
    assert "train.device=cuda" in msg.replace(f"train.device={spec}", "")  # the way out is named
    # every rank on its own GPU (cuda: rank r takes cuda:r) and gloo on one GPU stay allowed
    validate(compose([*tiny_overrides, "launcher.trainer_ranks=2", "launcher.backend=nccl", "train.device=cuda"]))
    validate(compose([*tiny_overrides, "launcher.trainer_ranks=2", f"train.device={spec}"]))


# --- cuda in a process without a GPU --------------------------------------------------------------

def test_resolve_cuda_where_no_gpu_is_visible_names_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match=r"^train.device=cuda: trainer rank 1 sees no CUDA GPU") as err:
        rzdevice.resolve("cuda", 1)
    assert "\n" not in str(err.value) and "launcher.rank_gpus" in str(err.value)
    assert rzdevice.resolve("auto", 1) == torch.device("cpu")
    assert rzdevice.resolve("cpu", 1) == torch.device("cpu")


def test_ray_cuda_ranks_without_gpus_are_refused_at_validation(tiny_overrides, monkeypatch):
    pytest.importorskip("ray")
    _fake_gpus(monkeypatch, 2)
    cfg = compose([*tiny_overrides, "launcher=ray", "launcher.trainer_ranks=2", "train.device=cuda"])
    with pytest.raises(PluginError, match=r"launcher.rank_gpus"):
        validate(cfg)


# --- a follower rank killed ----------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _follower(pid: int) -> int | None:
    for child in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except OSError:
            continue
    return None


@pytest.mark.slow  # a CLI run in a child process: 10-20 s
def test_kill_9_of_the_follower_rank_is_one_line_naming_it(tmp_path, tiny_overrides, cli):
    run = tmp_path / "run"
    proc = cli([*tiny_overrides, "iterations=500", "eval.every=0", "launcher.trainer_ranks=2", "launcher.strategy=fsdp2",
                f"hydra.run.dir={run}"])
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "iter_000002" / "state.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before iteration 2"
            time.sleep(0.05)
        follower = _follower(proc.pid)
        assert follower is not None
        os.kill(follower, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    after = out[out.index("sharded over 2 ranks"):].splitlines()[1:]
    lines = [line for line in after if "][reasonzoo][INFO]" not in line]
    assert len(lines) == 1, "\n".join(lines[-60:])
    assert lines[0].startswith(f"reasonzoo: error: trainer rank 1 (pid {follower}) died") and f"resume={run}" in lines[0]


# --- trainer ranks under the joblib launcher of the sweep files --------------------------------------

@pytest.mark.slow  # a CLI run in a child process: 10-20 s
def test_two_trainer_ranks_run_in_a_joblib_sweep_job(tmp_path, tiny_overrides):
    sweep = tmp_path / "sweep"
    res = subprocess.run([sys.executable, "-m", "reasonzoo.train", "-m", *tiny_overrides, "iterations=1",
                          "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "launcher.trainer_ranks=2",
                          f"hydra.sweep.dir={sweep}"],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    records = [json.loads(line) for line in (sweep / "0" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("train/ranks") for r in records] == [None, 2.0]


# --- a launcher.timeout_s the ranks' start does not fit in ---------------------------------------

def test_a_timeout_shorter_than_the_rendezvous_is_one_line_naming_the_key(tmp_path, tiny_overrides):
    res = subprocess.run([sys.executable, "-m", "reasonzoo.train", *tiny_overrides, "launcher.trainer_ranks=2",
                          "launcher.strategy=fsdp2", "launcher.timeout_s=0.3", f"hydra.run.dir={tmp_path / 'run'}"],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("reasonzoo: error: ") and "launcher.timeout_s=0.3" in last
