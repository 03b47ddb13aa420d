"""``launcher.strategy=fsdp2``: the policy's parameters sharded over the trainer's ranks with FSDP2.

FSDP2 (``torch.distributed.fsdp.fully_shard``; Zhao et al., "PyTorch FSDP", VLDB 2023, and the
per-parameter ``DTensor`` sharding of torch >= 2.4) replaces every parameter of a module by a
``DTensor`` sharded on dim 0 over a device mesh of the ranks, gathers the full parameters
(all-gather) before the module's forward and reduce-scatters the gradients after its backward. Its
hooks fire on *module calls*. The lean training forward (:func:`reasonzoo.fasttrain.token_logprobs`,
behind ``Policy.token_logprobs``) reads the weights without calling any module, so per-layer units
would never be gathered. The unit here is therefore one module around the whole policy model
(:class:`_Unit`): its forward runs ``Policy.token_logprobs`` or ``Policy.logprobs_and_hidden`` (the
HF forward with hidden states, ``loss/ppo`` with ``critic: head``) on the gathered weights. The
training :class:`reasonzoo.policy.Policy` (:attr:`Sharded.policy`) routes both methods through it.

What is sharded when (``R`` ranks, ``P`` the policy's parameter count):

- between minibatches (the whole rollout, reward and logging time of an iteration): parameters,
  gradients and AdamW's two moments, ``P / R`` each per rank (rank 0 also keeps the full
  :attr:`Sharded.view`, below);
- during one minibatch: the full parameters (gathered once at its start, :meth:`Sharded.begin`) and
  the full gradients of this rank's micro-batches, accumulated without communication; at its end
  one reduce-scatter leaves each rank ``1 / R`` of the summed gradient (:meth:`Sharded.end`) and the
  full parameters are freed. So the peak holds full parameters and gradients, as DDP does, and the
  optimizer state, its step and the time between minibatches hold ``1 / R``.

Exactness: the gradient contract is DDP's (:mod:`reasonzoo.distributed`): every rank
back-propagates ``loss_i * d_i`` over its own micro-batches (possibly none), the gradients are
summed over the ranks (``set_gradient_divide_factor(1)``: FSDP2 would otherwise average) and divided
by ``Σ d_i``. Ranks hold different numbers of micro-batches, and FSDP2 issues a reduce-scatter after
every backward it syncs, so gradient sync is off during the micro-batches
(``set_requires_gradient_sync(False)``, parameters kept gathered) and each minibatch closes with one
backward of ``0 * Σ logp`` of a two-token row on every rank (:meth:`Sharded.end`), which adds
exact zeros and makes FSDP2 reduce-scatter the accumulated gradients: one all-gather and one
reduce-scatter per minibatch on every rank, whatever its share. Plugin parameter groups
(``rz_trainable_parameters``: a critic's head) stay replicated and are all-reduced as under DDP.

Rank 0's full weights (:attr:`Sharded.view`): the loop's other users of ``ctx.policy`` (the engine,
``engine=torch`` decoding with the trainer's live weights, evaluation, checkpoints, the final save,
a distiller, Ray weight sync) read the plain model rank 0 built. It is refreshed in place after
every update (:meth:`Sharded.refresh`: one all-gather that every rank joins), so those users see
what a one-rank run has. Checkpoints hold full weights and the optimizer state in the one-process
format (:func:`full_optimizer_state`, a collective), so a run resumes on any world size and either
strategy.

Between minibatches the training model's state dict is always its shards: a forward without
gradient outside a minibatch reshards after itself, and a full plain tensor loaded into a sharded
parameter becomes this rank's shard (:meth:`Sharded._shard_loaded`). So a loss with ``kl_coef > 0``,
which swaps its frozen reference (full on rank 0 and after a resume, shards on followers that
captured it) into ``ctx.policy.model`` for one forward, runs unchanged.

Refused (:func:`check_strategy`): ``loss.critic=model`` (a copy of the policy trunk initialised
from ``ctx.policy.model``'s state dict on every rank: sharded on the followers).
"""
from __future__ import annotations

import copy
import functools
from dataclasses import replace
from typing import Any, Sequence

import torch

STRATEGIES = ("ddp", "fsdp2")


def strategy_of(cfg) -> str:
    """``launcher.strategy`` of the composed config (``ddp`` when the launcher has no such key)."""
    launcher = cfg.get("launcher") if hasattr(cfg, "get") else None
    return str(launcher.get("strategy", "ddp")) if launcher is not None else "ddp"


