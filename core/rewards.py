"""Helpers for reward plugins: the options every reward shares, per-sample scoring where one
failure never ends the run, and worker processes that put a time limit on every reward call.

**Truncated responses** (``reward.truncated``, :class:`RewardConfig`). A rollout is truncated
when ``finish_reason is FinishReason.LENGTH``: it was cut at ``max_new_tokens`` and never gave its
answer, yet its last characters may still look like one (``#123`` cut at ``#12`` reads as the
answer 12). The three treatments are the ones verl/DAPO and TRL users know:

- ``zero`` (default): r = 0 and ``correct=False`` whatever the text ends in; the rollout stays in
  the loss, so the policy is pushed away from running out of budget. A careful user expects an
  unfinished answer to be wrong, and this is the only choice under which a cut response can
  never be rewarded or leave the gradient; it also keeps the k1.5 recipe's "length is paid for"
  pressure (§2.3.3).
- ``mask``: DAPO's *overlong filtering* (arXiv 2503.14476 §3.4) and TRL's
  ``mask_truncated_completions``: r = 0, ``correct=False`` and ``in_loss=False``; ``collate``
  zeroes the row's ``response_mask``, so every loss takes no gradient from it. The group
  baseline (k1.5's mean of the group's rewards, GRPO's mean/std) still sees its r = 0, and a loss
  that averages over rows still counts the row in its denominator. Not the default: with no
  soft overlong penalty beside it, nothing in the loss discourages ever longer responses.
- ``score``: score the text as it is (the old behaviour; a truncated response may score 1).

``reward/truncated`` (share of scored rollouts that were truncated) and ``reward/masked`` (share
left out of the loss) are reported by :func:`reward_metrics`, which every reward plugin returns
from ``rz_iteration_end``.

**Time limits** (:class:`WorkerPool`). A reward call may run away (math-verify on
``\\boxed{9^{9^{9^{9^{9}}}}}`` computes a number with hundreds of millions of digits inside one C
call). ``signal.alarm`` works only in the main thread and cannot interrupt a C call, and a thread
cannot be killed, so every call runs in a worker process with a wall-clock deadline: on time-out
the worker is killed (SIGKILL) and replaced, and the call is reported as a time-out
(:func:`score_in_workers` scores it 0 with ``info["timeout"] = True``; ``reward/timeouts`` counts
them). Workers are plain ``python -c`` subprocesses talking over a socket pair, so they start
without re-importing the caller's ``__main__`` (as multiprocessing's spawn would) and without
torch: this module imports nothing heavy at module level, so a worker starts in a fraction of a
second. The deadline of a call counts from the worker's acknowledgement that it has loaded the
call, so a worker's start-up never eats into it. A worker also caps its own CPU time per call
(``RLIMIT_CPU`` at 2 x the deadline + 5 s), so a runaway call cannot outlive a parent that was
killed before it could kill the worker.
"""
from __future__ import annotations

import collections
import importlib
import logging
import os
import pickle
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, replace
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .ranges import ranged
from .registry import hookimpl

if TYPE_CHECKING:  # reasonzoo.types imports torch; worker processes must not pay for it
    from .types import Rollout, RewardResult, RolloutGroup

log = logging.getLogger("reasonzoo.reward")

#: Allowed values of ``reward.truncated`` (see the module docstring).
TRUNCATED_MODES = ("zero", "mask", "score")


@dataclass
class RewardConfig:
    """Options every reward plugin shares; a reward's config dataclass inherits it."""

    truncated: str = "zero"  #: a response cut at max_new_tokens: zero (r = 0), mask (r = 0 and left out of the loss), score (scored as-is)


@dataclass
class TimedRewardConfig(RewardConfig):
    """Options of a reward that scores in :class:`WorkerPool` processes."""

    timeout_s: float = ranged(10.0, gt=0)  #: wall-clock seconds allowed per scored rollout (in a worker process); a time-out scores 0
    workers: int = ranged(2, ge=1)  #: worker processes scoring at once


