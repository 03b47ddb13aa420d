"""The trainer on several ranks: data-parallel updates over ``torch.distributed``.

A run's trainer has ``R`` ranks. Rank 0 is the process that runs the loop (``reasonzoo-train``):
it samples, generates, rewards, logs, evaluates and checkpoints, as a single-process run does.
Ranks 1 .. R-1 are *followers* (:func:`follower_loop`): each rebuilds the plugins from the same
composed config, builds the policy and the optimizer, and then does what rank 0 broadcasts to it:

* ``sync``: take every trainable parameter (every optimizer param group: the policy's and a
  critic's) from rank 0 (``torch.distributed.broadcast``), and on resume the optimizer's state
  and the update-side plugins' checkpoint state (``rz_load_state``); then, under
  ``launcher.strategy=fsdp2``, shard the policy (:meth:`DataParallel.shard`);
* ``optimizer_state`` (fsdp2 only): join the gathering of the optimizer's shards into the full
  state dict rank 0 writes into a checkpoint (:meth:`Leader.optimizer_state`);
* ``iteration``: replay ``rz_iteration_start``, run :func:`reasonzoo.trainer.update` on the same
  batch, replay ``rz_iteration_end`` — on the *update-side* plugins only (those implementing
  ``rz_loss``, ``rz_prepare_update`` or ``rz_trainable_parameters``), so a follower never opens a
  logger's run or moves a sampler;
* ``stop``.

The update (:func:`reasonzoo.trainer.update`) splits each minibatch into ``P`` length-sorted
micro-batches, ``P`` = ``train.microbatches`` rounded up to a multiple of ``R``; rank ``r`` runs
micro-batches ``r, r + R, ...``. Every rank back-propagates ``loss_i * d_i`` (``d_i`` the units
its loss is a mean over, :class:`reasonzoo.types.LossOutput`), then the gradients and ``Σ d_i``
are summed over the ranks (:meth:`DataParallel.all_reduce_grads`, one ``all_reduce`` of all
gradients flattened) and divided by ``Σ d_i``: the gradient of the minibatch mean, the same as
one process computing all ``P`` micro-batches (by linearity; the ``rz_loss`` contract), up to
the order of the floating-point sums (tests/test_distributed.py states the tolerance). Every rank
then clips and steps the same gradient, so the weights stay equal without being sent again.

Why not ``torch.nn.parallel.DistributedDataParallel``'s module wrapper: its reducer only fires
for forwards that run through the wrapper, in lockstep on every rank. Here the losses call the
lean forward (``Policy.token_logprobs``) and possibly a critic's, and ranks may hold different
numbers of micro-batches (a minibatch of 5 rows on 2 ranks). The reduction is the one DDP does
(a sum over ranks of the gradients, divided), issued once per minibatch after its backward
passes. That is ``launcher.strategy=ddp`` (the default). ``launcher.strategy=fsdp2`` shards the
policy's parameters, gradients and optimizer state over the ranks with FSDP2 under the same
contract (one all-gather and one reduce-scatter per minibatch, the one-process update within 1e-6;
rank 0 keeps a full copy for the engine, evaluation and checkpoints): :mod:`reasonzoo.fsdp`.

Rank 0 and the followers exchange commands with ``broadcast_object_list`` over a gloo group
(also when the gradients go over nccl on GPUs).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Sequence

import torch

log = logging.getLogger("reasonzoo")

#: Hooks of the plugins a follower runs: those that take part in the update.
UPDATE_HOOKS = ("rz_loss", "rz_prepare_update", "rz_trainable_parameters")


@dataclass
class DataParallel:
    """This process's place in the trainer's data-parallel group.

    :ivar rank: 0 .. ``world_size`` - 1; rank 0 runs the loop.
    :ivar world_size: the trainer's ranks ``R`` (>= 2; one rank is no group: ``ctx.data_parallel``
        is then ``None``).
    :ivar group: the process group of the gradient all-reduce (``None``: the default group).
    :ivar control: the gloo group rank 0's commands travel on (``None``: the default group).
    :ivar stopped: rank 0 has told the followers to stop (:meth:`Leader.stop`): they are leaving
        cleanly; otherwise (a failed run) a placement kills them.
    :ivar strategy: ``launcher.strategy``: ``ddp`` (replicated parameters) or ``fsdp2`` (the policy's
        parameters sharded, :mod:`reasonzoo.fsdp`).
    :ivar sharded: under fsdp2, this rank's :class:`reasonzoo.fsdp.Sharded` once :meth:`shard` ran
        (at :meth:`Leader.sync`); else ``None``.
    """

    rank: int
    world_size: int
    group: Any = None
    control: Any = None
    stopped: bool = False
    strategy: str = "ddp"
    sharded: Any = None

    def parts(self, n: int) -> int:
        """Micro-batches per minibatch: ``n`` (``train.microbatches``) rounded up to a multiple of
        the world size, so every rank gets a share when the minibatch has enough rows."""
        return -(-n // self.world_size) * self.world_size

    def mine(self, parts: Sequence) -> list:
        """This rank's micro-batches of ``parts``: ``rank, rank + R, ...`` (possibly none)."""
        return list(parts[self.rank :: self.world_size])

    def all_reduce_sum(self, x: float) -> float:
        """Σ over ranks of a Python float (float64 on the wire, a CPU tensor: over the gloo control
        group, also when the gradients go over nccl)."""
        t = torch.tensor([x], dtype=torch.float64)
        torch.distributed.all_reduce(t, group=self.control)
        return float(t.item())

    def all_reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the ranks, in place, with one ``all_reduce`` of
        all of them flattened (a parameter without a gradient on this rank counts as zeros and
        gets the sum; one without a gradient on every rank gets zeros). Gradients of one dtype
        per call (fp32 on CPU). Sharded parameters (``DTensor``: fsdp2, reduced by FSDP2) are
        skipped."""
        from torch.distributed.tensor import DTensor

        params = [p for p in params if p.requires_grad and not isinstance(p, DTensor)]
        if not params:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        torch.distributed.all_reduce(flat, group=self.group)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order (``all_gather_object`` on the control group)."""
        out: list = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj, group=self.control)
        return out

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank (``broadcast_object_list`` on the control group)."""
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def broadcast_params(self, params: Sequence[torch.Tensor]) -> None:
        """Rank 0's values of ``params`` on every rank, in place."""
        with torch.no_grad():
            for p in params:
                torch.distributed.broadcast(p.data, src=0, group=self.group)

    def shard(self, ctx) -> None:
        """Under fsdp2 (once, every rank, after the weights are equal): shard ``ctx.policy``'s model
        (:class:`reasonzoo.fsdp.Sharded`; rank 0 keeps its plain model as the full view) and
        replace ``ctx.optimizer`` by one over the shards, carrying its state. A no-op under ddp."""
        from .fsdp import Sharded

        if self.strategy != "fsdp2" or self.sharded is not None:
            return
        old = list(ctx.policy.model.parameters())
        self.sharded = Sharded(ctx.policy, keep_view=self.rank == 0)
        ctx.optimizer = self.sharded.shard_optimizer(ctx.optimizer, old)
        if self.rank == 0:
            held = sum(p.to_local().numel() * p.element_size() for p in self.sharded.policy.model.parameters())
            log.info("launcher.strategy=fsdp2: the policy's %d parameters are sharded over %d ranks (%.1f MB of them on "
                     "rank 0, which also keeps the full weights for the engine, evaluation and checkpoints)",
                     sum(p.numel() for p in old), self.world_size, held / 2**20)

    def optimizer_state(self, optimizer) -> dict:
        """The optimizer's state dict in the one-process format (full tensors): under fsdp2 a
        collective (:func:`reasonzoo.fsdp.full_optimizer_state`), else the local state dict."""
        from .fsdp import full_optimizer_state

        return full_optimizer_state(optimizer) if self.sharded is not None else optimizer.state_dict()


