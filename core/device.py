"""Where the trainer's tensors live: ``train.device`` (``cpu``, ``cuda``, ``cuda:N`` or ``auto``).

The policy is built by ``rz_build_policy`` on the CPU (every model plugin does so) and moved here
once, by :func:`build_policy`, before the warm-up; every tensor the update creates follows the
policy's device (:attr:`reasonzoo.policy.Policy.device`), and :func:`reasonzoo.trainer.update`
moves each iteration's :class:`reasonzoo.types.TrainBatch` there. Random draws stay on the CPU
generators of :meth:`reasonzoo.context.RunContext.generator` (samples are drawn there and moved),
so a seed gives the same random streams on either device. Rollouts, rewards, checkpoints and
logged metrics are CPU objects on both.

With several trainer ranks on CUDA (``launcher.backend=nccl``), rank ``r`` of a local launcher
takes ``cuda:(r mod visible GPUs)``; a Ray rank actor with ``launcher.rank_gpus=1`` sees one GPU
(``CUDA_VISIBLE_DEVICES``) and takes ``cuda:0``.
"""
from __future__ import annotations

import re

import torch

DEVICES = "cpu, cuda, cuda:N (N >= 0) or auto (cuda when torch sees a GPU, else cpu)"


def check(spec: str) -> None:
    """Validate ``train.device`` before any work.

    :raises ValueError: one line naming ``train.device``, the allowed values, and, for ``cuda``,
        that this torch sees no GPU (a CPU build, or no device visible).
    """
    if spec in ("cpu", "auto"):
        return
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if m is None:
        raise ValueError(f"train.device={spec!r}: allowed values are {DEVICES}")
    if not torch.cuda.is_available():
        raise ValueError(f"train.device={spec}: torch {torch.__version__} sees no CUDA GPU "
                         f"(torch.cuda.is_available() is False); use train.device=cpu")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise ValueError(f"train.device={spec}: torch sees {torch.cuda.device_count()} CUDA GPU(s), "
                         f"numbered 0..{torch.cuda.device_count() - 1}")


def resolve(spec: str, rank: int = 0) -> torch.device:
    """The device of trainer rank ``rank`` for ``train.device=spec`` (checked by :func:`check`).

    ``cuda`` without an index gives rank ``r`` ``cuda:(r mod torch.cuda.device_count())``;
    ``auto`` is ``cuda`` when a GPU is visible, else ``cpu``.

    :raises ValueError: one line, ``cuda`` or ``cuda:N`` in a process that sees no CUDA GPU (the
        run's validation checked the launching process; a ``launcher=ray`` rank actor sees a GPU
        only with ``launcher.rank_gpus > 0``).
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if torch.cuda.device_count() == 0:
        raise ValueError(f"train.device={spec}: trainer rank {rank} sees no CUDA GPU (a launcher=ray rank actor sees one "
                         f"only with launcher.rank_gpus > 0); use train.device=cpu, or give every rank a GPU")
    if spec == "cuda":
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device(spec)


def build_policy(ctx):
    """``rz_build_policy``, then the policy moved to ``train.device`` (this rank's, see
    :func:`resolve`). Used by the trainer's rank 0 and its follower ranks (an engine actor moves its
    policy only when it holds a GPU and its engine decodes with the policy module:
    :class:`reasonzoo.ray_engines.EngineActor`).

    :returns: the :class:`reasonzoo.policy.Policy`, its model on the device.
    """
    policy = ctx.hook.rz_build_policy(ctx=ctx)
    spec = ctx.cfg.get("train", {}).get("device", "cpu")
    dp = getattr(ctx, "data_parallel", None)
    device = resolve(spec, dp.rank if dp is not None else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if policy.device != device:
        policy.model.to(device)
    return policy
