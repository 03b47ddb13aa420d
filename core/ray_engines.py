"""Rollout engines in Ray actors: any engine plugin, served by N actors, behind the
:class:`reasonzoo.engine.Engine` protocol (issue 12, "Placement" and "Faults").

Each :class:`EngineActor` is a process of its own that rebuilds the run's plugin manager from
the same composed config (``build_plugins`` + ``make_manager``: entry-point plugins of
third-party packages included, so a plugin written for ``launcher=local`` works unchanged),
builds the policy (``rz_build_policy``) and the engine (``rz_build_engine``) and talks to the
engine only through the Engine protocol, so engine/torch and engine/vllm both fit.
:class:`RayEngineGroup` is what the trainer holds instead of a local engine.

Weights and versions: :meth:`RayEngineGroup.sync_weights` puts the trainer's ``state_dict``
into Ray's object store once (``ray.put``, as numpy bytes: :func:`pack_state`), tagged with
``ctx.policy_version``, and pushes the reference to every actor, which loads it into its policy
and calls its engine's ``sync_weights()``. Every generate call carries the latest reference too:
an actor whose loaded weights are not those (a restarted actor, its state lost) loads them
first, so it catches up by itself. Every :class:`~reasonzoo.types.Generation` records the
version the actor served (``Generation.policy_version``). On GPU a collective broadcast (NCCL)
would replace the object store; not built here.

Randomness: with one actor the driver generator's state travels to the actor and the final
state comes back, so the tokens are exactly those of the local engine with the same generator.
With N > 1 actors the requests are cut into N contiguous near-equal chunks and one seed per
chunk is drawn from the generator (``torch.randint``, 63 bits): same generator state, same
result, but other random streams than the local engine (a row's tokens depend on its chunk's
seed and its place in the chunk), so ``launcher=ray`` with N > 1 actors samples other tokens
than ``launcher=local`` for the same seed.

Faults: an actor that dies (``ray.kill``, ``os._exit``, a crash, its node lost) is restarted by
Ray (``max_restarts``). The call it was running, or the next one sent to it, fails with a
``RayActorError``; the group waits until the restarted actor answers (calls sent while Ray
restarts it fail at once, so they are not resent blindly) and resends that chunk with the same
requests, the same seed (or generator state) and the same weights reference, up to
``max_task_retries`` times per call. Generation is a pure function of those arguments, so the
resent chunk gives what the lost call would have given, and only the result that arrived is
used: nothing is lost or counted twice. The retries are the group's own rather than Ray's
``max_task_retries`` option (left at 0) so that the group counts them, keeps the other chunks
running meanwhile, and names the actor when they run out (:class:`EngineActorError`: the actor's
index, pid, node and the cause). Errors raised by the engine itself (a bad stop string, a
shape mismatch when loading weights) are not retried: they come back as raised, with their own
type. :meth:`RayEngineGroup.fault_counts` gives ``ray/engine_restarts`` (restarts seen: an
actor answering from a new process) and ``ray/engine_retries`` (calls resent), cumulative over
the group's life.

One caller at a time: the group is not thread-safe (the asynchronous trainer calls
``generate`` from its rollout thread and ``sync_weights`` only once that rollout has ended).

Ray stays optional: this module imports it only inside functions.
"""
from __future__ import annotations

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

__all__ = ["EngineActor", "EngineActorError", "RayEngineGroup", "pack_state", "remote_engine_actor", "unpack_state"]

RAY_MISSING = "launcher=ray needs Ray: pip install -e '.[ray]'"


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError(RAY_MISSING) from exc
    return ray


class EngineActorError(RuntimeError):
    """An engine actor failed to start, or died and its call was resent ``max_task_retries`` times
    already (or Ray will not restart it again)."""


