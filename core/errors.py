"""Errors the console entry points report in one line, and their exit codes.

``reasonzoo-train`` and ``reasonzoo`` run their work through :func:`run_guarded`: a known error
prints ``reasonzoo: <kind>: <culprit>`` on one line of stderr, without a traceback (set
``REASONZOO_DEBUG=1`` to see it), and exits with

* :data:`EXIT_USAGE` (2): the command line or the config is wrong (unknown key or plugin, a value
  out of its range, a run directory that may not be used); nothing was run;
* :data:`EXIT_FAILURE` (1): the run failed on its inputs or its environment (a bad data file or
  model directory, a corrupt checkpoint, a read-only or full disk);
* :data:`EXIT_SIGINT` (130) / :data:`EXIT_SIGTERM` (143): stopped by Ctrl-C or ``kill``.

An unexpected exception (a bug) keeps its traceback and exits 1.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from typing import Callable

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class UsageError(Exception):
    """The command line or the run directory cannot be used as given (exit 2)."""


class RunDirError(UsageError):
    """A run directory is live (locked by another run) or holds a run that a fresh run would
    destroy."""


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM arrived during a run: raised where the run was (the current step is
    abandoned; checkpoints are written atomically, so the last complete one is kept). A
    ``BaseException`` like :class:`KeyboardInterrupt`, so ``except Exception`` in plugins lets it pass.

    :ivar signum: the signal number; the exit code is ``128 + signum`` (130 for SIGINT, 143 for SIGTERM).
    :ivar run_dir: the run directory, and :ivar checkpoint: its last complete checkpoint (or ``None``),
        filled in by :func:`reasonzoo.trainer.train` for the resume hint.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.run_dir = None
        self.checkpoint = None

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        if self.run_dir is None:
            return f"stopped by {name}"
        if self.checkpoint is None:
            return f"stopped by {name}; {self.run_dir} has no checkpoint yet: start again (resume={self.run_dir} starts afresh)"
        return (f"stopped by {name}; last complete checkpoint {self.checkpoint} kept; continue with: "
                f"reasonzoo-train resume={self.run_dir}")


@contextlib.contextmanager
def signals_raise():
    """While active (main thread only), the first SIGINT or SIGTERM raises :class:`RunInterrupted`
    where the program is; the handlers are then back to their defaults, so a second signal stops a
    hanging clean-up the usual way. The previous handlers are restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.getsignal(s) for s in sigs}

    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise RunInterrupted(signum)

    for s in sigs:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class CheckpointError(OSError):
    """A checkpoint file is missing, truncated or corrupt; the message names the file and what was
    expected."""


def _usage_types() -> tuple[type, ...]:
    from .registry import PluginError

    return (PluginError, UsageError)


class PlacementError(RuntimeError):
    """A part of the run placed outside this process (a trainer rank, an actor) died or could not
    start; the message names it, its cause and how to continue (``resume=<run dir>``)."""


#: Failures of a run on its inputs or environment: reported in one line, exit 1.
RUN_FAILURES: tuple[type, ...] = (OSError, ValueError, UnicodeDecodeError, CheckpointError, PlacementError)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (continuation lines joined with ``; ``)."""
    text = str(exc)
    if isinstance(exc, UnicodeDecodeError):  # names no file: the reader should have wrapped it
        text = f"not UTF-8 text ({exc})"
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return "; ".join(parts) or type(exc).__name__


def report(exc: BaseException) -> int:
    """Print a known error in one line (traceback with ``REASONZOO_DEBUG=1``) and return its exit
    code (a signal: ``128 + signum``); re-raise an unknown one."""
    debug = os.environ.get("REASONZOO_DEBUG", "") not in ("", "0")
    if isinstance(exc, (RunInterrupted, KeyboardInterrupt)):
        if debug:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        signum = exc.signum if isinstance(exc, RunInterrupted) else signal.SIGINT
        print(f"reasonzoo: {exc if isinstance(exc, RunInterrupted) else 'stopped by SIGINT'}", file=sys.stderr)
        return 128 + int(signum)
    if isinstance(exc, _usage_types()):
        code, kind = EXIT_USAGE, "usage error" if isinstance(exc, UsageError) else "config error"
    elif isinstance(exc, RUN_FAILURES):
        code, kind = EXIT_FAILURE, "error"
    else:
        raise exc
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    print(f"reasonzoo: {kind}: {one_line(exc)}", file=sys.stderr)
    return code


def run_guarded(fn: Callable[[], object]) -> int:
    """Run ``fn`` and turn known errors (and Ctrl-C) into one line and an exit code (0 on success)."""
    try:
        fn()
    except (Exception, KeyboardInterrupt, RunInterrupted) as exc:  # unknown ones are re-raised by report
        return report(exc)
    return 0
