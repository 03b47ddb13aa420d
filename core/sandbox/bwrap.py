"""``bwrap`` backend: a fresh bubblewrap sandbox per run; works for any language and any user.

Scope: build the command line of one step (compile or run) and run it. Layout: the minimal root of
``rootfs``, a scratch at /scratch: for a language without a compile step a size-limited tmpfs of
the sandbox's own with the program copied in (``--file``; gone with the sandbox, no host path), for
compiled languages a per-run directory on the host's tmpfs (/dev/shm where present) shared by the
compile and run steps, bind-mounted and removed after the run, the seccomp filter via ``bwrap --seccomp``, then
``setpriv`` to the worker's own uid (as root) and ``prlimit`` for the rlimits. As root, a small
``sh`` prefix outside the sandbox first moves itself into the worker's cgroups so that everything
the run starts is accounted there. bwrap reports a program killed by signal N as exit 128+N; exit
codes in 129..192 are read back as signals, as shells do. CPU time comes from the worker's
cpuacct cgroup (``wait4`` on bwrap does not see it); without cgroups (not root) only the RLIMIT_CPU
signals catch CPU overuse. Cost: one bwrap + interpreter start per
run (~30-70 ms).
"""

from __future__ import annotations

import os
import tempfile
import threading

from . import procio, rootfs
from .cgroups import WorkerCgroups
from .config import Limits, SandboxConfig
from .languages import Language, expand
from .probe import HostInfo
from .results import RunResult, compile_failed, make_result, sandbox_error
from .subproc import run_step

RUN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": rootfs.SCRATCH,
           "TMPDIR": rootfs.SCRATCH, "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"}
_TOOL_ERRORS = (b"bwrap: ", b"setpriv: ", b"prlimit: ")
"""stderr prefixes of the launcher tools themselves: their failure is a sandbox error."""
_JOIN_CGROUPS = 'for f; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; done; ' \
                'while [ "$1" != -- ]; do shift; done; shift; exec "$@"'


def scratch_parent() -> str:
    """Directory under which per-run scratch directories are made (a tmpfs if there is one)."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class ScratchRoot:
    """A private (0700) directory holding this pool's per-run scratch dirs; removed on close."""

    def __init__(self):
        self._lock = threading.Lock()
        self.path: str | None = None

    def new_run_dir(self, uid: int | None) -> str:
        with self._lock:
            if self.path is None:
                self.path = tempfile.mkdtemp(prefix="reasonzoo-sandbox-", dir=scratch_parent())
        path = tempfile.mkdtemp(dir=self.path)
        if uid is not None:
            os.chown(path, uid, uid)
        os.chmod(path, 0o711)  # the pool root is 0700; each sandbox sees only its own run dir
        return path

    def close(self) -> None:
        """Remove the pool's scratch root and anything left in it (any depth)."""
        with self._lock:
            if self.path is not None:
                procio.remove_tree(self.path)
                self.path = None


def _facts_from_exit(facts: dict) -> dict:
    code = facts["exit_code"]
    if facts["signal"] is None and code is not None and 128 < code <= 128 + 64:
        facts = {**facts, "exit_code": None, "signal": code - 128}
    return facts