class EngineActor:
    """One rollout engine in its own process (the class :func:`remote_engine_actor` makes a Ray
    actor of).

    :param cfg: the composed run config as a plain container (resolved; no ``hydra`` node).
    :param run_dir: this actor's directory (engines may write there: engine/vllm saves the
        initial weights under ``<run_dir>/vllm``); one per actor, created on demand.
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
        hook = make_manager(self.plugins).hook
        self.ctx = RunContext(cfg=conf, hook=hook, run_dir=Path(run_dir))
        torch.manual_seed(rc.seed)
        self.ctx.policy = hook.rz_build_policy(ctx=self.ctx)
        self.ctx.engine = self.engine = hook.rz_build_engine(ctx=self.ctx, policy=self.ctx.policy)
        self.index = index
        self.version: int | None = None  #: the policy version of the loaded weights
        self.weights_id: str | None = None  #: which weights are loaded (the object-store id)
        self.incarnation = uuid.uuid4().hex  # a restarted actor gets a new one: the group counts restarts with it

    def where(self) -> dict[str, Any]:
        """This process: ``index`` (in its group), ``incarnation`` (new on every restart), ``pid``,
        ``node`` (Ray node id), ``ip`` (the node's), ``host``, ``logprobs_match_policy`` (the engine's declaration),
        ``plugins`` (``{"<hook point>/<name>": "<module>"}``: what the rebuilt manager holds)."""
        return {"index": self.index, "incarnation": self.incarnation, "pid": os.getpid(),
                "node": _ray().get_runtime_context().get_node_id(), "ip": _ray().util.get_node_ip_address(),
                "host": socket.gethostname(),
                "logprobs_match_policy": bool(getattr(self.engine, "logprobs_match_policy", False)),
                "plugins": {k: type(v).__module__ for k, v in self.plugins.items()}}

    def load_weights(self, version: int, weights: Sequence[Any]) -> dict[str, Any]:
        """Load the trainer's ``state_dict`` into this actor's policy and call the engine's
        ``sync_weights()``; nothing when these weights are loaded already.

        :param version: the policy version the weights belong to.
        :param weights: a one-element list holding the object-store reference of the state_dict
            (wrapped so that Ray does not fetch it for calls that do not need it).
        :returns: :meth:`where`.
        """
        ref = weights[0]
        if ref.hex() != self.weights_id:
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
        :returns: ``{"generations": list[Generation], "rng_state": ByteTensor | None, **where()}``.
        """
        self.load_weights(version, weights)
        gen = torch.Generator()
        if isinstance(seed_or_state, torch.Tensor):
            gen.set_state(seed_or_state)
        else:
            gen.manual_seed(int(seed_or_state))
        out = self.engine.generate(list(requests), params, gen)
        return {"generations": [replace(g, policy_version=self.version) for g in out],
                "rng_state": gen.get_state() if isinstance(seed_or_state, torch.Tensor) else None, **self.where()}

    def close(self) -> None:
        """Close the engine when it has a ``close()`` (engine/vllm frees its memory)."""
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


_REMOTE = None


