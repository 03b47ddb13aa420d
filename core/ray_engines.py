"""Rollout engines and reward workers in Ray actors (issue 12, "Placement" and "Faults").

Each actor (:class:`PluginActor`) is a process of its own that rebuilds the run's plugin manager
from the same composed config (``build_plugins`` + ``make_manager``: entry-point plugins of
third-party packages included, so a plugin written for ``launcher=local`` works unchanged).
An :class:`EngineActor` builds the policy (``rz_build_policy``) and the engine
(``rz_build_engine``) and talks to the engine only through the Engine protocol, so engine/torch
and engine/vllm both fit (vLLM runs in the actor's own process, with its uniprocess executor and
the run's torch threads; tests/test_ray_vllm.py); :class:`RayEngineGroup` is what the trainer
holds instead of a local engine. A :class:`RewardActor` scores chunks of rollout groups with the
run's ``rz_reward`` (the reward's own worker processes, the code sandbox pool among them, then run
where the actor runs); :class:`RayRewardGroup` is what ``launcher.reward_workers > 0`` calls
instead of the hook.
Both groups are an :class:`ActorPool`: the fan-out, restarts and resends below are written once.

Weights and versions (``weight_sync=object_store``, the default):
:meth:`RayEngineGroup.sync_weights` puts the trainer's ``state_dict`` into Ray's object store once
(``ray.put``, as numpy bytes: :func:`pack_state`), tagged with ``ctx.policy_version``, and pushes
the reference to every actor, which loads it into its policy and calls its engine's
``sync_weights()``. Every generate call carries the latest reference too: an actor whose loaded
weights are not those (a restarted actor, its state lost) loads them first, so it catches up by
itself. Every :class:`~reasonzoo.types.Generation` records the version the actor served
(``Generation.policy_version``).

``weight_sync=broadcast``: the trainer process (rank 0) and the N engine actors (ranks 1..N) form
a ``torch.distributed`` group of their own (:class:`WeightGroup`: its own ``TCPStore`` address and
backend object, not ``init_process_group``, so the trainer ranks' default group is untouched;
gloo, or nccl when the actors have GPUs), and ``sync_weights`` broadcasts the version (an int64
tensor) and then the weights, one flat buffer per dtype (:func:`flatten_state`), into every
actor's policy. A restarted actor does not rejoin: a gloo or NCCL group cannot take a new member,
and re-forming it would need every actor to stop and meet again. Instead, when an actor is seen
restarted or a broadcast fails, the group falls back to the object store for the rest of its life
(one warning; ``ray/weight_sync_fallbacks`` = 1): the last weights broadcast (kept as the flat
snapshot, one model's worth of memory) go to the object store and every call carries their
reference from then on, so the restarted actor catches up as above. A generate call that reaches a
restarted actor before the group has noticed is answered ``stale`` and resent after the fallback.

Randomness: with one actor the driver generator's state travels to the actor and the final
state comes back, so the tokens are exactly those of the local engine with the same generator.
With N > 1 actors the requests are cut into N contiguous near-equal chunks and one seed per
chunk is drawn from the generator (``torch.randint``, 63 bits): same generator state, same
result, but other random streams than the local engine (a row's tokens depend on its chunk's
seed and its place in the chunk), so ``launcher=ray`` with N > 1 actors samples other tokens
than ``launcher=local`` for the same seed. Rewards have no randomness of their own: M reward
actors give the local rewards.

Faults: an actor that dies (``ray.kill``, ``os._exit``, a crash, its node lost) is restarted by
Ray (``max_restarts``). The call it was running, or the next one sent to it, fails with a
``RayActorError``; the group waits until the restarted actor answers (calls sent while Ray
restarts it fail at once, so they are not resent blindly) and resends that chunk with the same
arguments (requests, seed or generator state, weights reference; or groups), up to
``max_task_retries`` times per call. Generation and rewards are pure functions of those
arguments, so the resent chunk gives what the lost call would have given, and only the result
that arrived is used: nothing is lost or counted twice. The retries are the group's own rather
than Ray's ``max_task_retries`` option (left at 0) so that the group counts them, keeps the other
chunks running meanwhile, and names the actor when they run out (:class:`EngineActorError`,
:class:`RewardActorError`: the actor's index, pid, node and the cause). Errors raised by the
plugin itself (a bad stop string, a shape mismatch when loading weights) are not retried: they
come back as raised, with their own type. ``fault_counts()`` gives ``ray/<kind>_restarts``
(restarts seen: an actor answering from a new process) and ``ray/<kind>_retries`` (calls
resent), cumulative over the group's life, ``<kind>`` ``engine`` or ``reward``.

One caller at a time: a group is not thread-safe (the asynchronous trainer calls ``generate``
and the rewards from its rollout thread and ``sync_weights`` only once that rollout has ended).

Ray stays optional: this module imports it only inside functions.
"""
from __future__ import annotations

import logging
import math
import os
import re
import socket
import time
import uuid
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .types import Generation, GenerationRequest, SamplingParams

__all__ = ["ActorGroupError", "ActorPool", "EngineActor", "EngineActorError", "PluginActor", "RayEngineGroup", "RayRewardGroup",
           "RewardActor", "RewardActorError", "WeightGroup", "flatten_state", "pack_state", "remote_engine_actor",
           "remote_reward_actor", "state_layout", "unflatten_state", "unpack_state", "weight_group"]

log = logging.getLogger("reasonzoo")

RAY_MISSING = "launcher=ray needs Ray: pip install -e '.[ray]'"


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError(RAY_MISSING) from exc
    return ray


class ActorGroupError(RuntimeError):
    """An actor of an :class:`ActorPool` failed to start, or died and its call was resent
    ``max_task_retries`` times already (or Ray will not restart it again)."""


