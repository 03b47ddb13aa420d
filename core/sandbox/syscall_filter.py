"""The seccomp policy for sandboxed programs, compiled to BPF with libseccomp (via ctypes).

Scope: which system calls a sandboxed program may not make, and compiling that list once per pool to
a BPF program. The same bytes are loaded by the fork server's children (``procio.PreparedFilter``)
and handed to bubblewrap (``bwrap --seccomp FD``).

Policy: default allow, plus a deny list that returns EPERM for calls that only serve to escape or
attack the kernel/host (namespaces, mounts, ptrace, kernel modules, keyrings, BPF, perf, io_uring,
userfaultfd, clock setting, reboot, POSIX message queues, ...), every ``socket()`` whose family is not AF_UNIX, and
``clone()`` with any CLONE_NEW* flag. ``clone3`` returns ENOSYS so libc falls back to ``clone``, whose
flags a filter can inspect. System calls of a foreign architecture (e.g. i386 ``int 0x80`` on
x86_64) kill the process: that is libseccomp's default bad-architecture action.

Needs the shared library ``libseccomp.so.2`` (Debian package ``libseccomp2``); no Python binding.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_NE = 1
SCMP_CMP_MASKED_EQ = 7


def SCMP_ACT_ERRNO(code: int) -> int:  # noqa: N802 - libseccomp's macro name
    return 0x00050000 | (code & 0xFFFF)


DENIED = (
    # namespaces, mounts, root changes
    "unshare", "setns", "mount", "umount", "umount2", "pivot_root", "chroot", "mount_setattr",
    "fsopen", "fsmount", "fsconfig", "fspick", "move_mount", "open_tree",
    # looking into / controlling other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # kernel attack surface with no use in a judged program
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "keyctl", "add_key", "request_key", "fanotify_init",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "quotactl", "quotactl_fd",
    "personality", "modify_ldt", "iopl", "ioperm", "uselib", "vhangup", "syslog",
    # host state
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "sethostname", "setdomainname",
    # POSIX message queues: they live in the IPC namespace, which a fork server's runs share, and
    # cannot be listed (to be removed after a run) without mounting mqueue
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
)
"""System calls answered with EPERM. Names unknown to this kernel's libseccomp are skipped."""

CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                         0x40000000)
"""CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET: refused in ``clone`` flags."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def load_libseccomp() -> ctypes.CDLL:
    """Open libseccomp; raise OSError naming the Debian package when it is missing."""
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise OSError(f"libseccomp not found ({exc}); install the Debian package libseccomp2") from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def build_bpf() -> bytes:
    """Compile the policy for the host's architecture and return the raw BPF program."""
    lib = load_libseccomp()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        def rule(action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:  # __NR_SCMP_ERROR: this architecture has no such call
                return
            arr = (_ArgCmp * max(len(cmps), 1))(*[_ArgCmp(*c) for c in cmps])
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
            if rc < 0:
                raise OSError(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")

        for name in DENIED:
            rule(SCMP_ACT_ERRNO(errno.EPERM), name)
        rule(SCMP_ACT_ERRNO(errno.EAFNOSUPPORT), "socket", (0, SCMP_CMP_NE, socket.AF_UNIX, 0))
        for flag in CLONE_NAMESPACE_FLAGS:
            rule(SCMP_ACT_ERRNO(errno.EPERM), "clone", (0, SCMP_CMP_MASKED_EQ, flag, flag))
        rule(SCMP_ACT_ERRNO(errno.ENOSYS), "clone3")

        rfd, wfd = os.pipe()
        try:
            rc = lib.seccomp_export_bpf(ctx, wfd)
            if rc < 0:
                raise OSError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")
            os.close(wfd)
            wfd = -1
            chunks = []
            while chunk := os.read(rfd, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(rfd)
            if wfd >= 0:
                os.close(wfd)
        return b"".join(chunks)
    finally:
        lib.seccomp_release(ctx)
