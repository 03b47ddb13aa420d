"""Bubblewrap command lines: a minimal read-only root, fresh namespaces, a tmpfs scratch.

Scope: the bwrap arguments shared by the ``forkserver`` backend (which starts its server this way)
and the ``bwrap`` backend (which starts every run this way). The sandbox sees: /usr and the
/bin, /sbin, /lib* links or directories read-only; /etc/ld.so.cache, /etc/ld.so.conf(.d) and
/etc/alternatives read-only; the Python install prefix read-only when it is outside /usr; a fresh
/proc of its own pid namespace; a minimal /dev; and a size-limited tmpfs at /scratch. Nothing else:
not the trainer's working directory, home, /tmp or /etc/passwd. Namespaces: pid, net (loopback
only), ipc, uts, mount, cgroup; a user namespace only when not root (as root, real distinct uids
are used instead, since a single-uid user namespace cannot host them).
"""

from __future__ import annotations

import os
import shutil
import sys

SCRATCH = "/scratch"
"""Mount point of the per-sandbox tmpfs; the only writable directory."""

_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives")


def default_python() -> str:
    """The base interpreter of the running Python (outside any virtualenv), resolved."""
    exe = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(exe)


def python_prefix(python: str) -> str:
    """Install prefix of ``python`` (``<prefix>/bin/python3.x`` -> ``<prefix>``)."""
    return os.path.dirname(os.path.dirname(os.path.realpath(python)))


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def root_args(python: str) -> list[str]:
    """Bind-mount arguments for the minimal read-only root."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    for path in _ETC:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    prefix = python_prefix(python)
    if not prefix.startswith("/usr/") and prefix != "/usr":
        parts = prefix.strip("/").split("/")
        for i in range(1, len(parts)):  # bwrap would create missing parents as 0700 (e.g. /root)
            args += ["--perms", "0755", "--dir", "/" + "/".join(parts[:i])]
        args += ["--ro-bind", prefix, prefix]
    return args


MASKED_PROC = ("loadavg", "uptime", "cmdline", "diskstats", "partitions", "swaps", "interrupts",
               "softirqs", "vmstat", "zoneinfo", "buddyinfo", "pagetypeinfo", "iomem", "ioports", "keys",
               "key-users", "kallsyms", "timer_list", "sched_debug", "slabinfo", "vmallocinfo", "config.gz",
               "kpagecount", "kpageflags", "kpagecgroup", "locks", "mtrr")
"""Files of the sandbox's fresh /proc that describe the host rather than the sandbox (its load, uptime,
kernel command line, disks, interrupts, kernel memory and symbols, other namespaces' file locks):
each is covered by a read-only file with neutral content (``loadavg``: all zero, so
``os.getloadavg()`` still works; the others empty). What stays visible is listed in docs/sandbox.md."""
_PROC_CONTENT = {"loadavg": b"0.00 0.00 0.00 1/1 1\n", "uptime": b"0.00 0.00\n"}


def masked_proc_args() -> tuple[list[str], list[int]]:
    """bwrap arguments that cover each file of :data:`MASKED_PROC` this kernel has, and the fds
    they read (``--ro-bind-data``; a file on bwrap's own tmpfs, so no host path shows in
    mountinfo). The caller passes the fds to bwrap and closes them after starting it."""
    args, fds = [], []
    for name in MASKED_PROC:
        if not os.path.exists(f"/proc/{name}"):
            continue
        r, w = os.pipe()
        try:
            os.write(w, _PROC_CONTENT.get(name, b""))
        finally:
            os.close(w)
        fds.append(r)
        args += ["--perms", "0444", "--ro-bind-data", str(r), f"/proc/{name}"]
    return args, fds


def namespace_args(as_root: bool, proc_masks: list[str] = ()) -> list[str]:
    """Namespace and process options common to both backends; ``proc_masks`` from
    :func:`masked_proc_args`."""
    args = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox",
            "--proc", "/proc", *proc_masks, "--dev", "/dev"]
    if not as_root:
        args.insert(0, "--unshare-user")
        args += ["--disable-userns"]
    return args


def scratch_args(size: int) -> list[str]:
    return ["--size", str(size), "--perms", "0755", "--tmpfs", SCRATCH]


def env_args(env: dict[str, str]) -> list[str]:
    args = []
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args