def check_config(cfg: RewardConfig) -> None:
    """Raise ``ValueError`` naming the key and its allowed values when ``cfg`` is out of range."""
    if cfg.truncated not in TRUNCATED_MODES:
        raise ValueError(f"reward.truncated={cfg.truncated!r}: allowed values are {', '.join(TRUNCATED_MODES)}")
    if isinstance(cfg, TimedRewardConfig):
        if not cfg.timeout_s > 0:
            raise ValueError(f"reward.timeout_s={cfg.timeout_s}: must be > 0 (seconds)")
        if cfg.workers < 1:
            raise ValueError(f"reward.workers={cfg.workers}: must be >= 1")


def check_pattern(pattern: str | None, key: str = "reward.pattern") -> None:
    """``ValueError`` naming ``key`` when ``pattern`` is not a valid regular expression."""
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{key}={pattern!r}: not a valid regex ({exc})") from None


def _is_truncated(rollout: "Rollout") -> bool:
    from .types import FinishReason

    return rollout.finish_reason is FinishReason.LENGTH


def score_groups(groups: Sequence["RolloutGroup"], fn: Callable[["Rollout"], "RewardResult"], plugin: str, *,
                 truncated: str = "score") -> list[list["RewardResult"]]:
    """Apply ``fn`` to every rollout. An exception is logged (plugin name, problem uid, error)
    and scored 0 / not correct with the error in ``info["error"]``.

    :param truncated: treatment of rollouts cut at the maximum length (``FinishReason.LENGTH``),
        one of :data:`TRUNCATED_MODES` (module docstring). With ``zero`` or ``mask`` ``fn`` is not
        called for them: they get r = 0, ``info = {"extracted": None, "truncated": True}`` and,
        for ``mask``, ``in_loss=False``. With ``score`` (the default here, for callers written
        before the option) ``fn`` scores them and ``info["truncated"]`` is set.
    :returns: one list of :class:`RewardResult` per group, in rollout order.
    """
    from .types import RewardResult

    if truncated not in TRUNCATED_MODES:
        raise ValueError(f"reward.truncated={truncated!r}: allowed values are {', '.join(TRUNCATED_MODES)}")
    out = []
    for g in groups:
        row = []
        for r in g.rollouts:
            cut = _is_truncated(r)
            if cut and truncated != "score":
                row.append(RewardResult(score=0.0, correct=False, in_loss=truncated != "mask",
                                        info={"extracted": None, "truncated": True}))
                continue
            try:
                res = fn(r)
            except Exception as exc:  # noqa: BLE001 - a reward failure costs one sample, never the run
                log.warning("reward %s failed on problem %r: %r", plugin, g.problem.uid, exc)
                res = RewardResult(score=0.0, correct=False, info={"extracted": None, "error": repr(exc)})
            row.append(replace(res, info={**res.info, "truncated": True}) if cut else res)
        out.append(row)
    return out


def reward_metrics(groups: Sequence["RolloutGroup"]) -> dict[str, float]:
    """Per-iteration reward metrics every reward plugin reports from ``rz_iteration_end``:
    ``reward/truncated`` (share of scored rollouts cut at the maximum length),
    ``reward/masked`` (share left out of the loss), ``reward/timeouts`` (number of rollouts whose
    scoring ran out of time), ``reward/errors`` (share whose scoring raised). All keys are present
    every iteration (0.0 when nothing was scored), so curves line up."""
    rw = [x for g in groups for x in (g.rewards or ())]
    n = len(rw) or 1
    return {
        "reward/truncated": sum(bool(x.info.get("truncated")) for x in rw) / n,
        "reward/masked": sum(not x.in_loss for x in rw) / n,
        "reward/timeouts": float(sum(bool(x.info.get("timeout")) for x in rw)),
        "reward/errors": sum("error" in x.info for x in rw) / n,
    }


def extract(pattern: str | None, text: str) -> str | None:
    """The last match of ``pattern``'s first group in ``text`` (whole text when ``pattern`` is None)."""
    if pattern is None:
        return text.strip()
    found = re.findall(pattern, text)
    if not found:
        return None
    last = found[-1]
    return (last[0] if isinstance(last, tuple) else last).strip()


