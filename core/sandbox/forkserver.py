"""``forkserver`` backend, trainer side: one long-lived fork server per worker, started in bwrap.

Scope: start/stop the server (``_server.py``) of one worker, send it one request per run, turn the
reply into a RunResult. A server that crashes, hangs past the run's deadline, or reports an
internal error is killed and restarted on the next run; the run in flight gets ``sandbox_error``
(or ``time_limit`` if the deadline passed), the caller never sees an exception.

The server runs as root in new pid/net/ipc/uts/mount namespaces with only the ``SERVER_CAPS``
capabilities; its children drop to the worker's own non-root uid. Killing the bwrap
process tears down the pid namespace, and with it every process the server or a program started.
"""

from __future__ import annotations

import os
import subprocess
import time

from . import rootfs, wire
from .cgroups import WorkerCgroups
from .config import SandboxConfig
from .languages import Language, expand
from .probe import HostInfo
from .results import RunResult, compile_failed, make_result, sandbox_error

SERVER_DIR = "/opt/reasonzoo-sandbox"
"""Where the server's own code is copied inside the sandbox (by bwrap, from memfds)."""
SERVER_FILES = ("_server.py", "procio.py", "wire.py")
"""The server's code: stdlib-only modules with no package-relative imports."""
SERVER_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_KILL", "CAP_DAC_OVERRIDE", "CAP_FOWNER")
"""Capabilities the server keeps (switching uid; killing and cleaning up after the worker uid)."""
SERVER_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/scratch"}
DEADLINE_SLACK_S = 5.0
"""Extra seconds the trainer waits beyond a request's wall limits before declaring the server hung."""


class ForkServerWorker:
    """One worker slot of the ``forkserver`` backend (not thread-safe: the pool serialises use)."""

    name = "forkserver"

    def __init__(self, cfg: SandboxConfig, info: HostInfo, uid: int, bpf: bytes):
        self.cfg, self.info, self.uid, self.bpf = cfg, info, uid, bpf
        self.cgroups = WorkerCgroups(info.cgroup_dirs, f"fs{uid}", ("memory", "pids", "cpuacct")) if info.cgroup_dirs else None
        self.proc: subprocess.Popen | None = None

    def _argv(self, code_fds: dict[str, int], proc_masks: list[str]) -> list[str]:
        argv = [self.info.bwrap, *rootfs.namespace_args(True, proc_masks),
                *rootfs.root_args(self.info.python), *rootfs.scratch_args(self.cfg.scratch_bytes),
                "--perms", "0755", "--dir", SERVER_DIR]
        for name, fd in code_fds.items():  # copied in: a bind mount would show the host's path
            argv += ["--perms", "0644", "--file", str(fd), f"{SERVER_DIR}/{name}"]
        for ctrl, path in (self.cgroups.dirs.items() if self.cgroups else ()):
            argv += ["--bind", path, f"/cgroup/{ctrl}"]
        argv += ["--cap-drop", "ALL"]
        for cap in SERVER_CAPS:
            argv += ["--cap-add", cap]
        argv += [*rootfs.env_args(SERVER_ENV), "--chdir", "/", "--",
                 self.info.python, "-I", "-S", "-B", f"{SERVER_DIR}/_server.py"]
        return argv

    def _start(self) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        code_fds = {}
        proc_masks, mask_fds = rootfs.masked_proc_args()
        try:
            for name in SERVER_FILES:
                fd = code_fds[name] = os.memfd_create(name)
                with open(os.path.join(here, name), "rb") as f:
                    os.write(fd, f.read())
                os.lseek(fd, 0, os.SEEK_SET)
            self.proc = subprocess.Popen(self._argv(code_fds, proc_masks), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE,
                                         stderr=None if os.environ.get("REASONZOO_SANDBOX_DEBUG") else
                                         subprocess.DEVNULL, pass_fds=(*code_fds.values(), *mask_fds))
        finally:
            for fd in (*code_fds.values(), *mask_fds):
                os.close(fd)
        deadline = time.monotonic() + self.cfg.start_timeout_s
        cgroups = {c: f"/cgroup/{c}" for c in (self.cgroups.dirs if self.cgroups else ())}
        init = {"uid": self.uid, "cgroups": cgroups, "preimport": list(self.cfg.preimport)}
        try:
            wire.send(self.proc.stdin.fileno(), init, [self.bpf], deadline)
            reply, _ = wire.recv(self.proc.stdout.fileno(), deadline)
        except wire.WireError as exc:
            self.stop()
            raise RuntimeError(f"fork server did not start: {exc} "
                               f"(set REASONZOO_SANDBOX_DEBUG=1 to see its stderr)") from exc
        if not reply.get("ready"):
            self.stop()
            raise RuntimeError(f"fork server failed to start: {reply}")

    def stop(self) -> None:
        """Kill the server (and, through its pid namespace, everything it started)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc = None

    def close(self) -> None:
        self.stop()
        if self.cgroups:
            self.cgroups.remove()

    def execute(self, lang: Language, program: str, stdin: str, limits) -> RunResult:
        steps = []
        if lang.compile:
            steps.append({"argv": expand(lang.compile, lang, self.info.python), "stdin": False,
                          "limits": lang.compile_limits.as_dict(), "address_space": True})
        steps.append({"argv": None if lang.inprocess_python else expand(lang.run, lang, self.info.python),
                      "file": lang.source_file, "stdin": True, "limits": limits.as_dict(),
                      "address_space": lang.address_space_limit})
        request = {"files": [lang.source_file], "steps": steps}
        blobs = [stdin.encode(), program.encode()]
        try:
            if self.proc is None or self.proc.poll() is not None:
                self.stop()
                self._start()
            deadline = time.monotonic() + sum(s["limits"]["wall_s"] for s in steps) + DEADLINE_SLACK_S
            wire.send(self.proc.stdin.fileno(), request, blobs, deadline)
            reply, outs = wire.recv(self.proc.stdout.fileno(), deadline)
        except (wire.WireError, OSError, RuntimeError) as exc:
            self.stop()  # a server that crashed or missed the deadline is replaced on the next run
            return sandbox_error(f"fork server failed: {exc}", self.name)
        if "error" in reply:
            self.stop()
            return sandbox_error(f"fork server error: {reply['error']}", self.name)
        if reply["dirty"]:
            self.stop()
        facts = reply["steps"]
        if lang.compile and (len(facts) == 1 or facts[0]["exit_code"] != 0):
            if not facts[0]["setup_ok"]:
                return sandbox_error(outs[1].decode("utf-8", "replace"), self.name)
            return compile_failed(facts[0], outs[0], outs[1], self.name)
        return make_result(facts[-1], outs[-2], outs[-1], limits, self.name)
