"""Host capability probe: which sandbox backends can run here, and which one is the default.

Scope: detect, once per process, what the host offers (root or not, a working bubblewrap, user
namespaces, cgroup v1 memory/pids/cpuacct groups, seccomp via libseccomp, the Python to run programs with)
and derive for each backend either "usable" or the reason it is not. ``default_backend`` picks the
fastest usable isolating backend and never an unsandboxed one unless explicitly allowed.
"""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass, field

from . import cgroups, rootfs, syscall_filter


@dataclass(frozen=True)
class HostInfo:
    """What :func:`probe` found."""

    euid: int
    """Effective uid of the trainer."""
    bwrap: str | None
    """Path of a bubblewrap binary that started a test sandbox, or None."""
    bwrap_problem: str
    """Why bubblewrap is unusable ('' if usable)."""
    user_namespaces: bool
    """Whether unprivileged user namespaces can be created (needed by bwrap when not root)."""
    cgroup_dirs: dict[str, str]
    """Writable cgroup v1 parent directories by controller (``memory``, ``pids``, ``cpuacct``)."""
    cgroup_problem: str
    """Why a cgroup controller is unusable ('' if both are usable)."""
    seccomp: bool
    """Whether the kernel supports seccomp filters and libseccomp compiled the policy."""
    seccomp_problem: str
    """Why seccomp is unusable ('' if usable)."""
    python: str
    """Interpreter programs run with."""
    backends: dict[str, str] = field(default_factory=dict)
    """Backend name -> '' if usable, else the reason it is not."""

    def usable(self, backend: str) -> bool:
        return self.backends.get(backend) == ""


def _userns_ok() -> bool:
    try:
        return subprocess.run(["unshare", "--user", "--map-root-user", "true"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _try_bwrap(bwrap: str, python: str, as_root: bool) -> str:
    argv = [bwrap, *rootfs.namespace_args(as_root), *rootfs.root_args(python),
            *rootfs.scratch_args(1 << 20), "--", python, "-I", "-S", "-c", "print('ok')"]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=20, text=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap failed to start: {exc}"
    if proc.stdout.strip() != "ok":
        return f"bwrap test sandbox failed (exit {proc.returncode}): {proc.stderr.strip()[:300]}"
    return ""


def _seccomp_problem() -> str:
    try:
        with open("/proc/self/status") as f:
            if "Seccomp:" not in f.read():
                return "kernel without seccomp support"
        syscall_filter.build_bpf()
    except OSError as exc:
        return str(exc)
    return ""


@functools.lru_cache(maxsize=8)
def probe(python: str = "") -> HostInfo:
    """Inspect the host (cached per interpreter path); cheap after the first call (~50 ms)."""
    python = python or rootfs.default_python()
    euid = os.geteuid()
    as_root = euid == 0
    userns = _userns_ok()
    bwrap = rootfs.find_bwrap()
    bwrap_problem = ("bubblewrap not installed (Debian package: bubblewrap)" if bwrap is None
                     else _try_bwrap(bwrap, python, as_root))
    if bwrap_problem:
        bwrap = None
    cg_dirs, cg_problem = cgroups.controller_dirs() if as_root else ({}, "not root: cgroups not managed")
    sc_problem = _seccomp_problem()

    backends = {}
    base = bwrap_problem or (sc_problem and f"seccomp unavailable: {sc_problem}")
    backends["bwrap"] = base
    if base:
        backends["forkserver"] = base
    elif not as_root:
        backends["forkserver"] = (f"needs root (euid 0) to give each worker its own uid; running as "
                                  f"uid {euid}: use backend 'bwrap'")
    else:
        backends["forkserver"] = ""
    backends["unsafe_subprocess"] = ""
    return HostInfo(euid=euid, bwrap=bwrap, bwrap_problem=bwrap_problem, user_namespaces=userns,
                    cgroup_dirs=cg_dirs, cgroup_problem=cg_problem, seccomp=not sc_problem,
                    seccomp_problem=sc_problem, python=python, backends=backends)


def default_backend(info: HostInfo, allow_unsandboxed: bool = False) -> str:
    """The fastest usable backend; raises RuntimeError if only an unsandboxed one is left and it
    was not explicitly allowed."""
    for name in ("forkserver", "bwrap"):
        if info.usable(name):
            return name
    if allow_unsandboxed:
        return "unsafe_subprocess"
    reasons = "; ".join(f"{k}: {v}" for k, v in info.backends.items() if v)
    raise RuntimeError(
        f"no isolating sandbox backend is usable on this host ({reasons}). Refusing to run untrusted "
        f"code unsandboxed; install bubblewrap, or pass SandboxConfig(backend='unsafe_subprocess', "
        f"allow_unsandboxed=True) if the programs are trusted.")