# ---------------------------------------------------------------- worker processes with deadlines

OK, TIMEOUT, ERROR = "ok", "timeout", "error"


@dataclass(frozen=True)
class Outcome:
    """What one call in a :class:`WorkerPool` came to.

    :ivar status: ``"ok"`` (``value`` holds the return value), ``"timeout"`` (ran past its
        deadline; the worker was killed) or ``"error"`` (the call raised, or its worker died or
        never started; ``error`` says which).
    :ivar seconds: wall time from the worker's acknowledgement to the answer (or the kill).
    """

    status: str
    value: Any = None
    error: str | None = None
    seconds: float = 0.0


class WorkerError(RuntimeError):
    """A call that failed inside a worker; its ``repr`` is the worker-side exception's."""

    def __repr__(self) -> str:
        return str(self)


def _worker_main(fd: int, preload: Sequence[str] = ()) -> None:
    """Body of a worker process: receive ``(fn, args)`` pickles, acknowledge, answer; exit at EOF.
    Ignores SIGINT: a terminal's Ctrl-C reaches every process of the run's group, and the trainer
    (which handles it) closes the pool; a worker would only print a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" notice: the pool is the limit
    for name in preload:
        importlib.import_module(name)
    conn = Connection(fd)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            fn, args, timeout_s = pickle.loads(data)
        except BaseException as exc:  # noqa: BLE001 - a bad call is answered, never fatal
            conn.send((ERROR, f"cannot load the call: {exc!r}"))
            continue
        # a backstop for when no parent is left to kill us: SIGXCPU after 2 x timeout_s + 5 s of CPU
        used = resource.getrusage(resource.RUSAGE_SELF)
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(used.ru_utime + used.ru_stime + 2 * timeout_s + 5)
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        conn.send(("start", None))
        try:
            res: tuple = (OK, fn(*args))
        except Exception as exc:  # noqa: BLE001
            res = (ERROR, repr(exc))
        try:
            conn.send(res)
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable return value
            conn.send((ERROR, f"cannot send the result: {exc!r}"))


class _Worker:
    def __init__(self, preload: Sequence[str]):
        parent, child = Pipe()
        fd = child.fileno()
        code = f"from reasonzoo.rewards import _worker_main; _worker_main({fd}, {tuple(preload)!r})"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(fd,), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, env=env)
        child.close()
        self.conn: Connection = parent
        self.job: int | None = None  # index of the call it is running
        self.sent = 0.0  # when the call was sent
        self.acked: float | None = None  # when the worker acknowledged it

    def kill(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _kill_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.kill()
    workers.clear()


class WorkerPool:
    """``workers`` worker processes that run picklable calls, each under a wall-clock deadline.

    :param workers: processes running calls at once (>= 1).
    :param preload: modules every worker imports at start, before its first call (so their
        import time never counts against a deadline).
    :param start_timeout_s: how long a worker may take to start and acknowledge a call before it
        is replaced and the call reported as an error.

    Workers start on the first :meth:`run` and are stopped by :meth:`close` (also at garbage
    collection and interpreter exit). A worker that runs past a deadline or dies is killed and
    replaced. :meth:`run` may be called from any thread; concurrent calls take turns.
    """

    def __init__(self, workers: int = 2, preload: Sequence[str] = (), start_timeout_s: float = 120.0):
        if workers < 1:
            raise ValueError(f"workers={workers}: must be >= 1")
        self.size, self.preload, self.start_timeout_s = workers, tuple(preload), start_timeout_s
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _kill_all, self._workers)
        self.started = 0  #: worker processes started so far (replacements included)

    def _spawn(self) -> _Worker:
        w = _Worker(self.preload)
        self.started += 1
        self._workers.append(w)
        return w

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers.remove(w)
        self._spawn()

    def run(self, calls: Sequence[tuple[Callable, tuple]], timeout_s: float) -> list[Outcome]:
        """Run ``fn(*args)`` for each ``(fn, args)`` of ``calls`` (``fn`` picklable by reference: a
        module-level function) and return their :class:`Outcome` in order. A call still running
        ``timeout_s`` seconds after its worker acknowledged it is a time-out. Never raises for a
        call's own failure."""
        with self._lock:
            for w in [w for w in self._workers if w.job is not None]:  # left busy by an interrupted run
                self._replace(w)
            while len(self._workers) < self.size:
                self._spawn()
            results: list[Outcome | None] = [None] * len(calls)
            pending = collections.deque(range(len(calls)))
            while pending or any(w.job is not None for w in self._workers):
                for w in list(self._workers):
                    if w.job is None and pending:
                        i = pending.popleft()
                        try:
                            payload = pickle.dumps((*calls[i], timeout_s))
                        except Exception as exc:  # noqa: BLE001
                            results[i] = Outcome(ERROR, error=f"cannot send the call: {exc!r}")
                            continue
                        try:
                            w.conn.send_bytes(payload)
                        except OSError as exc:  # the worker died while idle
                            results[i] = Outcome(ERROR, error=f"worker gone: {exc!r}")
                            self._replace(w)
                            continue
                        w.job, w.sent, w.acked = i, time.monotonic(), None
                busy = [w for w in self._workers if w.job is not None]
                if not busy:
                    continue
                now = time.monotonic()
                deadline = min(self._deadline(w, timeout_s) for w in busy)
                for conn in wait([w.conn for w in busy], timeout=max(0.0, deadline - now)):
                    w = next(w for w in busy if w.conn is conn)
                    try:
                        kind, value = w.conn.recv()
                    except (EOFError, OSError):
                        results[w.job] = Outcome(ERROR, error=f"worker exited with code {w.proc.poll()}",
                                                 seconds=time.monotonic() - (w.acked or w.sent))
                        self._replace(w)
                        continue
                    if kind == "start":
                        w.acked = time.monotonic()
                        continue
                    results[w.job] = Outcome(kind, value if kind == OK else None, None if kind == OK else value,
                                             seconds=time.monotonic() - (w.acked or w.sent))
                    w.job = None
                now = time.monotonic()
                for w in [w for w in self._workers if w.job is not None and now >= self._deadline(w, timeout_s)]:
                    if w.acked is not None:
                        results[w.job] = Outcome(TIMEOUT, error=f"ran past {timeout_s} s", seconds=now - w.acked)
                    else:
                        results[w.job] = Outcome(ERROR, error=f"worker did not start within {self.start_timeout_s} s")
                    self._replace(w)
            return [r if r is not None else Outcome(ERROR, error="not run") for r in results]

    def _deadline(self, w: _Worker, timeout_s: float) -> float:
        return w.acked + timeout_s if w.acked is not None else w.sent + self.start_timeout_s

    def close(self) -> None:
        """Stop every worker (a later :meth:`run` starts new ones)."""
        with self._lock:
            _kill_all(self._workers)


