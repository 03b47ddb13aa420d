"""Fork server: runs inside bubblewrap and forks one confined child per program run.

Scope: everything that happens inside the sandbox for the ``forkserver`` backend. The trainer starts
this script once per pool worker (``python -I -S _server.py`` under bwrap, in fresh pid, net, ipc,
uts and mount namespaces, on a minimal read-only root with a private tmpfs at /scratch), sends an
``init`` message, then one request per run over stdin/stdout (framing: ``wire.py``).

Per run: make ``/scratch/run`` owned by the worker's uid, write the program there, fork. The child
joins the worker's cgroups, puts stdin (a memfd) and two pipes on fds 0-2, closes every other fd,
sets rlimits, drops to the worker's uid (no groups, so no capabilities), loads the seccomp filter,
and then either exec()s the language's run command or, for Python, compiles and executes the program
in this already-initialised interpreter (no interpreter start-up per run). The server reads the
pipes until the child exits or a limit is hit (never waiting for pipe EOF), reaps it with wait4,
then, if any descendant is left (the server is a child subreaper, so it would be its child), kills
every process of the worker's uid with ``kill(-1, SIGKILL)`` issued as that uid (this also catches
setsid'd grandchildren), reaps them, and wipes the run directory. It reports raw facts; the trainer side classifies the verdict.

The server itself keeps root with only CAP_SETUID, CAP_SETGID, CAP_CHOWN, CAP_KILL, CAP_DAC_OVERRIDE
and CAP_FOWNER (set by bwrap; its children lose them when they switch uid),
holds no secrets, and runs single-threaded so that fork() is safe.
"""

from __future__ import annotations

import builtins
import gc
import io
import os
import signal
import sys
import time
import traceback
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procio  # noqa: E402
import wire  # noqa: E402

SCRATCH = "/scratch"
RUN_DIR = "/scratch/run"
SETUP_FAILED = 125
CHILD_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": RUN_DIR,
             "TMPDIR": RUN_DIR, "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"}


