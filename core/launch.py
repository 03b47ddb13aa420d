"""Placement of a run's parts: the :class:`Placement` interface ``rz_place`` returns, and the local one.

A placement answers where the rollout engine runs and how many ranks the trainer has. The loop
(:mod:`reasonzoo.trainer`) asks it for the engine once, starts the trainer's other ranks after the
optimizer exists, logs its ``metrics()`` every iteration and ``close()``\\ s it at the end, also on
errors. ``launcher=local`` (:class:`LocalPlacement`) runs in this process, plus ``trainer_ranks - 1``
local follower processes when asked; ``launcher=ray`` (``reasonzoo.plugins.launcher.ray``) places
engine actors and trainer ranks on a Ray cluster.
"""
from __future__ import annotations

import datetime
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from omegaconf import OmegaConf

from .distributed import DataParallel
from .errors import PlacementError

log = logging.getLogger("reasonzoo")


@runtime_checkable
class Placement(Protocol):
    """What ``rz_place`` returns (see :func:`reasonzoo.hookspecs.rz_place`).

    Optional: ``diagnose() -> str | None``, called when the run fails: names a trainer rank or an
    actor that died and its cause (the loop then raises that, with the resume hint);
    ``reward(ctx, groups) -> list[list[RewardResult]] | None``, called by ``ctx.reward`` to score
    groups elsewhere (reward actors under ``launcher=ray``); ``None``: score them with the
    ``rz_reward`` hook in this process.
    """

    def engine(self, ctx, policy):
        """The rollout engine serving ``policy`` (an :class:`reasonzoo.engine.Engine`)."""

    def start_trainer(self, ctx):
        """Start the trainer's ranks 1 .. R-1 and join them as rank 0: this process's
        :class:`reasonzoo.distributed.DataParallel`, or ``None`` for a one-rank trainer. Called
        once, after ``ctx.optimizer`` is built."""

    def metrics(self) -> dict[str, float]:
        """Counters to log with each iteration (``ray/*``: restarts, retries); may be empty."""

    def close(self) -> None:
        """Stop and release what the placement started (idempotent; called on errors too)."""


def check_nccl(gpus_needed: int = 0, device: str = "cuda") -> None:
    """``launcher.backend=nccl`` needs a torch built with NCCL, the update on CUDA (``train.device``
    not ``cpu``: NCCL reduces CUDA tensors) and, on one machine, a CUDA GPU per rank.
    :raises PluginError: naming the keys and what is missing."""
    from .registry import PluginError

    if not torch.distributed.is_nccl_available():
        raise PluginError("launcher.backend=nccl: this torch has no NCCL (a CPU build); use launcher.backend=gloo")
    if device == "cpu":
        raise PluginError("launcher.backend=nccl with train.device=cpu: NCCL reduces CUDA tensors and this update runs on the "
                          "CPU; set train.device=cuda, or launcher.backend=gloo")
    if gpus_needed and torch.cuda.device_count() < gpus_needed:
        raise PluginError(f"launcher.backend=nccl with launcher.trainer_ranks={gpus_needed}: needs a CUDA GPU per rank, "
                          f"torch sees {torch.cuda.device_count()}; use launcher.backend=gloo")


def init_rank(backend: str, init_method: str, rank: int, world: int, timeout_s: float) -> DataParallel:
    """Join the trainer's process group as ``rank`` of ``world`` and return the
    :class:`DataParallel` place; commands travel on a gloo group when ``backend`` is not gloo.
    Its ``strategy`` is set by the caller from ``launcher.strategy``.

    :raises PlacementError: the ranks did not all join within ``timeout_s`` (``launcher.timeout_s``).
    """
    try:
        torch.distributed.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                                             timeout=datetime.timedelta(seconds=timeout_s))
    except RuntimeError as exc:  # gloo / the file store: "Wait timeout", "Timed out ..."
        if "timeout" not in str(exc).lower() and "timed out" not in str(exc).lower():
            raise
        raise PlacementError(f"trainer rank {rank}: the {world} trainer ranks did not all join within launcher.timeout_s="
                             f"{timeout_s:g} s (starting a rank takes seconds); raise launcher.timeout_s") from None
    control = torch.distributed.new_group(backend="gloo") if backend != "gloo" else None
    return DataParallel(rank, world, None, control)