class LazyPool:
    """A :class:`WorkerPool` created on first use, for a plugin to hold from ``__init__`` and
    close in ``rz_run_end``."""

    def __init__(self, workers: int, preload: Sequence[str] = ()):
        self.workers, self.preload = workers, tuple(preload)
        self._pool: WorkerPool | None = None
        self._lock = threading.Lock()

    def get(self) -> WorkerPool:
        with self._lock:
            if self._pool is None:
                self._pool = WorkerPool(self.workers, self.preload)
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def score_in_workers(groups: Sequence["RolloutGroup"], pool: WorkerPool, call: Callable[["Rollout"], tuple[Callable, tuple]],
                     plugin: str, *, truncated: str, timeout_s: float) -> list[list["RewardResult"]]:
    """Score every rollout in ``pool`` under a ``timeout_s`` deadline each.

    :param call: ``call(rollout) -> (fn, args)``, run in this process; ``fn(*args)`` runs in a
        worker and returns ``{"score": float, "correct": bool, "info": dict}``. ``info`` should
        hold ``"extracted"``: a canonical string of the extracted answer (equal for equivalent
        answers where feasible; majority voting groups on it) or None.
    :param truncated: as in :func:`score_groups`; rollouts scored 0 by it are not sent.
    :returns: as :func:`score_groups`. A time-out scores 0 with ``info = {"extracted": None,
        "timeout": True, "seconds": ...}`` (one warning per call of this function names the
        problems); an exception in ``call`` or ``fn`` scores 0 with ``info["error"]`` (logged).
    """
    from .types import RewardResult

    todo = [r for g in groups for r in g.rollouts if truncated == "score" or not _is_truncated(r)]
    made: dict[int, Any] = {}
    for r in todo:
        try:
            made[id(r)] = call(r)
        except Exception as exc:  # noqa: BLE001 - re-raised per rollout inside score_groups
            made[id(r)] = exc
    sendable = [r for r in todo if not isinstance(made[id(r)], Exception)]
    outcomes = dict(zip(map(id, sendable), pool.run([made[id(r)] for r in sendable], timeout_s)))
    late = sorted({r.problem.uid for r in sendable if outcomes[id(r)].status == TIMEOUT})
    if late:
        log.warning("reward %s: %d rollout(s) ran past reward.timeout_s=%s and scored 0 (problems %s)",
                    plugin, sum(o.status == TIMEOUT for o in outcomes.values()), timeout_s, ", ".join(map(repr, late)))

    def result(r: "Rollout") -> "RewardResult":
        got = made[id(r)]
        if isinstance(got, Exception):
            raise got
        o = outcomes[id(r)]
        if o.status == TIMEOUT:
            return RewardResult(score=0.0, correct=False, info={"extracted": None, "timeout": True, "seconds": o.seconds})
        if o.status == ERROR:
            raise WorkerError(o.error)
        v: Mapping[str, Any] = o.value
        return RewardResult(score=float(v["score"]), correct=bool(v["correct"]), info=dict(v.get("info", {})))

    return score_groups(groups, result, plugin, truncated=truncated)