class BwrapWorker:
    """One worker slot of the ``bwrap`` backend."""

    name = "bwrap"

    def __init__(self, cfg: SandboxConfig, info: HostInfo, uid: int | None, bpf: bytes,
                 scratch: ScratchRoot):
        self.cfg, self.info, self.uid, self.bpf, self.scratch = cfg, info, uid, bpf, scratch
        self.as_root = info.euid == 0
        # No pids group here: its counter kept growing across bwrap runs with no task left in it
        # (pids of torn-down namespaces not uncharged), until bwrap itself could not fork.
        # RLIMIT_NPROC on the worker's own uid bounds processes instead.
        self.cgroups = (WorkerCgroups(info.cgroup_dirs, f"bw{uid}", ("memory", "cpuacct"))
                        if self.as_root and info.cgroup_dirs else None)
        self._root = rootfs.root_args(info.python)

    def _argv(self, run_dir: str | None, seccomp_fd: int, status_fd: int, argv: list[str], limits: dict,
              address_space: bool, proc_masks: list[str], file_fds: dict[str, int]) -> list[str]:
        if run_dir is not None:
            scratch = ["--bind", run_dir, rootfs.SCRATCH]
        else:  # a tmpfs of the sandbox's own, the files copied in: nothing on the host to clean up
            scratch = ["--size", str(self.cfg.scratch_bytes), "--perms", "01777", "--tmpfs", rootfs.SCRATCH]
            for name, fd in file_fds.items():
                scratch += ["--perms", "0644", "--file", str(fd), f"{rootfs.SCRATCH}/{name}"]
        cmd = [self.info.bwrap, *rootfs.namespace_args(self.as_root, proc_masks), *self._root,
               *scratch, "--chdir", rootfs.SCRATCH,
               "--seccomp", str(seccomp_fd), "--json-status-fd", str(status_fd),
               *rootfs.env_args(RUN_ENV)]
        if self.as_root:
            cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--",
                    "/usr/bin/setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
                    "--"]
        else:
            cmd += ["--"]
        prlimit = procio.prlimit_argv(limits, address_space)
        cmd += ["/usr/bin/prlimit", *prlimit[1:], *argv]
        if self.cgroups:
            cmd = ["/bin/sh", "-c", _JOIN_CGROUPS, "sh", *self.cgroups.procs_files(), "--", *cmd]
        return cmd

    def _step(self, run_dir: str | None, argv: list[str], stdin: bytes, limits: Limits,
              address_space: bool, files: dict[str, bytes] | None = None) -> tuple[dict, bytes, bytes]:
        """One bwrap run with ``run_dir`` bound at /scratch, or (``run_dir`` None) a private tmpfs at
        /scratch holding ``files``."""
        lim = limits.as_dict()
        if self.cgroups:
            self.cgroups.set_limits(limits.memory_bytes, limits.processes + 3)  # + bwrap, its init, sh
            oom_before = self.cgroups.oom_kills()
        seccomp_fd = os.memfd_create("seccomp")
        status_r, status_w = os.pipe()
        proc_masks, mask_fds = rootfs.masked_proc_args()
        file_fds = {}
        try:
            for name, data in (files or {}).items():
                fd = file_fds[name] = os.memfd_create(name)
                os.write(fd, data)
                os.lseek(fd, 0, os.SEEK_SET)
            os.write(seccomp_fd, self.bpf)
            os.lseek(seccomp_fd, 0, os.SEEK_SET)
            over = None
            if self.cgroups and "cpuacct" in self.cgroups.dirs:
                def over() -> bool:  # the CPU time of the whole tree, children it never waits for included
                    return self.cgroups.cpu_seconds() > limits.cpu_s
            facts, out, err = run_step(self._argv(run_dir, seccomp_fd, status_w, argv, lim, address_space,
                                                  proc_masks, file_fds),
                                       stdin, lim, cwd="/", env={},
                                       pass_fds=(seccomp_fd, status_w, *mask_fds, *file_fds.values()),
                                       over_limit=over)
            os.close(status_w)
            status_w = -1
            with os.fdopen(status_r, "rb", closefd=False) as f:
                status = f.read()
        finally:
            for fd in (*mask_fds, *file_fds.values()):
                os.close(fd)
            os.close(seccomp_fd)
            os.close(status_r)
            if status_w >= 0:
                os.close(status_w)
        facts = _facts_from_exit(facts)
        if self.cgroups and not self.cgroups.empty():
            raise RuntimeError(f"processes survived in cgroups {self.cgroups.dirs}")
        cg_cpu = self.cgroups.cpu_seconds() if self.cgroups else None
        if cg_cpu is not None:  # wait4 on bwrap misses the program's CPU time (bwrap's init)
            facts["cpu_s"] = cg_cpu
        tool_failed = facts["exit_code"] in (1, 127) and err.startswith(_TOOL_ERRORS)
        facts["setup_ok"] = b'"child-pid"' in status and not tool_failed
        facts["oom"] = bool(self.cgroups) and self.cgroups.oom_kills() > oom_before
        return facts, out, err

    def execute(self, lang: Language, program: str, stdin: str, limits: Limits) -> RunResult:
        if not lang.compile:  # one step: the scratch is a tmpfs of the sandbox's own
            facts, out, err = self._step(None, expand(lang.run, lang, self.info.python), stdin.encode(),
                                         limits, lang.address_space_limit, {lang.source_file: program.encode()})
            if not facts["setup_ok"]:
                return sandbox_error(err.decode("utf-8", "replace"), self.name)
            return make_result(facts, out, err, limits, self.name)
        # compile, then run: two bwrap runs share a run directory on the host's tmpfs
        run_dir = self.scratch.new_run_dir(self.uid if self.as_root else None)
        try:
            with open(os.path.join(run_dir, lang.source_file), "w") as f:
                f.write(program)
            if lang.compile:
                facts, out, err = self._step(run_dir, expand(lang.compile, lang, self.info.python), b"",
                                             lang.compile_limits, True)
                if not facts["setup_ok"]:
                    return sandbox_error(err.decode("utf-8", "replace"), self.name)
                if facts["exit_code"] != 0:
                    return compile_failed(facts, out, err, self.name)
            facts, out, err = self._step(run_dir, expand(lang.run, lang, self.info.python),
                                         stdin.encode(), limits, lang.address_space_limit)
            if not facts["setup_ok"]:
                return sandbox_error(err.decode("utf-8", "replace"), self.name)
            return make_result(facts, out, err, limits, self.name)
        finally:
            procio.remove_tree(run_dir)  # any depth: shutil.rmtree recursed past Python's limit

    def close(self) -> None:
        if self.cgroups:
            self.cgroups.remove()