def check_strategy(cfg) -> None:
    """Refuse ``launcher.strategy`` values and the combinations fsdp2 cannot run exactly.

    :raises PluginError: one line naming the keys.
    """
    from .registry import PluginError

    strategy = strategy_of(cfg)
    if strategy not in STRATEGIES:
        raise PluginError(f"launcher.strategy={strategy!r}: allowed values are {', '.join(STRATEGIES)}")
    if strategy != "fsdp2":
        return
    loss = cfg.get("loss") or {}
    if loss.get("critic") == "model":
        raise PluginError("launcher.strategy=fsdp2 with loss.critic=model: the value model copies the policy trunk on every "
                          "rank, which fsdp2 shards; use launcher.strategy=ddp or loss.critic=head")


class _Unit(torch.nn.Module):
    """The one FSDP unit: the policy's model, called as ``unit(method, input_ids, attention_mask)``
    to run ``Policy.<method>`` (``token_logprobs`` or ``logprobs_and_hidden``) on gathered weights."""

    def __init__(self, policy):
        super().__init__()
        self.model = policy.model
        self.__dict__["policy"] = policy  # not a submodule: a Policy is not an nn.Module

    def forward(self, method: str, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        device = input_ids.device
        weights = next(self.model.parameters()).device
        out = getattr(type(self.policy), method)(self.policy, input_ids.to(weights), attention_mask.to(weights))
        return out.to(device) if isinstance(out, torch.Tensor) else tuple(x.to(device) for x in out)


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


class Sharded:
    """This rank's sharded policy: the FSDP2 unit, the training policy and, on rank 0, the full view.

    The mesh is the default process group's ranks (every trainer rank) on the policy's device
    type (``train.device``: ``cpu`` with gloo, ``cuda`` with nccl); no other group is created.

    :param policy: the :class:`reasonzoo.policy.Policy` every rank built (equal weights: after
        :meth:`reasonzoo.distributed.Leader.sync`).
    :param keep_view: keep ``policy.model`` as a plain full copy (rank 0) and shard a copy; else
        (followers) shard ``policy.model`` itself.
    :ivar policy: the training policy (its model's parameters sharded DTensors; its
        ``token_logprobs`` and ``logprobs_and_hidden`` run through the unit); the losses get it
        as ``ctx.policy`` inside :func:`reasonzoo.trainer.update`.
    :ivar view: rank 0's plain full model (``policy.model`` as built), or ``None``.
    """

    def __init__(self, policy, keep_view: bool = False):
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.fsdp import fully_shard

        self.view = policy.model if keep_view else None
        model = copy.deepcopy(policy.model) if keep_view else policy.model
        self.policy = replace(policy, model=model)
        self.mesh = DeviceMesh.from_group(torch.distributed.group.WORLD, next(model.parameters()).device.type)
        self.unit = _Unit(self.policy)
        fully_shard(self.unit, mesh=self.mesh)
        self.unit.set_gradient_divide_factor(1.0)  # a sum over ranks; update() divides by Σ d_i
        self.unit.set_force_sum_reduction_for_comms(True)  # ReduceOp.SUM (gloo has no PREMUL_SUM), no division by 1
        self.policy.token_logprobs = functools.partial(self._call, "token_logprobs")
        self.policy.logprobs_and_hidden = functools.partial(self._call, "logprobs_and_hidden")
        model.register_load_state_dict_pre_hook(self._shard_loaded)
        self._pad = int(policy.pad_token_id)
        self._minibatch = False  # between begin() and end(): parameters stay gathered

    def _call(self, method: str, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """``Policy.<method>`` through the unit. A forward without gradient outside a minibatch
        (``rz_prepare_update``'s π_old, a reference's log-probs) leaves the parameters sharded
        again, so between minibatches the model's state dict is always the shards."""
        out = self.unit(method, input_ids, attention_mask)
        if not self._minibatch and not torch.is_grad_enabled():
            self.unit.reshard()
        return out

    def _shard_loaded(self, module, state_dict, prefix, *args) -> None:
        """``load_state_dict`` pre-hook of the training model: a full plain tensor loaded into a
        sharded parameter becomes this rank's shard of it (no communication), so a plugin that
        swaps full weights in and out (``loss.kl_coef > 0``: the frozen reference captured from
        rank 0's full weights) works on the shards. Shards (DTensors) load as they are."""
        from torch.distributed.tensor import distribute_tensor

        own = dict(module.named_parameters(remove_duplicate=False))  # tied weights under each name
        for key, value in list(state_dict.items()):
            p = own.get(key[len(prefix):]) if key.startswith(prefix) else None
            if p is not None and _is_dtensor(p) and torch.is_tensor(value) and not _is_dtensor(value):
                state_dict[key] = distribute_tensor(value.to(p.device), p.device_mesh, p.placements, src_data_rank=None)

    def shard_optimizer(self, optimizer, old: Sequence[torch.nn.Parameter]):
        """A new optimizer of ``optimizer``'s class and groups (their hyperparameters), with the ``policy`` group's
        parameters ``old`` (the plain model's, in order) replaced by the sharded ones, and their state
        (loaded before sharding: a resume) cut to this rank's shards; other groups' parameters and
        state kept as they are.

        :raises RuntimeError: the ``policy`` group is not ``old``.
        """
        from torch.distributed.tensor import distribute_tensor

        new = list(self.policy.model.parameters())
        if len(new) != len(old):
            raise RuntimeError(f"fsdp2: the sharded model has {len(new)} parameters, the optimizer's policy group {len(old)}")
        swap = {id(o): n for o, n in zip(old, new)}
        groups = []
        for g in optimizer.param_groups:
            params = [swap.get(id(p), p) for p in g["params"]]
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": params})
        out = type(optimizer)(groups)  # every group carries its hyperparameters
        for o in (p for g in optimizer.param_groups for p in g["params"]):
            state = optimizer.state.get(o)
            if not state:
                continue
            n = swap.get(id(o), o)
            out.state[n] = {k: (distribute_tensor(v.to(n.device), n.device_mesh, n.placements, src_data_rank=None)
                                if _is_dtensor(n) and torch.is_tensor(v) and v.shape == n.shape else v)
                            for k, v in state.items()}
        return out

    def reshard(self) -> None:
        """Free the gathered parameters (a local operation)."""
        self.unit.reshard()

    def begin(self) -> None:
        """Start a minibatch: gather the parameters (every rank: one all-gather) and keep them and
        the micro-batches' gradients here without communication until :meth:`end`."""
        self.unit.set_requires_gradient_sync(False)
        self.unit.set_reshard_after_backward(False)
        self.unit.unshard()
        self._minibatch = True

    def end(self) -> None:
        """End a minibatch: every rank back-propagates ``0 * Σ logp`` of one two-token row with
        gradient sync on, so FSDP2 reduce-scatters the gradients accumulated since :meth:`begin`
        (summed over the ranks, plus exact zeros) into this rank's shards and frees the full
        parameters."""
        self.unit.set_requires_gradient_sync(True)
        self.unit.set_reshard_after_backward(True)
        ids = torch.full((1, 2), self._pad, dtype=torch.long)
        logp = self.unit("token_logprobs", ids, torch.ones_like(ids))
        (logp.sum() * 0.0).backward()
        self._minibatch = False

    @torch.no_grad()
    def refresh(self) -> None:
        """Rank 0's :attr:`view` takes the updated weights (every rank joins one all-gather; the
        view's parameter objects stay the same, so an engine holding them stays valid)."""
        self.unit.unshard()
        try:
            if self.view is not None:
                full = dict(self.policy.model.named_parameters())
                for name, p in self.view.named_parameters():
                    p.copy_(full[name].to(p.device))
        finally:
            self.unit.reshard()


def full_optimizer_state(optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded state tensor gathered to its full value: the
    one-process format checkpoints hold (a collective: every rank calls it, in the same order)."""
    sd = optimizer.state_dict()
    state = {}
    for i in sorted(sd["state"]):
        state[i] = {k: (v.full_tensor() if _is_dtensor(v) else v) for k, v in sd["state"][i].items()}
    return {**sd, "state": state}


def clip_grad_norm(params: Sequence[torch.nn.Parameter], max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_`` over parameters whose gradients may be sharded DTensors:
    the norm of the full gradient (the shards' squared norms summed over the ranks), then every
    gradient scaled by ``min(1, max_norm / (norm + 1e-6))``. :returns: the total norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not any(_is_dtensor(g) for g in grads):
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    norm = torch.nn.utils.get_total_norm(grads, 2.0)
    if _is_dtensor(norm):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, norm)
    return float(norm)
