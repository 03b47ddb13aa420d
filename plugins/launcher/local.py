"""``launcher=local`` (the default): the run on this machine, as ``reasonzoo-train`` always ran.

With ``trainer_ranks > 1`` the update is data-parallel over that many local processes
(:mod:`reasonzoo.distributed`; this process is rank 0 and runs the loop and the engine), with the
policy replicated (``strategy=ddp``) or sharded (``strategy=fsdp2``, :mod:`reasonzoo.fsdp`).
"""
import logging
import re
from dataclasses import dataclass

from reasonzoo import hookimpl, plugin
from reasonzoo.fsdp import STRATEGIES
from reasonzoo.launch import LocalPlacement, check_nccl
from reasonzoo.ranges import ranged

BACKENDS = ("gloo", "nccl")

log = logging.getLogger("reasonzoo")


@dataclass
class LocalLauncherConfig:
    trainer_ranks: int = ranged(1, ge=1)  #: trainer ranks on this machine, this process included (1: no process group)
    backend: str = "gloo"  #: torch.distributed backend of the gradients: gloo (CPU) or nccl (GPUs)
    strategy: str = "ddp"  #: ddp: every rank holds the whole policy; fsdp2: its parameters, gradients and optimizer state sharded over the ranks (reasonzoo.fsdp)
    timeout_s: float = ranged(86400.0, gt=0)  #: longest wait of a rank for rank 0 (rollouts, rewards, evaluation, warm-up)


@plugin("launcher", "local", LocalLauncherConfig)
class Local:
    """This process, plus ``trainer_ranks - 1`` local trainer ranks when asked."""

    def __init__(self, cfg: LocalLauncherConfig):
        if cfg.backend not in BACKENDS:
            raise ValueError(f"launcher.backend={cfg.backend!r}: allowed values are {', '.join(BACKENDS)}")
        if cfg.strategy not in STRATEGIES:
            raise ValueError(f"launcher.strategy={cfg.strategy!r}: allowed values are {', '.join(STRATEGIES)}")
        self.cfg = cfg

    @staticmethod
    def check_run_config(cfg: LocalLauncherConfig, rc) -> None:
        """``backend=nccl`` needs NCCL and the update on CUDA (``train.device``), on any number of
        ranks; with several ranks also a GPU per rank, and ``train.device=cuda`` (rank ``r`` takes
        ``cuda:r``) rather than ``cuda:N``, which would put every rank on GPU ``N``: NCCL refuses
        two ranks on one GPU at its first collective. Checked at validation.

        :raises PluginError: one line naming the keys.
        """
        from reasonzoo.registry import PluginError

        if cfg.backend != "nccl":
            return
        check_nccl(cfg.trainer_ranks if cfg.trainer_ranks > 1 else 0, rc.train.device)
        pinned = re.fullmatch(r"cuda:\d+", rc.train.device)
        if cfg.trainer_ranks > 1 and pinned:
            raise PluginError(f"launcher.backend=nccl with launcher.trainer_ranks={cfg.trainer_ranks} and "
                              f"train.device={rc.train.device}: every rank would take that one GPU, and NCCL needs a GPU "
                              f"per rank; use train.device=cuda (rank r takes cuda:r), or launcher.backend=gloo")

    @hookimpl
    def rz_place(self, ctx):
        if self.cfg.strategy == "fsdp2" and self.cfg.trainer_ranks == 1:
            log.warning("launcher.strategy=fsdp2 with launcher.trainer_ranks=1: one process holds the whole policy, "
                        "nothing is sharded (the one-process update); set launcher.trainer_ranks >= 2 to shard")
        return LocalPlacement(self.cfg.trainer_ranks, self.cfg.backend, self.cfg.timeout_s)
