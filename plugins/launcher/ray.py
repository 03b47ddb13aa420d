"""``launcher=ray``: rollout engines in Ray actors, the trainer on ``torch.distributed`` ranks.

The process running ``reasonzoo-train`` is the Ray driver and the trainer's rank 0: it runs the
loop (sampling, rewards, logging, evaluation, checkpoints) as ``launcher=local`` does. It starts
(or joins, with ``address`` or ``RAY_ADDRESS``) a Ray cluster and places there

* ``engines`` engine actors (:mod:`reasonzoo.ray_engines`): each rebuilds the plugins from the
  same config, entry-point plugins included, and serves ``engine=<name>``; a rollout's requests
  are split across them and the trainer's weights reach them with a version after every update
  (``weight_sync``: through the object store, or broadcast in a process group of their own);
* ``reward_workers`` reward actors when > 0 (:class:`reasonzoo.ray_engines.RayRewardGroup`): the
  run's rewards are computed there (the code sandbox pool and slow verifiers then run on the
  cluster), the groups split across them; the loop calls :meth:`RayPlacement.reward`;
* ``trainer_ranks - 1`` trainer ranks (:func:`reasonzoo.distributed.follower_loop`), joined with
  rank 0 in a ``torch.distributed`` group (gloo on CPU, nccl on GPU): the update is data-parallel
  over the ranks (:mod:`reasonzoo.distributed`).

A cluster this process starts gets a watchdog (:data:`WATCHDOG`, Linux): a small process that,
when this process dies (``kill -9`` included) or closes the placement, kills every process left of
that cluster. Without it Ray's dashboard and runtime-env agents outlive a killed driver by a
minute or more (Ray 2.60: each tries to tell the dead cluster that its raylet died, with a 60 s
timeout). A cluster joined with ``address`` / ``RAY_ADDRESS`` gets none: it is never touched.

Ray is an extra: ``pip install -e '.[ray]'``. Without it, ``launcher=ray`` is refused at config
validation, before any work, in one line saying what to install. docs/cluster.md has the
multi-node commands.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf

from reasonzoo import hookimpl, plugin
from reasonzoo.distributed import DataParallel
from reasonzoo.fsdp import STRATEGIES
from reasonzoo.launch import check_nccl, init_rank, join_as_rank0
from reasonzoo.ranges import ranged
from reasonzoo.registry import PluginError

log = logging.getLogger("reasonzoo")
BACKENDS = ("auto", "gloo", "nccl")
WEIGHT_SYNC = ("object_store", "broadcast")


@dataclass
class RayLauncherConfig:
    address: Optional[str] = None  #: a cluster to join (``ray://`` or ``host:port``); None: RAY_ADDRESS, else start a local one
    num_cpus: Optional[int] = ranged(None, ge=1)  #: CPUs of a local cluster (logical); None: enough for the actors, at least this machine's
    engines: int = ranged(1, ge=1)  #: rollout engine actors
    engine_cpus: float = ranged(1.0, gt=0)  #: CPUs reserved per engine actor
    engine_gpus: float = ranged(0.0, ge=0)  #: GPUs per engine actor
    trainer_ranks: int = ranged(1, ge=1)  #: trainer ranks, this process (rank 0) included
    rank_cpus: float = ranged(1.0, gt=0)  #: CPUs reserved per trainer rank actor (ranks 1 .. R-1)
    rank_gpus: float = ranged(0.0, ge=0)  #: GPUs per trainer rank actor
    backend: str = "auto"  #: torch.distributed backend of the gradients: auto (nccl with GPUs and train.device on cuda, else gloo), gloo, nccl
    strategy: str = "ddp"  #: ddp: every rank holds the whole policy; fsdp2: its parameters, gradients and optimizer state sharded over the ranks (reasonzoo.fsdp)
    reward_workers: int = ranged(0, ge=0)  #: reward actors; 0: rewards computed in this process
    reward_cpus: float = ranged(1.0, gt=0)  #: CPUs reserved per reward actor
    #: how weights reach the engine actors: object_store, or broadcast (a process group of this process and the engine actors)
    weight_sync: str = "object_store"
    max_restarts: int = ranged(3, ge=0)  #: restarts of a dead engine or reward actor before the run fails
    max_task_retries: int = ranged(3, ge=0)  #: retries of an engine or reward call whose actor died
    start_timeout_s: float = ranged(600.0, gt=0)  #: longest wait for an actor to start or to come back after dying
    timeout_s: float = ranged(86400.0, gt=0)  #: longest wait of a trainer rank for rank 0 (its rollouts, rewards, evaluation, warm-up)


@plugin("launcher", "ray", RayLauncherConfig)
class RayLauncher:
    """Engines in Ray actors, a data-parallel trainer over ``torch.distributed``."""

    separate_weights = True  #: the engine actors hold their own copies of the weights (max_staleness=1 may overlap)

    def __init__(self, cfg: RayLauncherConfig):
        if cfg.backend not in BACKENDS:
            raise ValueError(f"launcher.backend={cfg.backend!r}: allowed values are {', '.join(BACKENDS)}")
        if cfg.strategy not in STRATEGIES:
            raise ValueError(f"launcher.strategy={cfg.strategy!r}: allowed values are {', '.join(STRATEGIES)}")
        if cfg.weight_sync not in WEIGHT_SYNC:
            raise ValueError(f"launcher.weight_sync={cfg.weight_sync!r}: allowed values are {', '.join(WEIGHT_SYNC)}")
        self.cfg = cfg

    @staticmethod
    def check_run_config(cfg: RayLauncherConfig, rc) -> None:
        """Ray must be installed, and an explicit nccl backend available, with the update on CUDA
        (checked at validation, before any work)."""
        if importlib.util.find_spec("ray") is None:
            raise PluginError("launcher=ray needs Ray, which is not installed: pip install -e '.[ray]'")
        if cfg.backend == "nccl":
            check_nccl(device=rc.train.device)
        cuda = rc.train.device.startswith("cuda") or (rc.train.device == "auto" and torch.cuda.is_available())
        if cuda and cfg.trainer_ranks > 1 and cfg.rank_gpus <= 0:
            raise PluginError(f"train.device={rc.train.device} with launcher.trainer_ranks={cfg.trainer_ranks} and "
                              f"launcher.rank_gpus={cfg.rank_gpus:g}: the rank actors would see no GPU; set "
                              f"launcher.rank_gpus=1, or train.device=cpu")

    @hookimpl
    def rz_place(self, ctx):
        return RayPlacement(self.cfg, ctx)


#: The watchdog of a cluster this process started, run as ``python -I -c WATCHDOG <driver pid>
#: <session dir> <ray package dir>`` (the standard library only: it starts in milliseconds). It
#: waits until the driver dies (its parent changes) or closes the watchdog's stdin
#: (``RayPlacement.close``, after ``ray.shutdown``), then kills with SIGKILL, until none is left (at
#: most 30 s), every Ray process of the cluster: a file open under the session dir (Ray's processes
#: keep their logs there) and a command line ``ray::...`` (a worker or agent) or under the ray
#: package (raylet, GCS, monitors, a worker still starting), except the driver and any other driver
#: connected to the cluster (it has its own ``python-core-driver-*_<pid>.log`` open). Other
#: processes holding the session's files (a ``tail -f`` of a log) are not its to kill. It ignores
#: SIGINT (Ctrl-C is the driver's to handle) and appends what it killed to
#: ``<session dir>/logs/reasonzoo-watchdog.log``.
WATCHDOG = r"""
import os, select, signal, sys, time
driver, session, ray_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
signal.signal(signal.SIGINT, signal.SIG_IGN)
while os.getppid() == driver:
    ready, _, _ = select.select([0], [], [], 0.2)
    if ready and not os.read(0, 1):
        break