class EngineActorError(ActorGroupError):
    """:class:`ActorGroupError` of an engine actor (:class:`RayEngineGroup`)."""


class RewardActorError(ActorGroupError):
    """:class:`ActorGroupError` of a reward actor (:class:`RayRewardGroup`)."""


class PluginActor:
    """What every actor of a run shares: the run's plugins rebuilt in this process from the same
    composed config (``build_plugins`` + ``make_manager``: entry-point plugins of third-party
    packages included), a :class:`~reasonzoo.context.RunContext` over them, and :meth:`where`.

    :param cfg: the composed run config as a plain container (resolved; no ``hydra`` node).
    :param run_dir: this actor's directory (plugins may write there); one per actor.
    :param index: the actor's index in its group (for messages).
    :raises PluginError: the config does not validate, or a plugin is not installed where the
        actor runs.
    """

    def __init__(self, cfg: Mapping[str, Any], run_dir: str, index: int = 0):
        from omegaconf import OmegaConf

        from .config import validate
        from .context import RunContext
        from .registry import build_plugins, make_manager

        conf = OmegaConf.create(dict(cfg))
        rc = validate(conf)
        torch.set_num_threads(rc.threads)  # as train() does
        self.plugins = build_plugins(conf)
        self.pm = make_manager(self.plugins)
        self.ctx = RunContext(cfg=conf, hook=self.pm.hook, run_dir=Path(run_dir))
        torch.manual_seed(rc.seed)
        self.index = index
        self.incarnation = uuid.uuid4().hex  # a restarted actor gets a new one: the group counts restarts with it

    def where(self) -> dict[str, Any]:
        """This process: ``index`` (in its group), ``incarnation`` (new on every restart), ``pid``,
        ``node`` (Ray node id), ``ip`` (the node's), ``host``, ``plugins`` (``{"<hook point>/<name>":
        "<module>"}``: what the rebuilt manager holds)."""
        return {"index": self.index, "incarnation": self.incarnation, "pid": os.getpid(),
                "node": _ray().get_runtime_context().get_node_id(), "ip": _ray().util.get_node_ip_address(),
                "host": socket.gethostname(), "plugins": {k: type(v).__module__ for k, v in self.plugins.items()}}


class EngineActor(PluginActor):
    """One rollout engine in its own process (the class :func:`remote_engine_actor` makes a Ray
    actor of): :class:`PluginActor`, then the policy (``rz_build_policy``) and the engine
    (``rz_build_engine``), used only through the Engine protocol.

    :param cfg: as :class:`PluginActor`.
    :param run_dir: as :class:`PluginActor` (engine/vllm saves the initial weights under
        ``<run_dir>/vllm``).
    :param index: as :class:`PluginActor`.
    :raises PluginError: as :class:`PluginActor`.
    """

    def __init__(self, cfg: Mapping[str, Any], run_dir: str, index: int = 0):
        super().__init__(cfg, run_dir, index)
        hook = self.ctx.hook
        self.ctx.policy = hook.rz_build_policy(ctx=self.ctx)
        self.ctx.engine = self.engine = hook.rz_build_engine(ctx=self.ctx, policy=self.ctx.policy)
        if getattr(self.engine, "runs_policy_module", False) and torch.cuda.is_available():
            # an actor given a GPU (launcher.engine_gpus > 0; Ray hides GPUs from the others) decodes
            # there; engines that load the weights themselves (engine/vllm) keep the policy on the CPU
            self.ctx.policy.model.to("cuda")
        self.version: int | None = None  #: the policy version of the loaded weights
        self.weights_id: str | None = None  #: which weights are loaded (object-store id, or "broadcast:<version>")
        self.weight_group = None  #: this actor's place in the broadcast group (weight_sync=broadcast)

    def where(self) -> dict[str, Any]:
        """:meth:`PluginActor.where` and ``logprobs_match_policy`` (the engine's declaration)."""
        return {**super().where(), "logprobs_match_policy": bool(getattr(self.engine, "logprobs_match_policy", False))}

    def load_weights(self, version: int, weights: Sequence[Any]) -> dict[str, Any]:
        """Load the trainer's ``state_dict`` into this actor's policy and call the engine's
        ``sync_weights()``; nothing when these weights are loaded already.

        :param version: the policy version the weights belong to.
        :param weights: a one-element list holding the object-store reference of the state_dict
            (wrapped so that Ray does not fetch it for calls that do not need it), or the token
            ``"broadcast:<version>"`` of weights received by :meth:`receive_weights`.
        :returns: :meth:`where`, plus ``stale: True`` when ``weights`` is a broadcast token this
            actor lacks (it was restarted after the broadcast): nothing loaded then.
        """
        ref = weights[0]
        if isinstance(ref, str):  # weight_sync=broadcast: only the broadcast brings them
            if ref != self.weights_id:
                return {**self.where(), "stale": True}
        elif ref.hex() != self.weights_id:
            self.ctx.policy.model.load_state_dict(unpack_state(_ray().get(ref)))
            self.engine.sync_weights()
            self.weights_id = ref.hex()
        self.version = self.ctx.policy_version = int(version)
        return self.where()

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams, seed_or_state: int | torch.Tensor,
                 version: int, weights: Sequence[Any]) -> dict[str, Any]:
        """The engine's generations for ``requests``, each tagged with the policy version served.

        :param seed_or_state: an int seeds a fresh generator; a ``torch.ByteTensor`` is a generator
            state (``torch.Generator.get_state()``), whose final state is returned.
        :param version: the policy version of ``weights``.
        :param weights: as for :meth:`load_weights`; loaded first when other weights are loaded
            (a restarted actor catches up here).
        :returns: ``{"generations": list[Generation], "rng_state": ByteTensor | None, **where()}``,
            or :meth:`load_weights`'s ``stale`` answer (nothing generated).
        """
        loaded = self.load_weights(version, weights)
        if loaded.get("stale"):
            return loaded
        gen = torch.Generator()
        if isinstance(seed_or_state, torch.Tensor):
            gen.set_state(seed_or_state)
        else:
            gen.manual_seed(int(seed_or_state))
        out = self.engine.generate(list(requests), params, gen)
        return {"generations": [replace(g, policy_version=self.version) for g in out],
                "rng_state": gen.get_state() if isinstance(seed_or_state, torch.Tensor) else None, **self.where()}

    def join_weight_group(self, host: str, port: int, rank: int, world: int, backend: str, timeout_s: float
                          ) -> dict[str, Any]:
        """Join the broadcast group of ``world`` processes (rank 0: the trainer) as ``rank``
        (:func:`weight_group`). :returns: :meth:`where`."""
        self.weight_group = weight_group(backend, host, port, rank, world, timeout_s)
        return self.where()

    def receive_weights(self, version: int, layout: Sequence[tuple[torch.dtype, Sequence[tuple[str, tuple[int, ...]]]]]
                        ) -> dict[str, Any]:
        """Receive the weights broadcast by rank 0 (:meth:`RayEngineGroup.sync_weights` under
        ``weight_sync=broadcast``): the version first (an int64 tensor), then one flat buffer per
        dtype in ``layout`` order (:func:`flatten_state`), copied into the policy; then the engine's
        ``sync_weights()``.

        :param version: the version rank 0 says it sends; the broadcast one must equal it.
        :param layout: :func:`flatten_state`'s layout of the trainer's state_dict.
        :returns: :meth:`where`.
        :raises RuntimeError: this actor is in no broadcast group (restarted since it joined), or
            the version received is not ``version``.
        :raises ValueError: ``layout`` is not this policy's state_dict (names, shapes, dtypes).
        """
        if self.weight_group is None:
            raise RuntimeError(f"engine actor {self.index} is in no weight broadcast group (restarted since it joined)")
        state = self.ctx.policy.model.state_dict()
        if [(d, [(n, tuple(s)) for n, s in e]) for d, e in layout] != state_layout(state):
            raise ValueError(f"engine actor {self.index}: the broadcast weights' layout is not this policy's state_dict")
        device = _device(self.weight_group.backend)
        got = torch.zeros(1, dtype=torch.int64, device=device)
        self.weight_group.broadcast(got)
        if int(got) != int(version):
            raise RuntimeError(f"engine actor {self.index}: broadcast version {int(got)}, expected {version}")
        with torch.no_grad():
            for dtype, entries in layout:
                buf = torch.empty(sum(math.prod(s) for _, s in entries), dtype=dtype, device=device)
                self.weight_group.broadcast(buf)
                at = 0
                for name, shape in entries:
                    n = math.prod(shape)
                    state[name].copy_(buf[at:at + n].view(shape))
                    at += n
        self.engine.sync_weights()
        self.weights_id = f"broadcast:{int(version)}"
        self.version = self.ctx.policy_version = int(version)
        return self.where()

    def close(self) -> None:
        """Close the engine when it has a ``close()`` (engine/vllm frees its memory)."""
        self.weight_group = None
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


