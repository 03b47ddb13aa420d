"""Process plumbing shared by the trainer side and the fork server: rlimits, seccomp, I/O pumping.

Scope: the low-level steps of running one sandboxed process once it exists: the rlimit table,
loading a prepared seccomp BPF program with ``prctl``, reading stdout/stderr with size limits while
waiting on a pidfd (never on pipe EOF, since an escaped grandchild may hold the pipes open), and
turning ``wait4`` results into numbers.

Stdlib-only, no package-relative imports: the fork server imports it as a top-level module inside the
sandbox. Linux only (pidfd_open needs Linux 5.3).
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import resource
import selectors
import signal
import stat
import time
from dataclasses import dataclass, field

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int


def prctl(option: int, arg2: int = 0) -> None:
    """Call prctl(2) with one argument; raise OSError on failure."""
    if _libc.prctl(option, arg2, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class PreparedFilter:
    """A seccomp BPF program held in memory, ready to be loaded after fork with two syscalls."""

    def __init__(self, bpf: bytes):
        if not bpf or len(bpf) % 8:
            raise ValueError(f"BPF program must be a non-empty multiple of 8 bytes, got {len(bpf)}")
        self._buf = ctypes.create_string_buffer(bpf, len(bpf))
        self._prog = _SockFprog(len(bpf) // 8, ctypes.addressof(self._buf))

    def install(self) -> None:
        """Set no_new_privs and load the filter into the calling process (irreversible)."""
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(self._prog), 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"loading seccomp filter: {os.strerror(err)}")


IPC_RMID = 0


def remove_ipc(objects: dict[str, list[int]]) -> None:
    """Remove System V IPC objects (``{"shm"|"msg"|"sem": [id, ...]}``) with ``IPC_RMID``; the
    caller must own or have created them. Raises ``OSError`` for one that could not be removed
    (other than one already gone)."""
    calls = {"shm": lambda i: _libc.shmctl(i, IPC_RMID, None), "msg": lambda i: _libc.msgctl(i, IPC_RMID, None),
             "sem": lambda i: _libc.semctl(i, 0, IPC_RMID)}
    for kind, ids in objects.items():
        for ident in ids:
            if calls[kind](ident) != 0:
                err = ctypes.get_errno()
                if err not in (errno.EINVAL, errno.EIDRM):
                    raise OSError(err, f"removing {kind} {ident}: {os.strerror(err)}")


def rlimit_table(limits: dict, address_space: bool) -> list[tuple[int, str, int, int]]:
    """Rlimits for one run as ``(resource, prlimit option, soft, hard)``.

    ``limits`` holds the fields of ``reasonzoo.sandbox.Limits``. The CPU limit is rounded up to whole
    seconds and its hard limit is one second above the soft one: SIGXCPU first, SIGKILL after (a
    pid-1 process ignores SIGXCPU, the hard limit does not depend on it).
    """
    cpu = max(1, math.ceil(limits["cpu_s"]))
    table = [
        (resource.RLIMIT_CPU, "cpu", cpu, cpu + 1),
        (resource.RLIMIT_NPROC, "nproc", limits["processes"], limits["processes"]),
        (resource.RLIMIT_NOFILE, "nofile", limits["open_files"], limits["open_files"]),
        (resource.RLIMIT_FSIZE, "fsize", limits["file_bytes"], limits["file_bytes"]),
        (resource.RLIMIT_STACK, "stack", limits["stack_bytes"], limits["stack_bytes"]),
        (resource.RLIMIT_CORE, "core", 0, 0),
    ]
    if address_space:
        table.append((resource.RLIMIT_AS, "as", limits["memory_bytes"], limits["memory_bytes"]))
    return table


def apply_rlimits(limits: dict, address_space: bool) -> None:
    """Set every rlimit of :func:`rlimit_table` on the calling process."""
    for res, _, soft, hard in rlimit_table(limits, address_space):
        resource.setrlimit(res, (soft, hard))


def prlimit_argv(limits: dict, address_space: bool) -> list[str]:
    """The same rlimits as a ``prlimit(1)`` command prefix (util-linux), for exec-based backends."""
    argv = ["prlimit"]
    for _, name, soft, hard in rlimit_table(limits, address_space):
        argv.append(f"--{name}={soft}:{hard}")
    return argv + ["--"]


@dataclass
class Capture:
    """Output read from one run. stdout beyond ``out_limit`` marks the run; stderr is truncated."""

    out_limit: int
    err_limit: int
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    out_exceeded: bool = False

    def take(self, which: str, fd: int) -> int:
        """Read what ``fd`` holds (at most 64 KiB) into the buffers; returns the bytes read (0 at EOF)."""
        data = os.read(fd, 1 << 16)
        self.add(which, data)
        return len(data)

    def add(self, which: str, data: bytes) -> None:
        if which == "out":
            room = self.out_limit - len(self.stdout)
            self.stdout += data[: max(room, 0)]
            if len(data) > room:
                self.out_exceeded = True
        else:
            room = self.err_limit - len(self.stderr)
            if room > 0:
                self.stderr += data[:room]


class SpliceCapture:
    """Output of one run kept in two memfds, moved there from the pipes with splice(2) so that it
    never enters the reading process's memory (the fork server's, which later runs inherit).
    Same limits as :class:`Capture`; ``out``/``err`` are the memfds, ``*_len`` their sizes."""

    def __init__(self, out_limit: int, err_limit: int):
        self.out_limit, self.err_limit = out_limit, err_limit
        self.out = os.memfd_create("stdout")
        self.err = os.memfd_create("stderr")
        self._null = os.open("/dev/null", os.O_WRONLY)
        self.out_len = self.err_len = 0
        self.out_exceeded = False

    def take(self, which: str, fd: int) -> int:
        """Move what ``fd`` holds (at most 64 KiB); returns the bytes moved (0 at EOF)."""
        if which == "out":
            room = self.out_limit - self.out_len
            if room > 0:
                n = os.splice(fd, self.out, min(room, 1 << 16))
                self.out_len += n
                return n
            n = os.splice(fd, self._null, 1 << 16)
            self.out_exceeded |= n > 0
            return n
        room = self.err_limit - self.err_len
        if room > 0:
            n = os.splice(fd, self.err, min(room, 1 << 16))
            self.err_len += n
            return n
        return os.splice(fd, self._null, 1 << 16)  # read and discarded, never a failure

    def close(self) -> None:
        for fd in (self.out, self.err, self._null):
            os.close(fd)


def splice_exact(src: int, dst: int, n: int) -> None:
    """Move exactly ``n`` bytes from the pipe ``src`` to the file ``dst`` (blocking)."""
    while n:
        moved = os.splice(src, dst, min(n, 1 << 20))
        if not moved:
            raise EOFError(f"pipe closed with {n} bytes still expected")
        n -= moved


def send_memfd(dst: int, src: int, n: int) -> None:
    """Write the first ``n`` bytes of the file ``src`` to ``dst`` with sendfile(2)."""
    offset = 0
    while offset < n:
        sent = os.sendfile(dst, src, offset, n - offset)
        if not sent:
            raise EOFError("sendfile wrote nothing")
        offset += sent


def pump(pidfd: int, out_fd: int, err_fd: int, deadline: float, cap: Capture,
         over_limit=None, poll_s: float = 0.05) -> str:
    """Read both pipes until the process behind ``pidfd`` exits, the deadline passes, stdout
    overflows, or ``over_limit()`` (polled every ``poll_s`` seconds, e.g. the CPU time of the run's
    whole process tree) returns True. Returns ``"exited"``, ``"deadline"``, ``"output"`` or
    ``"limit"``. Never waits for pipe EOF."""
    os.set_blocking(out_fd, False)
    os.set_blocking(err_fd, False)
    names = {out_fd: "out", err_fd: "err"}
    next_poll = time.monotonic() + poll_s
    with selectors.DefaultSelector() as sel:
        sel.register(pidfd, selectors.EVENT_READ)
        for fd in names:
            sel.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return "deadline"
            if over_limit is not None:
                if now >= next_poll:
                    if over_limit():
                        return "limit"
                    next_poll = now + poll_s
                left = min(left, max(next_poll - now, 0.001))
            for key, _ in sel.select(left):
                if key.fd == pidfd:
                    return "exited"
                try:
                    moved = cap.take(names[key.fd], key.fd)
                except BlockingIOError:
                    continue
                if not moved:
                    sel.unregister(key.fd)
                    continue
                if cap.out_exceeded:
                    return "output"


def drain(out_fd: int, err_fd: int, cap: Capture, timeout: float) -> None:
    """Read what is left in the pipes after every writer was killed, for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    names = {out_fd: "out", err_fd: "err"}
    with selectors.DefaultSelector() as sel:
        for fd in names:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for key, _ in sel.select(left):
                try:
                    moved = cap.take(names[key.fd], key.fd)
                except BlockingIOError:
                    continue
                if not moved:
                    sel.unregister(key.fd)