def left():
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in (driver, os.getpid()):
            continue
        try:
            names = [os.readlink(f"/proc/{d}/fd/{fd}") for fd in os.listdir(f"/proc/{d}/fd")]
            mine = [n for n in names if n.startswith(session + "/")]
            if not mine or any(os.path.basename(n).startswith("python-core-driver-") and n.endswith(f"_{d}.log")
                               for n in mine):
                continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            if cmd.startswith("ray::") or ray_dir + "/" in cmd:
                found[int(d)] = cmd[:80].strip()
        except OSError:
            continue
    return found

killed, deadline = {}, time.monotonic() + 30
while time.monotonic() < deadline:
    found = left()
    if not found:
        break
    for pid, cmd in found.items():
        try:
            os.kill(pid, signal.SIGKILL)
            killed[pid] = cmd
        except OSError:
            pass
    time.sleep(0.1)
if killed:
    try:
        with open(os.path.join(session, "logs", "reasonzoo-watchdog.log"), "a") as f:
            f.writelines(f"{time.strftime('%Y-%m-%d %H:%M:%S')} killed pid {p}: {c}\n" for p, c in sorted(killed.items()))
    except OSError:
        pass
"""


def _start_watchdog(session: str, ray_dir: str) -> subprocess.Popen:
    """The :data:`WATCHDOG` of the cluster whose session dir is ``session`` (Ray installed in
    ``ray_dir``), in a session of its own (a signal to this process's group does not reach it)."""
    return subprocess.Popen([sys.executable, "-I", "-c", WATCHDOG, str(os.getpid()), session, ray_dir],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _rank_actor_class():
    import ray

    @ray.remote
    class TrainerRank:
        """Trainer rank 1 .. R-1: joins the process group and serves rank 0's commands."""

        def where(self) -> str:
            return f"pid {os.getpid()} on {ray.util.get_node_ip_address()}"

        def run(self, cfg, run_dir: str, rank: int, world: int, init_method: str, backend: str, timeout_s: float) -> int:
            from reasonzoo.distributed import follower_loop

            dp = init_rank(backend, init_method, rank, world, timeout_s)
            try:
                return follower_loop(OmegaConf.create(cfg), Path(run_dir), dp)
            finally:
                torch.distributed.destroy_process_group()

    return TrainerRank


class RayPlacement:
    """The Ray side of a run (see the module docstring). Started by ``rz_place``.

    :raises PluginError: the cluster cannot hold the actors (names the keys and the resources).
    """

    def __init__(self, cfg: RayLauncherConfig, ctx):
        import ray

        self.cfg = cfg
        self.engines = None
        self.rewards = None
        self.ranks: list = []
        self.runs: list = []
        self.dp: DataParallel | None = None
        self.started_ray = False
        self.watchdog: subprocess.Popen | None = None
        cpus = cfg.engines * cfg.engine_cpus + (cfg.trainer_ranks - 1) * cfg.rank_cpus + cfg.reward_workers * cfg.reward_cpus
        gpus = cfg.engines * cfg.engine_gpus + (cfg.trainer_ranks - 1) * cfg.rank_gpus
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        threads = str(ctx.cfg.threads)
        env = {"env_vars": {"OMP_NUM_THREADS": threads}}
        if not ray.is_initialized():
            if address:
                where = "launcher.address" if cfg.address else "RAY_ADDRESS (environment)"
                try:
                    ray.init(address=address, runtime_env=env, log_to_driver=True)
                except Exception as exc:  # Ray's own message names neither the key nor the variable
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    raise PluginError(f"launcher=ray: cannot join the Ray cluster at {where}={address!r}: {first}; "
                                      "unset it to start a local cluster") from exc
            else:
                num_cpus = cfg.num_cpus or max(os.cpu_count() or 1, int(-(-cpus // 1)))
                ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=env, log_to_driver=True)
                if sys.platform.startswith("linux"):  # reads /proc
                    try:
                        self.watchdog = _start_watchdog(ray._private.worker._global_node.get_session_dir_path(),
                                                        os.path.dirname(os.path.abspath(ray.__file__)))
                    except BaseException:
                        ray.shutdown()
                        raise
            self.started_ray = True
        have = ray.cluster_resources()
        if cpus > have.get("CPU", 0) or gpus > have.get("GPU", 0):
            self.close()
            raise PluginError(
                f"launcher=ray: the actors need {cpus:g} CPUs and {gpus:g} GPUs (launcher.engines={cfg.engines} x "
                f"engine_cpus={cfg.engine_cpus:g} / engine_gpus={cfg.engine_gpus:g}, launcher.trainer_ranks-1="
                f"{cfg.trainer_ranks - 1} x rank_cpus={cfg.rank_cpus:g} / rank_gpus={cfg.rank_gpus:g}, launcher.reward_workers="
                f"{cfg.reward_workers} x reward_cpus={cfg.reward_cpus:g}); the cluster has "
                f"{have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs")
        on_cuda = getattr(getattr(ctx.cfg, "train", None), "device", "cpu") != "cpu" and torch.cuda.is_available()  # train.device
        self.backend = cfg.backend if cfg.backend != "auto" else ("nccl" if cfg.rank_gpus > 0 and on_cuda else "gloo")
        if cfg.reward_workers > 0:
            from reasonzoo.ray_engines import RayRewardGroup

            try:
                self.rewards = RayRewardGroup(ctx, cfg.reward_workers, actor_options={"num_cpus": cfg.reward_cpus},
                                              max_restarts=cfg.max_restarts, max_task_retries=cfg.max_task_retries,
                                              start_timeout_s=cfg.start_timeout_s)
            except BaseException:
                self.close()
                raise

    def engine(self, ctx, policy):
        from reasonzoo.ray_engines import RayEngineGroup

        if self.engines is not None:  # a second engine (a distilled policy's): the old actors go first
            self.engines.close()
        self.engines = RayEngineGroup(ctx, self.cfg.engines,
                                      actor_options={"num_cpus": self.cfg.engine_cpus, "num_gpus": self.cfg.engine_gpus},
                                      max_restarts=self.cfg.max_restarts, max_task_retries=self.cfg.max_task_retries,
                                      start_timeout_s=self.cfg.start_timeout_s, weight_sync=self.cfg.weight_sync)
        return self.engines

    def reward(self, ctx, groups):
        """The groups' rewards from the reward actors (one list of ``RewardResult`` per group), or
        ``None`` without reward workers: ``ctx.reward`` then scores them in this process."""
        return None if self.rewards is None else self.rewards.reward(ctx, groups)

    def start_trainer(self, ctx):
        import ray

        world = self.cfg.trainer_ranks
        if world == 1:
            return None
        init_method = f"tcp://{ray.util.get_node_ip_address()}:{_free_port()}"
        cfg = OmegaConf.to_container(ctx.cfg, resolve=True)
        cls = _rank_actor_class()
        tag = os.urandom(4).hex()  # named per run, so a cluster shared by runs tells them apart
        self.ranks = [cls.options(num_cpus=self.cfg.rank_cpus, num_gpus=self.cfg.rank_gpus, name=f"reasonzoo-rank{r}-{tag}").remote()
                      for r in range(1, world)]
        self.runs = [a.run.remote(cfg, str(ctx.run_dir), r, world, init_method, self.backend, self.cfg.timeout_s)
                     for r, a in enumerate(self.ranks, start=1)]
        self.dp = join_as_rank0(self.backend, init_method, world, self.cfg.timeout_s, lambda: self.diagnose(wait=0))
        return self.dp

    def metrics(self) -> dict[str, float]:
        counts = dict(self.engines.fault_counts()) if self.engines is not None and hasattr(self.engines, "fault_counts") else {}
        if self.rewards is not None:
            counts.update(self.rewards.fault_counts())
        return {k: float(v) for k, v in counts.items()}

    def diagnose(self, wait: float = 5.0) -> str | None:
        """The first trainer rank that has failed (waiting up to ``wait`` seconds for the ranks to
        end), its place and cause, or ``None``."""
        import ray

        if not self.runs:
            return None
        done, _ = ray.wait(self.runs, num_returns=len(self.runs), timeout=wait)
        for r, ref in enumerate(self.runs, start=1):
            if ref in done:
                try:
                    ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - the cause is reported
                    cause = str(exc).strip().splitlines()
                    return f"trainer rank {r} died: {cause[-1] if cause else type(exc).__name__}"
        return None

    def close(self) -> None:
        import ray

        try:
            if self.dp is not None and self.dp.stopped:  # told to stop: they leave on their own
                try:
                    ray.get(self.runs, timeout=60)
                except Exception as exc:  # noqa: BLE001 - name it, release the rest
                    log.warning("launcher=ray: trainer ranks did not stop cleanly: %s", str(exc).splitlines()[0])
            for a in self.ranks:  # after a failure they may wait in a collective: killed
                ray.kill(a)
            if self.engines is not None:
                self.engines.close()
            if self.rewards is not None:
                self.rewards.close()
            if self.dp is not None and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        finally:
            self.ranks, self.runs, self.dp, self.engines, self.rewards = [], [], None, None, None
            if self.started_ray and ray.is_initialized():
                ray.shutdown()
                self.started_ray = False
            if self.watchdog is not None:  # kills what ray.shutdown left, if anything (measured: nothing), then ends
                self.watchdog.stdin.close()
                try:
                    self.watchdog.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    log.warning("launcher=ray: the cluster's watchdog (pid %d) has not ended", self.watchdog.pid)
                self.watchdog = None
