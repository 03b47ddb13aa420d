"""Running one exec-based sandbox step as a subprocess of the trainer (``bwrap`` and
``unsafe_subprocess`` backends).

Scope: start the command with stdin from a memfd, read stdout/stderr with limits while waiting on a
pidfd, enforce the wall limit, reap with wait4 (for CPU time and peak RSS), then let the backend
kill what is left and collect the remaining output. Thread-safe: no ``preexec_fn``; rlimits are set
by ``prlimit(1)`` inside the command line.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

from . import procio


def run_step(argv: list[str], stdin: bytes, limits: dict, *, cwd: str | None, env: dict[str, str],
             pass_fds: tuple[int, ...] = (), new_session: bool = False,
             after_exit: Callable[[int], None] = lambda pid: None,
             over_limit: Callable[[], bool] | None = None) -> tuple[dict, bytes, bytes]:
    """Run ``argv`` once; returns (facts, stdout, stderr) where facts has exit_code, signal,
    cpu_s, max_rss, wall_s, wall_exceeded, output_exceeded and limit_exceeded. ``after_exit(pid)``
    runs once the main process is reaped, to kill anything it left behind; ``over_limit()``, polled
    while it runs, kills it when it returns True (``procio.pump``)."""
    in_fd = os.memfd_create("stdin")
    try:
        os.write(in_fd, stdin)
        os.lseek(in_fd, 0, os.SEEK_SET)
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=in_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=cwd, env=env, pass_fds=pass_fds, start_new_session=new_session,
                                close_fds=True)
    finally:
        os.close(in_fd)
    pidfd = os.pidfd_open(proc.pid)
    cap = procio.Capture(limits["output_bytes"], limits["stderr_bytes"])
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    try:
        why = procio.pump(pidfd, out_fd, err_fd, start + limits["wall_s"], cap, over_limit)
        if why != "exited":
            procio.kill_quietly(proc.pid)
        facts = procio.wait_facts(proc.pid)
        proc.returncode = facts["exit_code"] if facts["signal"] is None else -facts["signal"]
        facts["wall_s"] = time.monotonic() - start
        after_exit(proc.pid)
        procio.drain(out_fd, err_fd, cap, timeout=0.5)
    finally:
        os.close(pidfd)
        proc.stdout.close()
        proc.stderr.close()
    facts.update(wall_exceeded=why == "deadline", output_exceeded=cap.out_exceeded,
                 limit_exceeded=why == "limit")
    return facts, bytes(cap.stdout), bytes(cap.stderr)