class Server:
    def __init__(self, init: dict, bpf: bytes):
        self.uid = init["uid"]
        self.cgroups = init["cgroups"]  # {"memory": dir or None, "pids": dir or None}
        self.filter = procio.PreparedFilter(bpf)
        self.dirty = False  # set when a sweep failed: the trainer then restarts this server

    # ---- cgroup helpers (v1 files, bind-mounted by the trainer) ----
    def _cg_write(self, ctrl: str, name: str, value: str) -> None:
        if self.cgroups.get(ctrl):
            with open(os.path.join(self.cgroups[ctrl], name), "w") as f:
                f.write(value)

    def _oom_kills(self) -> int:
        if not self.cgroups.get("memory"):
            return 0
        with open(os.path.join(self.cgroups["memory"], "memory.oom_control")) as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        return 0

    def _prepare_cgroups(self, limits: dict) -> None:
        if self.cgroups.get("memory"):
            self._cg_write("memory", "memory.limit_in_bytes", str(limits["memory_bytes"]))
            self._cg_write("memory", "memory.max_usage_in_bytes", "0")
        self._cg_write("pids", "pids.max", str(limits["processes"]))
        self._cg_write("cpuacct", "cpuacct.usage", "0")

    def _tree_cpu_s(self) -> float | None:
        """CPU seconds of every process of the run since ``_prepare_cgroups`` (children it never
        waited for included), or None without a cpuacct group."""
        if not self.cgroups.get("cpuacct"):
            return None
        with open(os.path.join(self.cgroups["cpuacct"], "cpuacct.usage")) as f:
            return int(f.read()) / 1e9

    # ---- one run ----
    def run(self, req: dict, sizes: list[int], in_fd: int) -> tuple[dict, list]:
        """Carry out one request whose blobs (stdin, then the files) are still unread on ``in_fd``.

        Run data never enters this process's memory, which every later run's child inherits: the
        blobs move from the trainer's pipe into the files and a stdin memfd with splice(2), and the
        program's output moves from its pipes into memfds (``procio.SpliceCapture``) that the
        caller sends on with sendfile(2). Returns the reply header and one capture per step."""
        os.mkdir(RUN_DIR, 0o700)
        stdin_fd = os.memfd_create("stdin")
        caps = []
        try:
            procio.splice_exact(in_fd, stdin_fd, sizes[0])
            for name, size in zip(req["files"], sizes[1:]):  # root-owned, read-only for the program
                fd = os.open(os.path.join(RUN_DIR, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    procio.splice_exact(in_fd, fd, size)
                finally:
                    os.close(fd)
            os.chown(RUN_DIR, self.uid, self.uid)
            results = []
            for step in req["steps"]:
                facts, cap = self._step(step, stdin_fd if step["stdin"] else None)
                results.append(facts)
                caps.append(cap)
                if facts["exit_code"] != 0 or not facts["setup_ok"]:
                    break
        except BaseException:
            for cap in caps:
                cap.close()
            raise
        finally:
            os.close(stdin_fd)
            dirty = self._sweep(wipe=True) or self.dirty
        return {"steps": results, "dirty": dirty}, caps

    def _step(self, step: dict, stdin_fd: int | None) -> tuple[dict, "procio.SpliceCapture"]:
        limits = step["limits"]
        self._prepare_cgroups(limits)
        oom_before = self._oom_kills()
        in_fd = os.memfd_create("stdin") if stdin_fd is None else os.dup(stdin_fd)
        os.lseek(in_fd, 0, os.SEEK_SET)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        st_r, st_w = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            self._child(step, in_fd, out_w, err_w, st_w)  # never returns
        for fd in (in_fd, out_w, err_w, st_w):
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        cap = procio.SpliceCapture(limits["output_bytes"], limits["stderr_bytes"])
        try:
            over = None
            if self.cgroups.get("cpuacct"):
                def over() -> bool:
                    return self._tree_cpu_s() > limits["cpu_s"]
            why = procio.pump(pidfd, out_r, err_r, start + limits["wall_s"], cap, over)
            if why != "exited":
                procio.kill_quietly(pid)
            facts = procio.wait_facts(pid)
            wall = time.monotonic() - start
            self.dirty |= self._sweep(wipe=False)
            procio.drain(out_r, err_r, cap, timeout=0.5)
            os.set_blocking(st_r, False)
            try:
                setup_ok = os.read(st_r, 1) == b"R"
            except BlockingIOError:
                setup_ok = False
        finally:
            for fd in (pidfd, out_r, err_r, st_r):
                os.close(fd)
        tree_cpu = self._tree_cpu_s()  # after the sweep: every process of the run is gone
        if tree_cpu is not None:
            facts["cpu_s"] = max(facts["cpu_s"], tree_cpu)
        facts.update(wall_s=wall, setup_ok=setup_ok, oom=self._oom_kills() > oom_before,
                     wall_exceeded=why == "deadline", output_exceeded=cap.out_exceeded)
        return facts, cap

    def _child(self, step: dict, in_fd: int, out_w: int, err_w: int, st_w: int) -> None:
        hard_exit = os._exit  # bound before the program runs: it may replace os._exit
        try:
            for ctrl in ("memory", "pids", "cpuacct"):
                self._cg_write(ctrl, "cgroup.procs", "0")
            os.dup2(in_fd, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.dup2(st_w, 3)
            os.closerange(4, 1 << 16)
            inprocess = step["argv"] is None
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
            if not inprocess:  # exec'd programs get default dispositions, as after a shell fork
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            procio.apply_rlimits(step["limits"], address_space=step["address_space"])
            os.setgroups([])
            os.setresgid(self.uid, self.uid, self.uid)
            os.setresuid(self.uid, self.uid, self.uid)
            os.chdir(RUN_DIR)  # owned by the worker uid, mode 0700
            procio.prctl(procio.PR_SET_PDEATHSIG, signal.SIGKILL)
            self.filter.install()
            os.environ.clear()
            os.environ.update(CHILD_ENV)
            os.write(3, b"R")
            os.close(3)
        except BaseException as exc:  # noqa: BLE001 - any setup failure is a sandbox error
            try:
                os.write(2, f"sandbox: child setup failed: {exc!r}\n".encode())
            finally:
                os._exit(SETUP_FAILED)
        if inprocess:
            try:
                _run_python(os.path.join(RUN_DIR, step["file"]))
            finally:
                hard_exit(SETUP_FAILED)  # not reached: _run_python ends the process itself
        try:
            os.execve(step["argv"][0], step["argv"], CHILD_ENV)
        except OSError as exc:
            os.write(2, f"sandbox: cannot execute {step['argv'][0]}: {exc.strerror}\n".encode())
        os._exit(127)

    def _sweep(self, wipe: bool) -> bool:
        """Make sure no process and no System V IPC object of the run is left, and (if ``wipe``)
        remove the run directory.

        The server is a child subreaper, so every descendant of a run is either reparented to it
        or has a living parent that is. If the server has no child left, nothing is left. Otherwise
        a helper that switched to the worker uid sends ``kill(-1, SIGKILL)``, which reaches exactly
        the processes of that uid (a setsid'd daemon included), and the server reaps them all.
        Shared memory segments, message queues and semaphore sets live in the server's IPC
        namespace, which every run of this worker shares: the same helper removes every one
        (``IPC_RMID``; the worker uid created them, so it may), so none outlives its run (its data
        and its memory charge included). Returns True if something survived or could not be
        removed (the server must restart; its namespaces go with it)."""
        survived = False
        stray = _ipc_objects()
        if not _reap_all(deadline=None) or stray:
            helper = os.fork()
            if helper == 0:
                code = 0
                try:
                    os.setgroups([])
                    os.setresgid(self.uid, self.uid, self.uid)
                    os.setresuid(self.uid, self.uid, self.uid)
                    for _ in range(3):
                        try:
                            os.kill(-1, signal.SIGKILL)
                        except ProcessLookupError:
                            break
                    procio.remove_ipc(stray)
                except BaseException:  # noqa: BLE001 - reported through the exit code
                    code = 1
                os._exit(code)
            _, status = os.waitpid(helper, 0)
            survived = status != 0 or not _reap_all(deadline=time.monotonic() + 2.0) or bool(_ipc_objects())
        if wipe:
            try:
                procio.remove_tree(RUN_DIR)  # any depth, any permissions the program set
            except OSError:
                return True
        return survived


def _ipc_objects() -> dict[str, list[int]]:
    """Ids of the System V IPC objects in this IPC namespace, by kind (``shm``, ``msg``, ``sem``)."""
    found = {}
    for kind in ("shm", "msg", "sem"):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                ids = [int(line.split()[1]) for line in f.read().splitlines()[1:] if line.strip()]
        except (OSError, ValueError, IndexError):
            continue
        if ids:
            found[kind] = ids
    return found


def _reap_all(deadline: float | None) -> bool:
    """Reap exited children; True once none is left. Without a deadline, only one pass."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            if deadline is None or time.monotonic() > deadline:
                return False
            time.sleep(0.001)


def _run_python(path: str) -> None:
    """Execute a Python program in this forked interpreter like ``python -I -S path``; never returns.

    The program shares this interpreter: it may replace ``os._exit``, the helpers below, the
    streams. The exit is therefore bound to a local before the program runs and called from a
    ``finally`` clause, so whatever the program patched or raised, the process ends here and never
    falls through into server code."""
    hard_exit = os._exit
    code = 1
    try:
        sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.open(0, "rb", closefd=False), encoding="utf-8")
        own_out = io.TextIOWrapper(io.open(1, "wb", closefd=False), encoding="utf-8")
        own_err = io.TextIOWrapper(io.open(2, "wb", closefd=False), encoding="utf-8",
                                   errors="backslashreplace", line_buffering=True)
        sys.stdout = sys.__stdout__ = own_out
        sys.stderr = sys.__stderr__ = own_err
        if "random" in sys.modules:  # forked children must not share the server's random state
            sys.modules["random"].seed()
        main = types.ModuleType("__main__")
        main.__file__ = path
        main.__builtins__ = builtins
        sys.modules["__main__"] = main
        sys.argv = [path]
        sys.path[0] = os.path.dirname(path)
        gc.enable()
        code = 0
        try:
            with open(path, "rb") as f:
                source = f.read()
            exec(compile(source, path, "exec", dont_inherit=True), main.__dict__)  # noqa: S102
        except SystemExit as exc:
            code = _exit_code(exc.code)
        except BaseException as exc:  # noqa: BLE001 - mimic the interpreter's top level
            code = 1
            _print_exception(exc)
        try:
            if "threading" in sys.modules:
                sys.modules["threading"]._shutdown()
            import atexit
            atexit._run_exitfuncs()
        except BaseException as exc:  # noqa: BLE001
            _print_exception(exc)
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__, own_out, own_err):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001 - the program may have closed or replaced it
                code = code or 120
    finally:
        hard_exit(code)


def _exit_code(value) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    try:
        print(value, file=sys.stderr)
    except BaseException:  # noqa: BLE001
        pass
    return 1


def _print_exception(exc: BaseException) -> None:
    tb = exc.__traceback__.tb_next if exc.__traceback__ else None  # hide _run_python's frame
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        os.write(2, text.encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def main() -> None:
    init, blobs = wire.recv(0)
    server = Server(init, blobs[0])
    del blobs
    procio.prctl(procio.PR_SET_CHILD_SUBREAPER, 1)
    for name in init["preimport"]:
        __import__(name)
    gc.collect()
    gc.freeze()  # keep the shared heap out of the children's collections (fewer copy-on-write faults)
    gc.disable()  # the server allocates little; children re-enable
    wire.send(1, {"ready": True, "python": sys.version.split()[0]})
    while True:
        try:
            req, sizes = wire.recv_header(0)
        except wire.WireError:
            return  # trainer closed the channel
        try:
            resp, caps = server.run(req, sizes, 0)
        except Exception:  # noqa: BLE001 - report, then let the trainer restart us
            wire.send(1, {"error": traceback.format_exc(limit=5)})
            return
        try:  # the outputs go from their memfds to the trainer without passing through this process
            wire.send_header(1, resp, [n for cap in caps for n in (cap.out_len, cap.err_len)])
            for cap in caps:
                procio.send_memfd(1, cap.out, cap.out_len)
                procio.send_memfd(1, cap.err, cap.err_len)
        finally:
            for cap in caps:
                cap.close()
        if resp["dirty"]:
            return


if __name__ == "__main__":
    main()
