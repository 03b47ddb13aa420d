"""Configuration of the sandbox: per-run resource limits and per-pool settings.

Scope: the two dataclasses a caller fills in (``Limits`` for one run, ``SandboxConfig`` for a pool)
and their validation. Every field has a docstring; a bad value raises ``ValueError`` naming the
field and what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

MiB = 1 << 20

BACKENDS = ("auto", "forkserver", "bwrap", "unsafe_subprocess")
"""Accepted values of ``SandboxConfig.backend``."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one program run. Exceeding one gives the verdict named in its doc."""

    cpu_s: float = 2.0
    """CPU seconds (user + system) of the program's main process and the children it waited for.
    Enforced by RLIMIT_CPU rounded up to whole seconds (soft) with a hard limit one second above;
    the verdict compares the measured time with this exact value. -> ``time_limit``."""

    wall_s: float = 5.0
    """Wall-clock seconds from fork to exit; the program is SIGKILLed when it passes. Catches
    sleeping or blocked programs that use no CPU. -> ``time_limit``."""

    memory_bytes: int = 256 * MiB
    """Memory. RLIMIT_AS (virtual address space) for languages that tolerate it (Python: a failed
    allocation raises MemoryError), and the memory cgroup limit where a cgroup is available
    (physical pages, including files written to the tmpfs scratch). -> ``memory_limit``."""

    processes: int = 16
    """Processes + threads of the run's uid (RLIMIT_NPROC, per-worker uid) and the pids cgroup
    limit. fork()/thread creation beyond it fails with EAGAIN inside the program."""

    open_files: int = 64
    """Open file descriptors per process (RLIMIT_NOFILE); beyond it open() fails with EMFILE."""

    output_bytes: int = 1 * MiB
    """Bytes of stdout kept; writing more kills the program. -> ``output_limit``."""

    stderr_bytes: int = 64 * 1024
    """Bytes of stderr kept; the rest is read and discarded (never a failure by itself)."""

    file_bytes: int = 8 * MiB
    """Largest file the program may write (RLIMIT_FSIZE); a larger write gets SIGXFSZ.
    -> ``output_limit``."""

    stack_bytes: int = 64 * MiB
    """Main-thread stack (RLIMIT_STACK). Deep recursion beyond it is a segfault -> ``runtime_error``."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"Limits.{f.name} must be a positive number, got {value!r}")
            if f.type == "int" and not isinstance(value, int):
                raise ValueError(f"Limits.{f.name} must be an int (bytes/count), got {value!r}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SandboxConfig:
    """Settings of a :class:`~reasonzoo.sandbox.SandboxPool`, fixed for its lifetime."""

    backend: str = "auto"
    """Isolation mechanism: ``auto`` (the fastest one ``probe()`` finds usable: forkserver, then
    bwrap), ``forkserver`` (a pre-forked server inside bubblewrap, one fork per run, root only),
    ``bwrap`` (one bubblewrap sandbox per run, any user) or ``unsafe_subprocess`` (plain subprocess
    with rlimits: no isolation; refused unless ``allow_unsandboxed`` is true)."""

    workers: int = 2
    """Programs run at the same time (one fork server or uid slot each)."""

    limits: Limits = field(default_factory=Limits)
    """Default limits for runs that pass none."""

    allow_unsandboxed: bool = False
    """Must be true to use ``unsafe_subprocess`` (explicitly or as ``auto``'s last resort)."""

    python: str = ""
    """Python interpreter for programs and for the fork server; empty: the base interpreter of the
    running Python (not a virtualenv, so the trainer's site-packages are not visible). Its install
    prefix is bind-mounted read-only when it is outside /usr. Programs run with ``-I -S``."""

    scratch_bytes: int = 64 * MiB
    """Size of the tmpfs mounted at /scratch in each sandbox (the only writable place)."""

    uid_base: int = 1_000_000_000
    """First uid of the per-worker uids used when running as root; each worker of each pool gets a
    distinct uid, derived from this base, the trainer's pid and a per-process counter."""

    preimport: tuple[str, ...] = ("math", "itertools", "collections", "functools", "heapq",
                                  "bisect", "re", "string", "random", "operator", "typing",
                                  "fractions", "decimal", "statistics", "array", "copy", "json",
                                  "dataclasses", "datetime", "time", "threading", "atexit",
                                  "traceback")
    """Modules the fork server imports once, so programs that import them pay nothing."""

    start_timeout_s: float = 20.0
    """Seconds to wait for a fork server to start before the run gets ``sandbox_error``."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"SandboxConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1:
            raise ValueError(f"SandboxConfig.workers must be an int >= 1, got {self.workers!r}")
        if not isinstance(self.limits, Limits):
            raise ValueError(f"SandboxConfig.limits must be a Limits instance, got {self.limits!r}")
        if self.scratch_bytes < MiB:
            raise ValueError(f"SandboxConfig.scratch_bytes must be >= 1 MiB, got {self.scratch_bytes}")
        if self.uid_base < 1000 or self.uid_base + (1 << 23) >= 1 << 32:
            raise ValueError(f"SandboxConfig.uid_base must be in [1000, 2**32 - 2**23), got {self.uid_base}")