class WorkerReward:
    """Base class of reward plugins that score each rollout in :class:`WorkerPool` processes under
    ``cfg.timeout_s`` (``cfg``: a :class:`TimedRewardConfig`, with an optional ``pattern``).

    A subclass defines :meth:`call` (what a worker runs for one rollout) and may list modules its
    workers import up front in :attr:`preload` (the subclass's own module is always added). The
    hooks: ``rz_reward`` scores every rollout with :func:`score_in_workers` (``reward.truncated``
    applied), ``rz_iteration_end`` returns :func:`reward_metrics`, ``rz_run_end`` stops the workers.

    :raises ValueError: from ``__init__``, naming the key, for an out-of-range ``truncated``,
        ``timeout_s``, ``workers`` or an invalid ``pattern`` regex.
    """

    preload: tuple[str, ...] = ()  #: modules each worker imports before its first call

    def __init__(self, cfg: TimedRewardConfig):
        check_config(cfg)
        check_pattern(getattr(cfg, "pattern", None))
        self.cfg = cfg
        self.pool = LazyPool(cfg.workers, preload=(*self.preload, type(self).__module__))

    @property
    def name(self) -> str:
        """The plugin's name (for log lines)."""
        return getattr(type(self), "__reasonzoo_plugin__", (None, type(self).__name__))[1]

    def call(self, rollout: "Rollout") -> tuple[Callable, tuple]:
        """``(fn, args)`` for one rollout: ``fn(*args)`` runs in a worker (module-level, picklable
        by reference) and returns ``{"score": float, "correct": bool, "info": {"extracted": ...}}``."""
        raise NotImplementedError

    @hookimpl
    def rz_reward(self, ctx, groups):
        return score_in_workers(groups, self.pool.get(), self.call, self.name, truncated=self.cfg.truncated,
                                timeout_s=self.cfg.timeout_s)

    @hookimpl
    def rz_iteration_end(self, ctx, groups):
        return reward_metrics(groups)

    @hookimpl
    def rz_run_end(self, ctx, summary):
        self.pool.close()