def wait_facts(pid: int) -> dict:
    """Reap ``pid`` with wait4 and return exit code / signal / CPU seconds / peak RSS bytes."""
    _, status, ru = os.wait4(pid, 0)
    return {
        "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "max_rss": ru.ru_maxrss * 1024,
    }


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid``, ignoring a process that is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def remove_tree(path: str) -> None:
    """Remove ``path`` and everything under it, however deep the program made it, without
    recursion and with two directory fds open at a time: every directory below the top is first
    moved up to be a direct child of the top (a fresh name), then emptied; directory permissions
    the program removed are restored first. Only for trees no process is still writing to.
    Raises ``OSError`` if something cannot be removed; a missing ``path`` is not an error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    os.chmod(path, 0o700)
    top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        pending: list[str | None] = [None]  # None: the top itself; names: its direct children
        flat: list[str] = []
        serial = 0
        while pending:
            name = pending.pop()
            if name is None:
                fd = os.dup(top)
            else:
                os.chmod(name, 0o700, dir_fd=top)
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
                flat.append(name)
            try:
                with os.scandir(fd) as it:
                    entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
                for entry, is_dir in entries:
                    if not is_dir:
                        os.unlink(entry, dir_fd=fd)
                    elif name is None:
                        pending.append(entry)  # already a direct child of the top
                    else:
                        while True:  # a name not taken in the top
                            serial += 1
                            new = f".rz-flat-{serial}"
                            try:
                                os.lstat(new, dir_fd=top)
                            except FileNotFoundError:
                                break
                        os.rename(entry, new, src_dir_fd=fd, dst_dir_fd=top)
                        pending.append(new)
            finally:
                os.close(fd)
        for name in flat:
            os.rmdir(name, dir_fd=top)
    finally:
        os.close(top)
    os.rmdir(path)