def remote_engine_actor():
    """``ray.remote(EngineActor)``, made once per process (Ray imported here, not at import)."""
    global _REMOTE
    if _REMOTE is None:
        _REMOTE = _ray().remote(EngineActor)
    return _REMOTE


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


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``(start, end)`` ranges covering ``range(n)``, sizes differing by at
    most one, the longer first (``n = 5, parts = 2`` → ``(0, 3), (3, 5)``)."""
    q, r = divmod(n, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + q + (i < r))
    return list(zip(bounds[:-1], bounds[1:]))


class RayEngineGroup:
    """The :class:`reasonzoo.engine.Engine` protocol over ``num_actors`` engine actors (see the
    module docstring for weights, randomness and faults). Ray must be initialised (``ray.init``)
    before.

    :param ctx: the trainer's run context: ``ctx.cfg`` is sent to the actors, ``ctx.policy`` and
        ``ctx.policy_version`` are read by :meth:`sync_weights`, actor ``i`` gets
        ``<ctx.run_dir>/engine_actor_<i>`` as its run directory.
    :param num_actors: engine actors, >= 1.
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
    :raises EngineActorError: an actor failed to start (its index and the cause).

    :ivar actors: the actor handles, in chunk order.
    :ivar actor_options: the Ray options each actor was made with (restart options aside).
    :ivar max_task_retries: as given (may be changed between calls).
    """

    def __init__(self, ctx, num_actors: int, actor_options: Mapping[str, Any] | None = None, max_restarts: int = 3,
                 max_task_retries: int = 3, start_timeout_s: float = 600.0):
        if not isinstance(num_actors, int) or num_actors < 1:
            raise ValueError(f"RayEngineGroup: num_actors={num_actors!r}: must be an integer >= 1")
        if not isinstance(max_restarts, int) or max_restarts < -1:
            raise ValueError(f"RayEngineGroup: max_restarts={max_restarts!r}: must be an integer >= 0, or -1 (no limit)")
        if not isinstance(max_task_retries, int) or max_task_retries < 0:
            raise ValueError(f"RayEngineGroup: max_task_retries={max_task_retries!r}: must be an integer >= 0")
        if not start_timeout_s > 0:
            raise ValueError(f"RayEngineGroup: start_timeout_s={start_timeout_s!r}: must be > 0")
        ray = _ray()
        if not ray.is_initialized():
            raise RuntimeError("RayEngineGroup: Ray is not initialised; call ray.init() first (launcher=ray does)")
        from omegaconf import OmegaConf

        self.ctx, self.max_task_retries, self.max_restarts = ctx, max_task_retries, max_restarts
        self.start_timeout_s = float(start_timeout_s)
        cfg = {k: v for k, v in OmegaConf.to_container(ctx.cfg, resolve=True).items() if k != "hydra"}
        self.actor_options = {"num_cpus": 1, **(actor_options or {})}
        cls = remote_engine_actor().options(**self.actor_options, max_restarts=max_restarts, max_task_retries=0)
        self.actors = [cls.remote(cfg, str(Path(ctx.run_dir) / f"engine_actor_{i}"), i) for i in range(num_actors)]
        self._where: list[dict[str, Any]] = [{} for _ in self.actors]
        self._restarts = self._retries = 0
        self._ref = None  # the latest weights in the object store, and their policy version
        self._version: int | None = None
        try:
            self._run("start", {i: partial(a.where.remote) for i, a in enumerate(self.actors)})
        except BaseException:  # none left behind, started or waiting for resources
            for a in self.actors:
                ray.kill(a, no_restart=True)
            self.actors = []
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
        if self._ref is None:
            self.sync_weights()
        n = len(self.actors)
        if n == 1:
            rngs: list[Any] = [generator.get_state()]
        else:
            rngs = torch.randint(0, 2**63 - 1, (n,), generator=generator).tolist()
        spans = _chunks(len(requests), n)
        weights = [self._ref]  # wrapped: the actor fetches it only when it lacks these weights
        calls = {i: partial(self.actors[i].generate.remote, requests[s:e], params, rngs[i], self._version, weights)
                 for i, (s, e) in enumerate(spans) if e > s}
        results = self._run("generate", calls)
        if n == 1:
            generator.set_state(results[0]["rng_state"])
        return [g for i in sorted(results) for g in results[i]["generations"]]

    def sync_weights(self) -> None:
        """Put ``ctx.policy.model.state_dict()`` into the object store once (CPU copies), tagged
        with ``ctx.policy_version``, and load it in every actor; the reference is kept for
        restarted actors. :raises EngineActorError: as :meth:`generate`."""
        self._check_open()
        ray = _ray()
        self._ref, self._version = ray.put(pack_state(self.ctx.policy.model.state_dict())), int(self.ctx.policy_version)
        weights = [self._ref]
        self._run("sync_weights", {i: partial(a.load_weights.remote, self._version, weights)
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

    def where(self) -> list[dict[str, Any]]:
        """Per actor, as it last answered: :meth:`EngineActor.where` (``pid``, ``node``, ``host``,
        ``incarnation``, ``logprobs_match_policy``, ``plugins``)."""
        return [dict(w) for w in self._where]

    def fault_counts(self) -> dict[str, int]:
        """Cumulative ``{"ray/engine_restarts": restarts seen, "ray/engine_retries": calls resent}``
        (a restart is seen when an actor answers from a new process; an actor killed twice
        between two calls counts once)."""
        return {"ray/engine_restarts": self._restarts, "ray/engine_retries": self._retries}

    def close(self, timeout_s: float = 60.0) -> None:
        """Close every actor's engine, kill the actors (no restart) and return once they are dead
        (``ray.kill`` only asks: a call sent right after it may still run), so their resources are
        free for what comes next; waits at most ``timeout_s`` for each step. Idempotent."""
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
            raise RuntimeError("RayEngineGroup: used after close()")

    def _run(self, what: str, calls: Mapping[int, Callable[[], Any]]) -> dict[int, dict[str, Any]]:
        """Run ``calls`` (actor index → a function that submits the call and returns its ref)
        concurrently. A call whose actor died is resent, up to ``max_task_retries`` times, once
        the restarted actor answers (:meth:`_await_restart`); the other calls run on meanwhile.
        Each answer's :meth:`EngineActor.where` is recorded (restarts counted). Returns index →
        result. :raises EngineActorError: a resend more than allowed, or the actor dead for good."""
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
                raise EngineActorError(
                    f"engine actor(s) {sorted(pending.values())} not started within start_timeout_s="
                    f"{self.start_timeout_s:g}: does the cluster have what each asks for ({self.actor_options})? "
                    f"available: {ray.available_resources()}")
            i = pending.pop(done[0])
            try:
                results[i] = ray.get(done[0])
            except RayActorError as exc:
                if what == "start":
                    raise EngineActorError(f"engine actor {i} failed to start: {_cause(exc)}") from exc
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
            self._record(i, results[i])
        return results

    def _await_restart(self, i: int) -> None:
        """Wait until actor ``i`` answers again (Ray restarts it; calls sent meanwhile fail with
        ``ActorUnavailableError``), polling with a doubling pause up to ``start_timeout_s``.
        :raises ActorDiedError: the actor will not come back (``max_restarts`` used up).
        :raises EngineActorError: it did not answer within ``start_timeout_s``."""
        ray = _ray()
        from ray.exceptions import ActorUnavailableError, GetTimeoutError

        deadline, pause = time.monotonic() + self.start_timeout_s, 0.05
        while True:
            try:
                self._record(i, ray.get(self.actors[i].where.remote(), timeout=max(deadline - time.monotonic(), 0.01)))
                return
            except (ActorUnavailableError, GetTimeoutError) as exc:
                if time.monotonic() >= deadline:
                    raise EngineActorError(f"engine actor {i} did not come back within start_timeout_s="
                                           f"{self.start_timeout_s:g} after dying: {_cause(exc)}") from exc
                time.sleep(pause)
                pause = min(2 * pause, 2.0)

    def _record(self, i: int, res: Mapping[str, Any]) -> None:
        """Keep actor ``i``'s :meth:`EngineActor.where`; a new incarnation is a restart."""
        old = self._where[i].get("incarnation")
        if old is not None and old != res["incarnation"]:
            self._restarts += 1
        self._where[i] = {k: v for k, v in res.items() if k not in ("generations", "rng_state")}

    def _dead(self, i: int, what: str, resends: int, exc: BaseException) -> EngineActorError:
        w = self._where[i]
        return EngineActorError(
            f"engine actor {i} (pid {w.get('pid')} on {w.get('ip')}, node {w.get('node')}) died during {what} after "
            f"{resends} resend(s) (max_task_retries={self.max_task_retries}, max_restarts={self.max_restarts}): "
            f"{_cause(exc)}")


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