def optimizer_params(optimizer) -> list[torch.nn.Parameter]:
    """Every parameter of every param group of ``optimizer``, in order."""
    return [p for g in optimizer.param_groups for p in g["params"]]


def update_side(pm) -> list:
    """The registered plugins that take part in the update (implement one of :data:`UPDATE_HOOKS`)."""
    return [p for p in pm.get_plugins() if any(callable(getattr(p, h, None)) for h in UPDATE_HOOKS)]


def replay(pm, name: str, ctx, **kwargs) -> list:
    """Call hook ``name`` on the update-side plugins only (:func:`update_side`)."""
    keep = {id(p) for p in update_side(pm)}
    others = [p for p in pm.get_plugins() if id(p) not in keep]
    return pm.subset_hook_caller(name, remove_plugins=others)(ctx=ctx, **kwargs)


class Leader:
    """Rank 0's side of the command channel: what :func:`follower_loop` receives.

    :param dp: rank 0's :class:`DataParallel`.
    """

    def __init__(self, dp: DataParallel):
        self.dp = dp

    def _send(self, ctx, kind: str, **payload) -> None:
        self.dp.broadcast({"kind": kind, "iteration": ctx.iteration, "policy_version": ctx.policy_version, **payload})

    def sync(self, ctx, optimizer_state: dict | None = None, plugin_state: dict | None = None) -> None:
        """Followers take rank 0's trainable parameters (all optimizer groups), the engine's
        ``logprobs_match_policy`` and, on resume, the optimizer's and the update-side plugins'
        state. Called after the warm-up or the resume, before the first iteration."""
        facts = {"logprobs_match_policy": bool(getattr(ctx.engine, "logprobs_match_policy", False))}
        self._send(ctx, "sync", engine=facts, optimizer=optimizer_state, plugins=plugin_state)
        self.dp.broadcast_params(optimizer_params(ctx.optimizer))
        self.dp.shard(ctx)

    def optimizer_state(self, ctx) -> dict:
        """The optimizer's full state dict for a checkpoint; under fsdp2 the followers join the
        gathering of the shards (command ``optimizer_state``)."""
        if self.dp.sharded is not None:
            self._send(ctx, "optimizer_state")
        return self.dp.optimizer_state(ctx.optimizer)

    def iteration(self, ctx, batch, groups) -> None:
        """Followers replay ``rz_iteration_start``, join the update of ``batch`` (``None``: an
        iteration without finished groups, no update) and replay ``rz_iteration_end(groups)``.
        Rank 0 calls :func:`reasonzoo.trainer.update` itself right after."""
        self._send(ctx, "iteration", batch=batch, groups=groups)

    def stop(self, ctx) -> None:
        """Followers leave their loop (idempotent). Only on a run that ends normally: after a
        failure the ranks may wait in another collective, and the placement kills them."""
        if not self.dp.stopped:
            self.dp.stopped = True
            self._send(ctx, "stop")


