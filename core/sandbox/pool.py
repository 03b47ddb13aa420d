"""``SandboxPool``: a bounded, thread-safe pool of sandbox workers, and ``judge``.

Scope: choose and validate the backend, hand one worker to each caller at a time (callers beyond
``workers`` wait), start workers lazily, turn any failure inside a worker into a ``sandbox_error``
result for that one run, and judge a program on tests. ``run`` may be called from any number of
threads; ``submit`` returns a Future (a pool-owned thread per worker does the waiting).
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import dataclasses
import itertools
import os
import queue
import threading
import traceback

from . import syscall_filter
from .bwrap import BwrapWorker, ScratchRoot
from .config import Limits, SandboxConfig
from .forkserver import ForkServerWorker
from .languages import LANGUAGES, Language
from .probe import default_backend, probe
from .results import OK, SKIPPED, WRONG_ANSWER, JudgeResult, RunResult, outputs_match, sandbox_error
from .unsafe import UnsafeWorker

_uid_counter = itertools.count()
_uid_lock = threading.Lock()


def _next_uid(base: int) -> int:
    """A uid no other live worker of this process uses and unlikely to clash across processes."""
    with _uid_lock:
        n = next(_uid_counter) % 128
    return base + (os.getpid() % 65536) * 128 + n


class SandboxPool:
    """Runs untrusted programs in sandboxes, ``config.workers`` at a time.

    ``SandboxPool(config)`` or ``SandboxPool(backend="bwrap", workers=4, ...)`` (keyword arguments
    override ``SandboxConfig`` fields). Use as a context manager or call ``close()``.
    """

    def __init__(self, config: SandboxConfig | None = None, *,
                 languages: dict[str, Language] | None = None, **overrides):
        fields = {f.name for f in dataclasses.fields(SandboxConfig)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(f"unknown SandboxConfig key(s) {unknown}; allowed: {sorted(fields)}")
        self.config = dataclasses.replace(config or SandboxConfig(), **overrides)
        self.languages = dict(languages if languages is not None else LANGUAGES)
        self.info = probe(self.config.python)
        cfg = self.config
        if cfg.backend == "auto":
            self.backend = default_backend(self.info, cfg.allow_unsandboxed)
        else:
            self.backend = cfg.backend
            problem = self.info.backends[self.backend]
            if problem:
                raise RuntimeError(f"SandboxConfig.backend={self.backend!r} is not usable on this "
                                   f"host: {problem}")
        if self.backend == "unsafe_subprocess" and not cfg.allow_unsandboxed:
            raise RuntimeError("backend 'unsafe_subprocess' runs programs WITHOUT isolation (they can "
                               "read your files and use the network); pass "
                               "SandboxConfig(allow_unsandboxed=True) to use it anyway")
        self._bpf = syscall_filter.build_bpf() if self.backend != "unsafe_subprocess" else b""
        self._scratch = ScratchRoot()
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._workers: list = []
        self._lock = threading.Lock()
        self._closed = False
        self._executor: cf.ThreadPoolExecutor | None = None
        for _ in range(cfg.workers):
            self._idle.put(None)  # a token; the worker behind it is created on first use

    # ---- lifecycle ----
    def _make_worker(self):
        cfg, info = self.config, self.info
        if self.backend == "forkserver":
            return ForkServerWorker(cfg, info, _next_uid(cfg.uid_base), self._bpf)
        if self.backend == "bwrap":
            uid = _next_uid(cfg.uid_base) if info.euid == 0 else None
            return BwrapWorker(cfg, info, uid, self._bpf, self._scratch)
        return UnsafeWorker(cfg, info, self._scratch)

    def close(self) -> None:
        """Stop every worker and remove cgroups and scratch directories. Waits for running runs."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        for _ in range(self.config.workers):
            worker = self._idle.get()  # waits for runs in flight to hand their worker back
            if worker is not None:
                worker.close()
        self._scratch.close()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- running ----
    def run(self, program: str, language: str = "python", stdin: str = "",
            limits: Limits | None = None) -> RunResult:
        """Run ``program`` once with ``stdin``; blocks until a worker is free. Never raises for
        anything the program does; a failure of the sandbox itself gives ``sandbox_error``."""
        lang = self._language(language)
        limits = limits or self.config.limits
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be a reasonzoo.sandbox.Limits, got {type(limits).__name__}")
        if self._closed:
            raise RuntimeError("SandboxPool is closed")
        worker = self._idle.get()
        try:
            if worker is None:
                worker = self._make_worker()
            return worker.execute(lang, program, stdin, limits)
        except Exception:  # noqa: BLE001 - the caller must only ever see a result
            return sandbox_error(f"sandbox failure: {traceback.format_exc(limit=6)}", self.backend)
        finally:
            self._idle.put(worker)

    def submit(self, program: str, language: str = "python", stdin: str = "",
               limits: Limits | None = None) -> cf.Future:
        """Like ``run`` but returns a Future at once."""
        self._language(language)
        with self._lock:
            if self._closed:
                raise RuntimeError("SandboxPool is closed")
            if self._executor is None:
                self._executor = cf.ThreadPoolExecutor(self.config.workers,
                                                       thread_name_prefix="reasonzoo-sandbox")
            return self._executor.submit(self.run, program, language, stdin, limits)

    def judge(self, program: str, tests: list[tuple[str, str]], limits: Limits | None = None,
              mode: str = "fraction", language: str = "python") -> JudgeResult:
        """Run ``program`` on each ``(stdin, expected_stdout)`` test; outputs are compared with
        ``outputs_match`` (whitespace-normalised lines). ``mode="fraction"``: score = passed/total;
        ``mode="all"``: 1.0 if all pass else 0.0, and tests not yet started when one fails are
        ``skipped``. Tests run concurrently on the pool's workers."""
        if mode not in ("fraction", "all"):
            raise ValueError(f"judge mode must be 'fraction' or 'all', got {mode!r}")
        if not tests:
            raise ValueError("judge needs at least one (stdin, expected_stdout) test")
        futures = [self.submit(program, language, stdin, limits) for stdin, _ in tests]
        verdicts: list[str] = [SKIPPED] * len(tests)
        runs: list[RunResult | None] = [None] * len(tests)
        for i, (fut, (_, expected)) in enumerate(zip(futures, tests)):
            if fut.cancelled():
                continue
            res = fut.result()
            runs[i] = res
            verdict = res.verdict
            if verdict == OK and not outputs_match(res.stdout, expected):
                verdict = WRONG_ANSWER
            verdicts[i] = verdict
            if verdict != OK and mode == "all":
                for later in futures[i + 1:]:
                    later.cancel()  # only those not yet started; the others are collected
        passed = sum(v == OK for v in verdicts)
        score = passed / len(tests) if mode == "fraction" else float(passed == len(tests))
        return JudgeResult(score=score, verdicts=verdicts, runs=runs)

    def _language(self, name: str) -> Language:
        try:
            return self.languages[name]
        except KeyError:
            raise ValueError(f"unknown language {name!r}; configured: {sorted(self.languages)}") from None


_default_pool: SandboxPool | None = None
_default_lock = threading.Lock()


def default_pool() -> SandboxPool:
    """A process-wide pool with the default config, created on first use, closed at exit."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = SandboxPool()
            atexit.register(_default_pool.close)
        return _default_pool


def judge(program: str, tests: list[tuple[str, str]], limits: Limits | None = None,
          mode: str = "fraction", language: str = "python", pool: SandboxPool | None = None
          ) -> JudgeResult:
    """``SandboxPool.judge`` on ``pool`` (default: :func:`default_pool`)."""
    return (pool or default_pool()).judge(program, tests, limits, mode, language)
