"""The run context passed to every hook as ``ctx``."""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed derived from the run seed and labels (stable across processes)."""
    h = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


@dataclass
class RunContext:
    """What a hook may read about the run.

    :ivar cfg: the whole composed config (read-only by convention).
    :ivar hook: the plugin manager's hook relay, to call other hooks (``ctx.hook.rz_reward(...)``).
    :ivar run_dir: the output directory of this run.
    :ivar iteration: current RL iteration (0-based; ``-1`` before the first one).
    :ivar policy_version: number of policy updates so far; rollouts are tagged with it.
    :ivar policy: the :class:`reasonzoo.policy.Policy` (set after ``rz_build_policy``).
    :ivar engine: the rollout engine (set after ``rz_build_engine``).
    :ivar optimizer: the one optimizer (set before ``rz_run_start``): the policy's param group
        (``name`` ``"policy"``) and those plugins add with ``rz_trainable_parameters`` (a critic).
    :ivar state: scratch space shared across hooks within one run, keyed by plugin.
    :ivar data_parallel: the trainer's :class:`reasonzoo.distributed.DataParallel` place (rank,
        world size) when it has several ranks, else ``None``. Only rank 0 runs the loop's other
        hooks; followers run the update-side ones (:mod:`reasonzoo.distributed`).
    :ivar placement: where the run's parts execute (:class:`reasonzoo.launch.Placement`, from
        ``rz_place``); ``None`` outside a training run (``reasonzoo eval``).
    """

    cfg: DictConfig
    hook: Any
    run_dir: Path
    iteration: int = -1
    policy_version: int = 0
    policy: Any = None
    engine: Any = None
    optimizer: torch.optim.Optimizer | None = None
    state: dict[str, Any] = field(default_factory=dict)
    data_parallel: Any = None
    placement: Any = None

    def reward(self, groups):
        """The run's rewards of ``groups``: one list of :class:`reasonzoo.types.RewardResult` per
        group, in order. On the placement's reward workers when it has them (``launcher=ray
        launcher.reward_workers=M``), else ``rz_reward`` in this process. Rollout schedulers,
        evaluation and searches that score mid-iteration call this rather than the hook."""
        placed = getattr(self.placement, "reward", None)
        out = placed(self, groups) if placed is not None else None
        return self.hook.rz_reward(ctx=self, groups=groups) if out is None else out

    @property
    def seed(self) -> int:
        """The RL seed (``seed``): sampling, rollouts and every per-iteration stream."""
        return int(self.cfg.seed)

    @property
    def data_seed(self) -> int:
        """``data_seed``: the task's problems and train / held-out split, shared by all RL seeds."""
        return int(self.cfg.get("data_seed", self.cfg.seed))

    @property
    def warmup_seed(self) -> int:
        """``warmup_seed``: the model's initialisation and the warm-up, shared by all RL seeds."""
        return int(self.cfg.get("warmup_seed", self.cfg.seed))

    def rng(self, stream: str) -> random.Random:
        """A Python RNG for this iteration and stream; a function of (seed, iteration, stream),
        so a resumed run draws exactly what the uninterrupted run would have."""
        return random.Random(derive_seed(self.seed, "py", stream, self.iteration))

    def generator(self, stream: str) -> torch.Generator:
        """A torch CPU generator for this iteration and stream (see :meth:`rng`)."""
        g = torch.Generator()
        g.manual_seed(derive_seed(self.seed, "torch", stream, self.iteration))
        return g