def join_as_rank0(backend: str, init_method: str, world: int, timeout_s: float, watch) -> DataParallel:
    """:func:`init_rank` as rank 0, while watching the other ranks: the rendezvous blocks, deaf to
    signals, until every rank has joined, so it runs on a thread and ``watch()`` (a placement's
    ``diagnose``: a dead rank named, or ``None``) is asked every 0.1 s meanwhile.

    :raises PlacementError: ``watch()`` named a rank that died before joining, or the ranks did
        not all join within ``timeout_s``.
    """
    joined: dict = {}

    def join() -> None:
        try:
            joined["dp"] = init_rank(backend, init_method, 0, world, timeout_s)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            joined["error"] = exc

    t = threading.Thread(target=join, name="reasonzoo-rendezvous", daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.1)
        why = watch() if t.is_alive() else None
        if why:
            raise PlacementError(f"{why}, before joining rank 0")
    if "error" in joined:
        raise joined["error"]
    return joined["dp"]


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when ``parent`` exits (Linux ``PR_SET_PDEATHSIG``): a
    follower of a driver killed with SIGKILL leaves at once, without a traceback, instead of failing
    in its next collective. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def _follower_process(cfg: dict, run_dir: str, rank: int, world: int, init_method: str, backend: str,
                      timeout_s: float, error_file: str, parent: int) -> None:
    """A local follower rank (spawned): serve rank 0 until it says stop; a failure's last line is
    left in ``error_file`` for :meth:`LocalPlacement.diagnose`. Dies with its parent (rank 0)."""
    from .distributed import follower_loop

    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: rank 0 handles it and stops the ranks
    try:
        dp = init_rank(backend, init_method, rank, world, timeout_s)
        try:
            follower_loop(OmegaConf.create(cfg), Path(run_dir), dp)
        finally:
            torch.distributed.destroy_process_group()
    except BaseException as exc:
        Path(error_file).write_text(f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__)
        if not isinstance(exc, PlacementError):  # a named placement failure: rank 0 reports it in one line
            traceback.print_exc()
        raise SystemExit(1)


class LocalPlacement:
    """This machine: the engine of ``rz_build_engine`` in this process, and ``trainer_ranks - 1``
    follower ranks as local processes (spawned, gloo, file rendezvous in ``<run dir>/.tmp-ranks-<pid>``,
    removed at the end, or at the run's next start after a kill) when ``trainer_ranks > 1``: the data-parallel update of :mod:`reasonzoo.distributed` on one
    machine, as ``torchrun`` would start it.

    :param trainer_ranks: ranks of the trainer, this process included.
    :param backend: ``gloo`` or ``nccl``.
    :param timeout_s: longest wait of a rank for a collective.
    """

    def __init__(self, trainer_ranks: int = 1, backend: str = "gloo", timeout_s: float = 86400.0):
        self.world, self.backend, self.timeout_s = trainer_ranks, backend, timeout_s
        self.procs: list = []
        self.dp: DataParallel | None = None
        self.tmp: Path | None = None

    def engine(self, ctx, policy):
        return ctx.hook.rz_build_engine(ctx=ctx, policy=policy)

    def start_trainer(self, ctx):
        if self.world == 1:
            return None
        self.tmp = Path(ctx.run_dir) / f".tmp-ranks-{os.getpid()}"  # a killed run's is removed at its next start
        self.tmp.mkdir(parents=True, exist_ok=True)
        init_method = f"file://{self.tmp}/rendezvous"
        cfg = OmegaConf.to_container(ctx.cfg, resolve=True)
        mp = multiprocessing.get_context("spawn")
        self.procs = [mp.Process(target=_follower_process, daemon=True, name=f"reasonzoo-rank{r}",
                                 args=(cfg, str(ctx.run_dir), r, self.world, init_method, self.backend, self.timeout_s,
                                       f"{self.tmp}/rank{r}.error", os.getpid()))
                      for r in range(1, self.world)]
        # a spawned child re-applies the parent's *global* start method (multiprocessing.spawn.prepare):
        # inside a joblib sweep worker that is "loky", which the child cannot find; spawn for the start
        previous = multiprocessing.get_start_method(allow_none=True)
        multiprocessing.set_start_method("spawn", force=True)
        try:
            for p in self.procs:
                p.start()
        finally:
            multiprocessing.set_start_method(previous, force=True)
        self.dp = join_as_rank0(self.backend, init_method, self.world, self.timeout_s, lambda: self.diagnose(wait=0))
        return self.dp

    def metrics(self) -> dict[str, float]:
        return {}

    def diagnose(self, wait: float = 2.0) -> str | None:
        """The first follower rank that has died (each given ``wait`` seconds to end): its pid,
        exit code and error line."""
        for r, p in enumerate(self.procs, start=1):
            p.join(timeout=wait)
            if p.exitcode not in (None, 0):
                err = self.tmp / f"rank{r}.error"
                cause = err.read_text() if err.is_file() else (f"killed by signal {-p.exitcode}" if p.exitcode < 0
                                                                else f"exit code {p.exitcode}")
                return f"trainer rank {r} (pid {p.pid}) died: {cause}"
        return None

    def close(self) -> None:
        try:
            if self.dp is not None and self.dp.stopped:
                for p in self.procs:
                    p.join(timeout=60)
            for p in self.procs:  # after a failure they may wait in a collective
                if p.is_alive():
                    p.kill()
                    p.join(timeout=10)
            if self.dp is not None and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        finally:
            self.procs, self.dp = [], None
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None
