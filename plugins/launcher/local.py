"""``launcher=local`` (the default): the run on this machine, as ``reasonzoo-train`` always ran.

With ``trainer_ranks > 1`` the update is data-parallel over that many local processes
(:mod:`reasonzoo.distributed`; this process is rank 0 and runs the loop and the engine), with the
policy replicated (``strategy=ddp``) or sharded (``strategy=fsdp2``, :mod:`reasonzoo.fsdp`).
"""
from dataclasses import dataclass

from reasonzoo import hookimpl, plugin
from reasonzoo.fsdp import STRATEGIES
from reasonzoo.launch import LocalPlacement, check_nccl
from reasonzoo.ranges import ranged

BACKENDS = ("gloo", "nccl")


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
        """``backend=nccl`` with several ranks needs NCCL, a GPU per rank and the update on CUDA
        (``train.device``; checked at validation)."""
        if cfg.backend == "nccl" and cfg.trainer_ranks > 1:
            check_nccl(cfg.trainer_ranks, rc.train.device)

    @hookimpl
    def rz_place(self, ctx):
        return LocalPlacement(self.cfg.trainer_ranks, self.cfg.backend, self.cfg.timeout_s)