class RewardActor(PluginActor):
    """One reward worker in its own process (the class :func:`remote_reward_actor` makes a Ray
    actor of): :class:`PluginActor`; scores chunks of groups with the run's ``rz_reward`` hook, so
    a reward's own worker processes (``reasonzoo.rewards.WorkerPool``, the code sandbox pool) run
    where this actor runs. Its ``ctx`` has no policy and no engine; ``ctx.iteration`` and
    ``ctx.policy_version`` are the trainer's at the call. Of the run's hooks only ``rz_reward``
    runs here (and, at :meth:`close`, the scoring plugins' ``rz_run_end``): a reward plugin must
    set itself up in its constructor or lazily on its first call, as every built-in one does.

    :param cfg: as :class:`PluginActor`.
    :param run_dir: as :class:`PluginActor`.
    :param index: as :class:`PluginActor`.
    :raises PluginError: as :class:`PluginActor`.
    """

    def reward(self, groups: Sequence[Any], iteration: int, policy_version: int) -> dict[str, Any]:
        """``rz_reward`` on ``groups`` (unscored :class:`~reasonzoo.types.RolloutGroup`).

        :returns: ``{"rewards": list[list[RewardResult]] (one list per group), **where()}``.
        :raises RuntimeError: the hook answered no list per group (no reward plugin active).
        """
        self.ctx.iteration, self.ctx.policy_version = int(iteration), int(policy_version)
        rewards = self.ctx.hook.rz_reward(ctx=self.ctx, groups=list(groups))
        if rewards is None or len(rewards) != len(groups):
            raise RuntimeError(f"reward actor {self.index}: rz_reward gave {None if rewards is None else len(rewards)} "
                               f"lists for {len(groups)} groups")
        return {"rewards": [list(r) for r in rewards], **self.where()}

    def close(self) -> None:
        """``rz_run_end`` of the plugins that score (they stop their worker processes there); the
        run's other plugins (loggers, ...) are not told: the run does not end in this actor."""
        scorers = {impl.plugin for impl in self.pm.hook.rz_reward.get_hookimpls()}
        others = [p for p in self.pm.get_plugins() if p not in scorers]
        self.pm.subset_hook_caller("rz_run_end", remove_plugins=others)(ctx=self.ctx, summary={})


_REMOTE: dict[type, Any] = {}


def _remote(cls):
    if cls not in _REMOTE:
        _REMOTE[cls] = _ray().remote(cls)
    return _REMOTE[cls]


def remote_engine_actor():
    """``ray.remote(EngineActor)``, made once per process (Ray imported here, not at import)."""
    return _remote(EngineActor)