def follower_loop(cfg, run_dir, dp: DataParallel) -> int:
    """A follower rank: build the plugins, policy and optimizer from ``cfg`` as rank 0 does, then
    serve rank 0's commands (see the module docstring) until ``stop``.

    :returns: the number of updates joined.
    :raises RuntimeError: a collective failed (rank 0 or another rank died).
    """
    from .config import validate
    from .context import RunContext
    from .device import build_policy
    from .registry import build_plugins, make_manager
    from .trainer import param_groups, update

    from .fsdp import strategy_of

    rc = validate(cfg)
    dp.strategy = strategy_of(cfg)
    torch.set_num_threads(rc.threads)
    torch.manual_seed(rc.seed)
    pm = make_manager(build_plugins(cfg))
    ctx = RunContext(cfg=cfg, hook=pm.hook, run_dir=run_dir, data_parallel=dp)
    ctx.policy = policy = build_policy(ctx)  # on this rank's train.device
    extra = replay(pm, "rz_trainable_parameters", ctx, policy=policy)
    ctx.optimizer = torch.optim.AdamW(param_groups(policy, extra), lr=rc.train.lr,
                                      weight_decay=rc.train.weight_decay, betas=tuple(rc.train.betas))
    updates = 0
    while True:
        cmd = dp.broadcast()
        ctx.iteration, ctx.policy_version = cmd["iteration"], cmd["policy_version"]
        if cmd["kind"] == "stop":
            return updates
        if cmd["kind"] == "sync":
            ctx.engine = SimpleNamespace(**cmd["engine"])
            if cmd["optimizer"] is not None:
                ctx.optimizer.load_state_dict(cmd["optimizer"])
            if cmd["plugins"] is not None:
                replay(pm, "rz_load_state", ctx, state=cmd["plugins"])
            dp.broadcast_params(optimizer_params(ctx.optimizer))
            dp.shard(ctx)
            replay(pm, "rz_run_start", ctx)
        elif cmd["kind"] == "optimizer_state":
            dp.optimizer_state(ctx.optimizer)
        elif cmd["kind"] == "iteration":
            replay(pm, "rz_iteration_start", ctx)
            if cmd["batch"] is not None:
                update(ctx, cmd["batch"], rc)
                updates += 1
            replay(pm, "rz_iteration_end", ctx, groups=cmd["groups"])
        else:
            raise RuntimeError(f"follower rank {dp.rank}: unknown command {cmd['kind']!r} from rank 0")