def remote_reward_actor():
    """``ray.remote(RewardActor)``, made once per process."""
    return _remote(RewardActor)


def pack_state(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.dtype, tuple[int, ...], Any]]:
    """A ``state_dict`` as ``{name: (dtype, shape, bytes as a uint8 numpy array)}`` (CPU). Ray
    stores numpy arrays out of band and maps them read-only into a reader on the same node without
    a copy; torch tensors go through pickle and are copied on both sides (100 MB: ~0.2 s to put,
    ~0.05-0.2 s to get in another process, against ~0.02 s and ~0.3 ms as numpy, on this 2-core
    box). Bytes rather than typed arrays: numpy has no bfloat16."""
    return {k: (v.dtype, tuple(v.shape), v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            for k, v in state.items()}


def unpack_state(packed: Mapping[str, tuple[torch.dtype, tuple[int, ...], Any]]) -> dict[str, torch.Tensor]:
    """The tensors of :func:`pack_state`, sharing the arrays' (read-only) memory: for
    ``load_state_dict``, which copies them into the model."""
    import warnings

    with warnings.catch_warnings():  # "The given NumPy array is not writable": only read, by the copy
        warnings.simplefilter("ignore", UserWarning)
        return {k: torch.from_numpy(a).view(dtype).reshape(shape) for k, (dtype, shape, a) in packed.items()}


def flatten_state(state: Mapping[str, torch.Tensor], device: torch.device | str = "cpu"
                  ) -> tuple[list[tuple[torch.dtype, list[tuple[str, tuple[int, ...]]]]], list[torch.Tensor]]:
    """A ``state_dict`` as one flat buffer per dtype (a copy, on ``device``), for a broadcast of
    a few large tensors instead of one per parameter.

    :returns: ``(layout, buffers)``: ``layout[j] = (dtype, [(name, shape), ...])`` in state_dict
        order within a dtype, dtypes in order of first appearance; ``buffers[j]`` the 1-d
        concatenation of those tensors (``numel`` = the sum of the shapes' products).
    """
    layout = state_layout(state)
    buffers = [torch.cat([state[n].detach().reshape(-1) for n, _ in entries]).to(device) for _, entries in layout]
    return layout, buffers


def state_layout(state: Mapping[str, torch.Tensor]) -> list[tuple[torch.dtype, list[tuple[str, tuple[int, ...]]]]]:
    """:func:`flatten_state`'s layout of ``state``: ``[(dtype, [(name, shape), ...]), ...]``."""
    by_dtype: dict[torch.dtype, list[str]] = {}
    for name, t in state.items():
        by_dtype.setdefault(t.dtype, []).append(name)
    return [(dtype, [(n, tuple(state[n].shape)) for n in names]) for dtype, names in by_dtype.items()]


def unflatten_state(layout, buffers: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of :func:`flatten_state`'s ``(layout, buffers)`` (views of the buffers)."""
    out = {}
    for (_, entries), buf in zip(layout, buffers):
        at = 0
        for name, shape in entries:
            n = math.prod(shape)
            out[name] = buf[at:at + n].view(shape)
            at += n
    return out


class WeightGroup:
    """A ``torch.distributed`` process group of its own for the weight broadcast (rank 0: the
    trainer, ranks 1..N: the engine actors), made from a ``TCPStore`` at its own address and a
    backend object (``ProcessGroupGloo`` / ``ProcessGroupNCCL``) rather than
    ``init_process_group``: the default group stays the trainer ranks' (another address, other
    members), and neither sees the other's collectives. With nccl every member needs a GPU of its
    own (NCCL refuses two ranks on one device): the trainer's beside the engine actors'.

    :ivar backend: ``"gloo"`` or ``"nccl"``.
    """

    def __init__(self, backend: str, host: str, port: int, rank: int, world: int, timeout_s: float):
        import datetime

        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=timeout_s)
        self.backend, self.rank = backend, rank
        self.store = dist.TCPStore(host, port, world, rank == 0, timeout=timeout)
        if backend == "nccl":
            self.pg = dist.ProcessGroupNCCL(self.store, rank, world)
        else:
            self.pg = dist.ProcessGroupGloo(self.store, rank, world, timeout)

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Broadcast ``tensor`` in place from rank 0 (blocks until done here)."""
        self.pg.broadcast(tensor, 0).wait()

    def close(self) -> None:
        """Leave the group (an abort where the backend has one: peers' pending calls then fail)."""
        abort = getattr(self.pg, "abort", None)
        try:
            if abort is not None:
                abort()
        except Exception:  # noqa: BLE001 - gloo may have no abort; dropped below all the same
            pass
        self.pg = self.store = None


def _device(backend: str) -> torch.device:
    """Where a broadcast's buffers live: this process's current GPU for nccl, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def weight_group(backend: str, host: str, port: int, rank: int, world: int, timeout_s: float) -> WeightGroup:
    """:class:`WeightGroup` (rank 0 hosts the store at ``host:port``); returns once all ``world``
    ranks have joined. :raises: torch's ``DistStoreError`` / ``RuntimeError`` after ``timeout_s``."""
    return WeightGroup(backend, host, port, rank, world, timeout_s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``(start, end)`` ranges covering ``range(n)``, sizes differing by at
    most one, the longer first (``n = 5, parts = 2`` → ``(0, 3), (3, 5)``)."""
    q, r = divmod(n, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + q + (i < r))
    return list(zip(bounds[:-1], bounds[1:]))


class ActorPool:
    """``num_actors`` Ray actors of one class, each built with ``(cfg, <ctx.run_dir>/<kind>_actor_<i>,
    i)``, and the fault semantics of the module docstring: calls fanned out with :meth:`_run`,
    a dead actor's call resent once Ray has restarted it, restarts and resends counted, one-line
    errors naming the actor. :class:`RayEngineGroup` and :class:`RayRewardGroup` are its two
    kinds. Ray must be initialised (``ray.init``) before.

    :param ctx: the trainer's run context (``ctx.cfg`` is sent to the actors).
    :param num_actors: actors, >= 1.
    :param actor_options: Ray actor options (``num_cpus``, ``num_gpus``, ``resources``,
        ``scheduling_strategy``, ``runtime_env``, ...); default ``{"num_cpus": 1}``.
    :param max_restarts: Ray restarts of each actor, >= 0, or -1 for no limit.
    :param max_task_retries: resends of one call after its actor died, >= 0.
    :param start_timeout_s: longest wait, in seconds, for an actor to start (a cluster without
        the resources it asks for never starts it) or, once dead, to answer again before its call
        is resent (> 0).
    :raises ValueError: an argument out of range (one line naming it).
    :raises ImportError: Ray is not installed (the line says what to install).
    :raises RuntimeError: Ray is not initialised.
    :raises ActorGroupError: (the kind's subclass) an actor failed to start (its index and the cause).

    :ivar actors: the actor handles, in chunk order.
    :ivar actor_options: the Ray options each actor was made with (restart options aside).
    :ivar max_task_retries: as given (may be changed between calls).
    """

    kind = "actor"  #: the actors' kind in messages and counter names (``ray/<kind>_restarts``)
    error: type[ActorGroupError] = ActorGroupError  #: raised when an actor fails
    payload: tuple[str, ...] = ()  #: result keys that are not the actor's :meth:`PluginActor.where`

    def __init__(self, ctx, num_actors: int, actor_class, actor_options: Mapping[str, Any] | None = None,
                 max_restarts: int = 3, max_task_retries: int = 3, start_timeout_s: float = 600.0):
        name = type(self).__name__
        if not isinstance(num_actors, int) or num_actors < 1:
            raise ValueError(f"{name}: num_actors={num_actors!r}: must be an integer >= 1")
        if not isinstance(max_restarts, int) or max_restarts < -1:
            raise ValueError(f"{name}: max_restarts={max_restarts!r}: must be an integer >= 0, or -1 (no limit)")
        if not isinstance(max_task_retries, int) or max_task_retries < 0:
            raise ValueError(f"{name}: max_task_retries={max_task_retries!r}: must be an integer >= 0")
        if not start_timeout_s > 0:
            raise ValueError(f"{name}: start_timeout_s={start_timeout_s!r}: must be > 0")
        ray = _ray()
        if not ray.is_initialized():
            raise RuntimeError(f"{name}: Ray is not initialised; call ray.init() first (launcher=ray does)")
        from omegaconf import OmegaConf

        self.ctx, self.max_task_retries, self.max_restarts = ctx, max_task_retries, max_restarts
        self.start_timeout_s = float(start_timeout_s)
        cfg = {k: v for k, v in OmegaConf.to_container(ctx.cfg, resolve=True).items() if k != "hydra"}
        self.actor_options = {"num_cpus": 1, **(actor_options or {})}
        cls = actor_class.options(**self.actor_options, max_restarts=max_restarts, max_task_retries=0)
        self.actors = [cls.remote(cfg, str(Path(ctx.run_dir) / f"{self.kind}_actor_{i}"), i) for i in range(num_actors)]
        self._where: list[dict[str, Any]] = [{} for _ in self.actors]
        self._restarts = self._retries = 0
        try:
            self._run("start", {i: partial(a.where.remote) for i, a in enumerate(self.actors)})
        except BaseException:  # none left behind, started or waiting for resources
            for a in self.actors:
                ray.kill(a, no_restart=True)
            self.actors = []
            raise

    def where(self) -> list[dict[str, Any]]:
        """Per actor, as it last answered: :meth:`PluginActor.where` (``pid``, ``node``, ``host``,
        ``incarnation``, ``plugins``, ...)."""
        return [dict(w) for w in self._where]

    def fault_counts(self) -> dict[str, int]:
        """Cumulative ``{"ray/<kind>_restarts": restarts seen, "ray/<kind>_retries": calls resent}``
        (a restart is seen when an actor answers from a new process; an actor killed twice
        between two calls counts once)."""
        return {f"ray/{self.kind}_restarts": self._restarts, f"ray/{self.kind}_retries": self._retries}

    def close(self, timeout_s: float = 60.0) -> None:
        """Call every actor's ``close()``, kill the actors (no restart) and return once they are
        dead (``ray.kill`` only asks: a call sent right after it may still run), so their resources
        are free for what comes next; waits at most ``timeout_s`` for each step. Idempotent."""
        if not self.actors:
            return
        ray = _ray()
        from ray.exceptions import RayActorError

        actors, self.actors = self.actors, []
        try:
            ray.get([a.close.remote() for a in actors], timeout=timeout_s)
        except Exception:  # a dead or hung actor: killed below all the same
            pass
        for a in actors:
            ray.kill(a, no_restart=True)
        deadline = time.monotonic() + timeout_s
        for a in actors:
            while time.monotonic() < deadline:
                try:
                    ray.get(a.where.remote(), timeout=max(deadline - time.monotonic(), 0.01))
                except RayActorError:
                    break
                except Exception:  # GetTimeoutError: the deadline is reached
                    break
                time.sleep(0.05)

    def _check_open(self) -> None:
        if not self.actors:
            raise RuntimeError(f"{type(self).__name__}: used after close()")

    def _on_restart(self, i: int) -> None:
        """Called when actor ``i`` is seen answering from a new process, before any call is resent
        to it (a kind may react: :class:`RayEngineGroup` leaves the weight broadcast)."""

    def _run(self, what: str, calls: Mapping[int, Callable[[], Any]]) -> dict[int, dict[str, Any]]:
        """Run ``calls`` (actor index → a function that submits the call and returns its ref)
        concurrently. A call whose actor died is resent, up to ``max_task_retries`` times, once
        the restarted actor answers (:meth:`_await_restart`); the other calls run on meanwhile.
        An answer with ``stale: True`` (a restarted actor that could not serve the call as sent;
        see :meth:`EngineActor.load_weights`) is resent too, after :meth:`_on_restart`, and counts
        as a resend. Each answer's :meth:`PluginActor.where` is recorded (restarts counted).
        Returns index → result. :raises ActorGroupError: a resend more than allowed, or the actor
        dead for good."""
        ray = _ray()
        from ray.exceptions import RayActorError

        pending = {calls[i](): i for i in calls}
        tries = dict.fromkeys(calls, 0)
        results: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + self.start_timeout_s
        while pending:
            wait = max(deadline - time.monotonic(), 0.0) if what == "start" else None
            done, _ = ray.wait(list(pending), num_returns=1, timeout=wait)
            if not done:
                raise self.error(
                    f"{self.kind} actor(s) {sorted(pending.values())} not started within start_timeout_s="
                    f"{self.start_timeout_s:g}: does the cluster have what each asks for ({self.actor_options})? "
                    f"available: {ray.available_resources()}")
            i = pending.pop(done[0])
            try:
                res = ray.get(done[0])
            except RayActorError as exc:
                if what == "start":
                    raise self.error(f"{self.kind} actor {i} failed to start: {_cause(exc)}") from exc
                if tries[i] >= self.max_task_retries:
                    raise self._dead(i, what, tries[i], exc) from exc
                tries[i] += 1
                self._retries += 1
                try:
                    self._await_restart(i)
                except RayActorError as again:  # restarts used up (or the node gone)
                    raise self._dead(i, what, tries[i] - 1, again) from again
                pending[calls[i]()] = i
                continue
            self._record(i, res)
            if isinstance(res, Mapping) and res.get("stale"):
                if tries[i] >= self.max_task_retries:
                    raise self.error(f"{self.kind} actor {i} could not serve {what} after {tries[i]} resend(s)")
                tries[i] += 1
                self._retries += 1
                self._on_restart(i)
                pending[calls[i]()] = i
                continue
            results[i] = res
        return results

    def _await_restart(self, i: int) -> None:
        """Wait until actor ``i`` answers again (Ray restarts it; calls sent meanwhile fail with
        ``ActorUnavailableError``), polling with a doubling pause up to ``start_timeout_s``.
        :raises ActorDiedError: the actor will not come back (``max_restarts`` used up).
        :raises ActorGroupError: it did not answer within ``start_timeout_s``."""
        ray = _ray()
        from ray.exceptions import ActorUnavailableError, GetTimeoutError

        deadline, pause = time.monotonic() + self.start_timeout_s, 0.05
        while True:
            try:
                self._record(i, ray.get(self.actors[i].where.remote(), timeout=max(deadline - time.monotonic(), 0.01)))
                return
            except (ActorUnavailableError, GetTimeoutError) as exc:
                if time.monotonic() >= deadline:
                    raise self.error(f"{self.kind} actor {i} did not come back within start_timeout_s="
                                     f"{self.start_timeout_s:g} after dying: {_cause(exc)}") from exc
                time.sleep(pause)
                pause = min(2 * pause, 2.0)

    def _record(self, i: int, res: Mapping[str, Any]) -> None:
        """Keep actor ``i``'s :meth:`PluginActor.where`; a new incarnation is a restart."""
        old = self._where[i].get("incarnation")
        self._where[i] = {k: v for k, v in res.items() if k not in self.payload and k != "stale"}
        if old is not None and old != res["incarnation"]:
            self._restarts += 1
            self._on_restart(i)

    def _dead(self, i: int, what: str, resends: int, exc: BaseException) -> ActorGroupError:
        w = self._where[i]
        return self.error(
            f"{self.kind} actor {i} (pid {w.get('pid')} on {w.get('ip')}, node {w.get('node')}) died during {what} after "
            f"{resends} resend(s) (max_task_retries={self.max_task_retries}, max_restarts={self.max_restarts}): "
            f"{_cause(exc)}")


WEIGHT_SYNC = ("object_store", "broadcast")


class RayEngineGroup(ActorPool):
    """The :class:`reasonzoo.engine.Engine` protocol over ``num_actors`` engine actors (see the
    module docstring for weights, randomness and faults): an :class:`ActorPool` of
    :class:`EngineActor`.

    :param ctx: the trainer's run context: ``ctx.cfg`` is sent to the actors, ``ctx.policy`` and
        ``ctx.policy_version`` are read by :meth:`sync_weights`, actor ``i`` gets
        ``<ctx.run_dir>/engine_actor_<i>`` as its run directory.
    :param num_actors: engine actors, >= 1.
    :param actor_options: as :class:`ActorPool`.
    :param max_restarts: as :class:`ActorPool`.
    :param max_task_retries: as :class:`ActorPool`.
    :param start_timeout_s: as :class:`ActorPool`; also the timeout of the broadcast group (its
        forming, and each broadcast).
    :param weight_sync: ``object_store`` (default) or ``broadcast`` (module docstring).
    :raises ValueError: an argument out of range (one line naming it).
    :raises ImportError: Ray is not installed (the line says what to install).
    :raises RuntimeError: Ray is not initialised.
    :raises EngineActorError: an actor failed to start (its index and the cause), or the actors
        could not form the broadcast group with this process.

    :ivar weight_sync: how the next :meth:`sync_weights` sends the weights (``broadcast`` falls
        back to ``object_store`` for good after an actor's restart or a failed broadcast).
    :ivar weight_sync_fallbacks: 1 once ``broadcast`` has fallen back, else 0.
    """

    kind = "engine"
    error = EngineActorError
    payload = ("generations", "rng_state")

    def __init__(self, ctx, num_actors: int, actor_options: Mapping[str, Any] | None = None, max_restarts: int = 3,
                 max_task_retries: int = 3, start_timeout_s: float = 600.0, weight_sync: str = "object_store"):
        if weight_sync not in WEIGHT_SYNC:
            raise ValueError(f"RayEngineGroup: weight_sync={weight_sync!r}: allowed values are {', '.join(WEIGHT_SYNC)}")
        self.weight_sync, self.weight_sync_fallbacks = weight_sync, 0
        self._group: WeightGroup | None = None
        self._ref = None  # the latest weights in the object store, and their policy version
        self._version: int | None = None
        self._weights: list[Any] = [None]  # what calls carry: [object ref] or ["broadcast:<version>"]; updated in place
        self._snapshot = None  # weight_sync=broadcast: (layout, buffers) last sent, for a fallback to the object store
        super().__init__(ctx, num_actors, remote_engine_actor(), actor_options, max_restarts, max_task_retries,
                         start_timeout_s)
        if weight_sync == "broadcast":
            try:
                self._join()
            except BaseException:
                self.close()
                raise

    # --- the Engine protocol -------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams, generator: torch.Generator
                 ) -> list[Generation]:
        """The actors' generations, in request order (see :class:`reasonzoo.engine.Engine`); each
        records the policy version it was produced by. Syncs the weights first if
        :meth:`sync_weights` was never called. One actor: ``generator`` advances exactly as the
        local engine would advance it; N > 1: by N seed draws.

        :raises EngineActorError: an actor stayed dead through ``max_task_retries`` resends.
        """
        self._check_open()
        requests = list(requests)
        if not requests:
            return []
        if self._version is None:
            self.sync_weights()
        n = len(self.actors)
        if n == 1:
            rngs: list[Any] = [generator.get_state()]
        else:
            rngs = torch.randint(0, 2**63 - 1, (n,), generator=generator).tolist()
        spans = _chunks(len(requests), n)
        weights = self._weights  # one list for every call, so a fallback re-points resends at the object store
        calls = {i: partial(self.actors[i].generate.remote, requests[s:e], params, rngs[i], self._version, weights)
                 for i, (s, e) in enumerate(spans) if e > s}
        results = self._run("generate", calls)
        if n == 1:
            generator.set_state(results[0]["rng_state"])
        return [g for i in sorted(results) for g in results[i]["generations"]]

    def sync_weights(self) -> None:
        """Send ``ctx.policy.model.state_dict()``, tagged with ``ctx.policy_version``, to every
        actor: through the object store (``ray.put`` once; the reference is kept for restarted
        actors) or, under ``weight_sync=broadcast``, by a broadcast from this process (the
        version, then one flat buffer per dtype: :func:`flatten_state`). A broadcast that fails
        falls back to the object store (module docstring). :raises EngineActorError: as
        :meth:`generate`."""
        self._check_open()
        version = int(self.ctx.policy_version)
        state = self.ctx.policy.model.state_dict()
        if self.weight_sync == "broadcast":
            self._snapshot = flatten_state(state, _device(self._group.backend))
            self._version = version
            try:
                self._broadcast(version)
                return
            except Exception as exc:  # noqa: BLE001 - an actor died or left: the object store takes over
                self._fall_back(f"broadcast failed: {_cause(exc)}")
            # the snapshot is in the object store now (self._ref)
        else:
            self._ref, self._version = _ray().put(pack_state(state)), version
            self._weights[0] = self._ref
        self._run("sync_weights", {i: partial(a.load_weights.remote, self._version, self._weights)
                                   for i, a in enumerate(self.actors)})

    @property
    def logprobs_match_policy(self) -> bool:
        """What the actors' engines declare (:class:`reasonzoo.engine.Engine`); they must agree.
        :raises RuntimeError: they do not (the actors' declarations listed)."""
        said = [w.get("logprobs_match_policy", False) for w in self._where]
        if len(set(said)) > 1:
            raise RuntimeError(f"engine actors disagree on logprobs_match_policy: {said} (actors 0..{len(said) - 1})")
        return bool(said[0])

    # --- the group's own -----------------------------------------------------------------------

    @property
    def policy_version(self) -> int | None:
        """The policy version of the latest weights sent (``None`` before the first sync)."""
        return self._version

    def fault_counts(self) -> dict[str, int]:
        """:meth:`ActorPool.fault_counts`, plus ``ray/weight_sync_fallbacks`` under
        ``weight_sync=broadcast`` (as constructed)."""
        out = super().fault_counts()
        if self.weight_sync == "broadcast" or self.weight_sync_fallbacks:
            out["ray/weight_sync_fallbacks"] = self.weight_sync_fallbacks
        return out

    def close(self, timeout_s: float = 60.0) -> None:
        """:meth:`ActorPool.close`, after leaving the broadcast group."""
        if self._group is not None:
            self._group.close()
            self._group = None
        super().close(timeout_s)

    def _join(self) -> None:
        """Form the broadcast group: this process rank 0 (hosting its store on a free port), actor
        ``i`` rank ``i + 1``; nccl when the actors have GPUs and this process has CUDA, else gloo."""
        ray = _ray()
        backend = "nccl" if self.actor_options.get("num_gpus", 0) and torch.cuda.is_available() else "gloo"
        host, port, world = ray.util.get_node_ip_address(), _free_port(), len(self.actors) + 1
        refs = [a.join_weight_group.remote(host, port, i + 1, world, backend, self.start_timeout_s)
                for i, a in enumerate(self.actors)]
        try:
            self._group = weight_group(backend, host, port, 0, world, self.start_timeout_s)
            for i, res in enumerate(ray.get(refs, timeout=self.start_timeout_s)):
                self._record(i, res)
        except Exception as exc:  # noqa: BLE001 - named in one line
            raise EngineActorError(f"launcher.weight_sync=broadcast: the engine actors could not form a {backend} group with "
                                   f"this process at {host}:{port} within start_timeout_s={self.start_timeout_s:g}: "
                                   f"{_cause(exc)}") from exc

    def _broadcast(self, version: int) -> None:
        """Every actor receives (:meth:`EngineActor.receive_weights`) while this process
        broadcasts the version and the snapshot's buffers. :raises: whatever a side raised."""
        ray = _ray()
        layout, buffers = self._snapshot
        refs = [a.receive_weights.remote(version, layout) for a in self.actors]
        try:
            self._group.broadcast(torch.tensor([version], dtype=torch.int64, device=buffers[0].device))
            for buf in buffers:
                self._group.broadcast(buf)
            got = ray.get(refs, timeout=self.start_timeout_s)
        except Exception:
            self._group.close()  # the others' receives fail now rather than at the group's timeout
            self._group = None
            for ref in refs:  # their errors are consumed here, not reported by Ray as unhandled
                try:
                    ray.get(ref, timeout=self.start_timeout_s)
                except Exception:  # noqa: BLE001
                    pass
            raise
        for i, res in enumerate(got):
            self._record(i, res)
        self._weights[0] = f"broadcast:{version}"

    def _on_restart(self, i: int) -> None:
        if self.weight_sync == "broadcast":
            self._fall_back(f"engine actor {i} was restarted")

    def _fall_back(self, why: str) -> None:
        """Leave the broadcast for good: the group is gone (a restarted actor cannot rejoin it),
        the last weights sent go to the object store and every call from now on carries them."""
        log.warning("launcher.weight_sync=broadcast: %s; weights go through the object store from now on", why)
        self.weight_sync, self.weight_sync_fallbacks = "object_store", 1
        if self._group is not None:
            self._group.close()
            self._group = None
        if self._snapshot is not None:
            layout, buffers = self._snapshot
            self._ref = _ray().put(pack_state(unflatten_state(layout, [b.cpu() for b in buffers])))
            self._weights[0] = self._ref
            self._snapshot = None


class RayRewardGroup(ActorPool):
    """The run's rewards computed by ``num_actors`` reward actors (:class:`RewardActor`): the
    groups cut into contiguous near-equal chunks, chunk ``i`` scored by actor ``i`` with the
    run's ``rz_reward``, the results put back in group order. Rewards are a pure function of the
    groups (the ``rz_reward`` contract for a deterministic reward), so a chunk resent after its
    actor died gives what the lost call would have given. Faults as :class:`ActorPool`
    (``ray/reward_restarts``, ``ray/reward_retries``; :class:`RewardActorError`).

    Metrics: the results come back whole (``RewardResult.info`` included), so the driver's
    ``rz_iteration_end`` computes every reward plugin's metrics from the scored groups as it
    does locally (``reward/timeouts``, ``reward/truncated``, ``reward/unparsed_reference``,
    ``reward/verdict_*``, ...). A reward plugin that counted in its own state during
    ``rz_reward`` would count in the actor, not in the driver: every reward plugin here reports
    from the groups, and tests/test_ray_rewards.py checks that for each.

    :param ctx: the trainer's run context (``ctx.cfg`` sent to the actors; actor ``i`` gets
        ``<ctx.run_dir>/reward_actor_<i>``).
    :param num_actors: reward actors, >= 1.
    :param actor_options: as :class:`ActorPool`.
    :param max_restarts: as :class:`ActorPool`.
    :param max_task_retries: as :class:`ActorPool`.
    :param start_timeout_s: as :class:`ActorPool`.
    :raises: as :class:`ActorPool` (:class:`RewardActorError`).
    """

    kind = "reward"
    error = RewardActorError
    payload = ("rewards",)

    def __init__(self, ctx, num_actors: int, actor_options: Mapping[str, Any] | None = None, max_restarts: int = 3,
                 max_task_retries: int = 3, start_timeout_s: float = 600.0):
        super().__init__(ctx, num_actors, remote_reward_actor(), actor_options, max_restarts, max_task_retries,
                         start_timeout_s)

    def reward(self, ctx, groups: Sequence[Any]) -> list[list[Any]]:
        """``rz_reward``'s answer for ``groups``, scored by the actors (``ctx.iteration`` and
        ``ctx.policy_version`` passed on). :returns: one list of ``RewardResult`` per group, in
        order. :raises RewardActorError: an actor stayed dead through ``max_task_retries`` resends."""
        self._check_open()
        groups = list(groups)
        if not groups:
            return []
        spans = _chunks(len(groups), len(self.actors))
        calls = {i: partial(self.actors[i].reward.remote, groups[s:e], int(ctx.iteration), int(ctx.policy_version))
                 for i, (s, e) in enumerate(spans) if e > s}
        results = self._run("reward", calls)
        return [r for i in sorted(results) for r in results[i]["rewards"]]


def _cause(exc: BaseException) -> str:
    """One line from Ray's many-line actor error: the exception a constructor raised (its last
    line), else the error's first line and the worker's exit type and detail when given."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if "creation task" in lines[0]:
        return lines[-1]
    kind = re.search(r"Worker exit type: (\w+)", text)
    detail = re.search(r"Worker exit detail: ([^.]*)", text)
    exit_ = f" (worker exit {kind.group(1)}{': ' + detail.group(1) if detail else ''})" if kind else ""
    return f"{type(exc).__name__}: {lines[0]}{exit_}"
