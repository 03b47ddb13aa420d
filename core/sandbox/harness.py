"""Function-test harness: the trusted program a sandbox run executes to judge a function (not a
stdin/stdout program). Design and threat model: docs/sandbox.md, "Function tests".

Two processes inside one sandbox run, both as the worker's uid:

* the **checker** (this file run as the program): makes itself non-dumpable (so the candidate cannot
  open its ``/proc/<pid>/mem`` or ``/proc/<pid>/fd/*``), forks the candidate process *before* it
  reads the job from stdin, then keeps a private copy of fd 1 as the **verdict channel** (made
  after the fork) and points its own fd 1 at stderr. It never executes candidate code. It runs the dataset's
  test (``check(candidate)``) or the list of calls with a *proxy* in place of the candidate function;
  every proxy call sends the arguments to the candidate process and rebuilds the return value from
  a tagged JSON encoding into exact built-in types (no user classes, so no forged ``__eq__``).
* the **candidate** (a fork of the checker made before the job was read, so nothing of the job is
  in its memory; on the fork server none of any run's data is in the server's memory either, see
  docs/sandbox.md item 10): fds 0 = /dev/null, 1 and 2 = stderr, 3 = requests, 4 = replies,
  nothing else; it dies with the checker (PDEATHSIG). It executes the program in a module named
  ``solution`` and answers calls. Whatever it prints, however it exits, whatever it patches, it
  can only ever write to its own reply pipe and to stderr; the verdict channel is not among its fds.

Job (stdin of the run, one JSON object):
``{"kind": "assert", "program": str, "context": str, "test": str, "entry_point": str}`` or
``{"kind": "call", "program": str, "calls": [{"fn": str, "args": [tagged], "kwargs": {str: tagged}}],
"call_cpu_s": float, "call_wall_s": float}``.

Verdict channel (the run's stdout), one JSON object per line, in test order:
``{"i": k, "verdict": "ok" | "wrong_answer" | "runtime_error" | "time_limit" | "memory_limit" |
"sandbox_error", "detail": str}``, or for a call that returned, ``{"i": k, "verdict": "returned",
"value": tagged}`` (the expected values of call tests never enter the sandbox: the trainer compares).

Tagged encoding (``encode``/``decode``): None, bool, str, float (finite) and ints below 2**63 as
JSON; list as a JSON array; anything else as a one-key object: ``{"tuple": [...]}``,
``{"dict": [[k, v], ...]}``, ``{"set": [...]}``, ``{"frozenset": [...]}``, ``{"bytes": hex}``,
``{"complex": [re, im]}``, ``{"int": hex}`` (big ints), ``{"float": "nan" | "inf" | "-inf"}``. Only
exact built-in types are accepted (a subclass of int or list is not plain data).

Stdlib only and self-contained: the sandbox runs it as a plain file; the trainer imports the same
module for ``encode``, ``decode`` and the constants.
"""

from __future__ import annotations

import builtins
import fcntl
import json
import os
import select
import signal
import struct
import sys
import time

MAX_MESSAGE = 64 << 20
"""Largest message between checker and candidate (bytes); a larger one fails that call."""
MAX_DEPTH = 200
"""Deepest nesting of a value that ``encode``/``decode`` accept."""
RERAISED = ("ValueError", "TypeError", "IndexError", "KeyError", "LookupError", "ZeroDivisionError",
            "ArithmeticError", "OverflowError", "AttributeError", "NotImplementedError",
            "RuntimeError", "AssertionError", "RecursionError")
"""Built-in exceptions raised by the candidate that the proxy raises again in the checker (a test may
expect them). Any other (StopIteration above all: it would end a ``for`` loop over ``map(candidate,
...)`` early and skip its asserts) becomes :class:`CandidateError`."""
_LEN = struct.Struct("!I")
_SIG_XCPU = int(getattr(signal, "SIGXCPU", 24))


class NotPlainData(TypeError):
    """A value that the tagged encoding does not carry."""


class CandidateError(Exception):
    """The candidate raised an exception that is not re-raised as itself."""


class CandidateDied(Exception):
    """The candidate process ended (or closed its pipe) before answering."""

    def __init__(self, detail: str, verdict: str = "runtime_error"):
        super().__init__(detail)
        self.verdict = verdict


class CallTimeout(Exception):
    """A call used more than its CPU or wall budget."""


# ---- tagged encoding -------------------------------------------------------------------------

def encode(value, depth: int = 0):
    """``value`` (exact built-in types only) as JSON-able data; raises :class:`NotPlainData`."""
    if depth > MAX_DEPTH:
        raise NotPlainData(f"value nested deeper than {MAX_DEPTH}")
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value if -(1 << 63) < value < (1 << 63) else {"int": hex(value)}
    if t is float:
        return value if value - value == 0.0 else {"float": repr(value)}
    if t is list:
        return [encode(v, depth + 1) for v in value]
    if t in (tuple, set, frozenset):
        items = list(value)
        return {t.__name__: [encode(v, depth + 1) for v in items]}
    if t is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in list(value.items())]}
    if t is bytes:
        return {"bytes": value.hex()}
    if t is complex:
        return {"complex": [encode(value.real, depth + 1), encode(value.imag, depth + 1)]}
    raise NotPlainData(f"{t.__name__} is not plain data (allowed: None, bool, int, float, complex, "
                       f"str, bytes, list, tuple, dict, set, frozenset)")


def decode(data, depth: int = 0):
    """Inverse of :func:`encode` for data parsed by ``json.loads``; raises ``ValueError`` on
    anything ``encode`` does not produce."""
    if depth > MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH}")
    t = type(data)
    if data is None or t in (bool, int, float, str):
        return data
    if t is list:
        return [decode(v, depth + 1) for v in data]
    if t is dict and len(data) == 1:
        ((tag, body),) = data.items()
        if tag in ("tuple", "set", "frozenset") and type(body) is list:
            return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](decode(v, depth + 1) for v in body)
        if tag == "dict" and type(body) is list and all(type(p) is list and len(p) == 2 for p in body):
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in body}
        if tag == "bytes" and type(body) is str:
            return bytes.fromhex(body)
        if tag == "int" and type(body) is str:
            return int(body, 16)
        if tag == "float" and body in ("nan", "inf", "-inf"):
            return float(body)
        if tag == "complex" and type(body) is list and len(body) == 2:
            re_, im = decode(body[0], depth + 1), decode(body[1], depth + 1)
            if type(re_) is float and type(im) is float:
                return complex(re_, im)
    raise ValueError(f"malformed tagged value: {str(data)[:80]}")


# ---- framing ---------------------------------------------------------------------------------

def _read_exact(fd: int, n: int, deadline) -> bytes:
    chunks = []
    while n:
        if deadline is not None:
            deadline()  # raises CallTimeout when a budget is spent
            if not select.select([fd], [], [], 0.02)[0]:
                continue
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv(fd: int, deadline=None) -> dict:
    (n,) = _LEN.unpack(_read_exact(fd, _LEN.size, deadline))
    if n > MAX_MESSAGE:
        raise ValueError(f"message of {n} bytes exceeds {MAX_MESSAGE}")
    msg = json.loads(_read_exact(fd, n, deadline))
    if type(msg) is not dict:
        raise ValueError("message is not an object")
    return msg


def send(fd: int, msg: dict) -> None:
    raw = json.dumps(msg, separators=(",", ":")).encode()
    view = memoryview(_LEN.pack(len(raw)) + raw)
    while view:
        view = view[os.write(fd, view):]


def _describe(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"[:500]
    except BaseException:  # noqa: BLE001 - a hostile __str__
        return "exception"


# ---- candidate process -------------------------------------------------------------------------

def candidate_main() -> None:
    """Serve calls from fd 3 on fd 4 (in the forked candidate process); never returns."""
    sys.set_int_max_str_digits(0) if hasattr(sys, "set_int_max_str_digits") else None
    try:
        job = recv(3)
    except BaseException:  # noqa: BLE001
        os._exit(0)
    namespace = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(job["program"], "solution.py", "exec", dont_inherit=True), namespace)  # noqa: S102
        reply = {"loaded": True}
    except BaseException as exc:  # noqa: BLE001 - SystemExit included: the program did not load
        reply = {"loaded": False, "raised": type(exc).__name__ if type(exc) in (SyntaxError, MemoryError,
                 SystemExit, RecursionError) else "Exception", "detail": _describe(exc)}
    send(4, reply)
    if not reply["loaded"]:
        os._exit(0)
    while True:
        try:
            req = recv(3)
        except BaseException:  # noqa: BLE001 - the checker closed the pipe
            os._exit(0)
        try:
            fn = namespace[req["fn"]] if req["fn"] in namespace else None
            if fn is None:
                raise NameError(f"name {req['fn']!r} is not defined by the program")
            args = [decode(a) for a in req["args"]]
            kwargs = {k: decode(v) for k, v in req["kwargs"].items()}
            out = {"value": encode(fn(*args, **kwargs))}
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, anything
            name = "Exception"
            for cls in type(exc).__mro__:
                if getattr(builtins, cls.__name__, None) is cls:
                    name = cls.__name__
                    break
            out = {"raised": name, "detail": _describe(exc)}
        send(4, out)


# ---- checker process -------------------------------------------------------------------------

class Checker:
    """Runs the candidate process and proxies calls into it."""

    def __init__(self, job: dict):
        self.job = job
        self.pid = None
        self.loaded = False
        self.req = self.rep = -1

    def start(self) -> None:
        """Fork a candidate process that waits for its program. The checker calls this before it
        reads the job, so the candidate's memory (a copy of the checker's at this moment) holds
        nothing of the job; on the fork server, nothing of any run is in the server's memory
        either (docs/sandbox.md, item 10)."""
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                high_r = fcntl.fcntl(req_r, fcntl.F_DUPFD, 10)  # out of the way of 0-4 first
                high_w = fcntl.fcntl(rep_w, fcntl.F_DUPFD, 10)
                null = os.open("/dev/null", os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(2, 1)
                os.dup2(high_r, 3)
                os.dup2(high_w, 4)
                os.closerange(5, 1 << 16)
                _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: dies with the checker
                candidate_main()
            finally:
                os._exit(126)
        os.close(req_r)
        os.close(rep_w)
        self.pid, self.req, self.rep = pid, req_w, rep_r

    def spawn(self, deadline=None) -> None:
        """Hand the program to the candidate process (starting one if there is none) and wait until
        it has loaded it."""
        if self.pid is None:
            self.start()
        try:
            send(self.req, {"program": self.job["program"]})
        except OSError:
            raise self._death() from None
        reply = self._reply(deadline)
        if not reply.get("loaded"):
            raise _from_raised(reply, "the program did not load")
        self.loaded = True

    def _reply(self, deadline) -> dict:
        try:
            return recv(self.rep, deadline)
        except (EOFError, OSError, ValueError, RecursionError):
            raise self._death() from None

    def _death(self) -> CandidateDied:
        """Reap the candidate that stopped answering and say how it ended."""
        os.close(self.rep)
        os.close(self.req)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(self.pid, 0)
        self.pid, self.loaded = None, False
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            verdict = "time_limit" if sig == _SIG_XCPU else "runtime_error"
            return CandidateDied(f"candidate process killed by signal {sig}", verdict)
        return CandidateDied(f"candidate process exited with code {os.WEXITSTATUS(status)} "
                             f"instead of answering")

    def stop(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.close(self.rep)
            os.close(self.req)
            os.waitpid(self.pid, 0)  # reaped: its CPU time counts in this run's
            self.pid, self.loaded = None, False

    def call(self, fn: str, args, kwargs, deadline=None):
        try:
            request = {"fn": fn, "args": [encode(a) for a in args],
                       "kwargs": {str(k): encode(v) for k, v in kwargs.items()}}
        except NotPlainData as exc:
            raise HarnessError(f"the test passes an argument the harness cannot send: {exc}") from None
        try:
            send(self.req, request)
        except OSError:
            raise self._death() from None
        reply = self._reply(deadline)
        if "value" in reply:
            try:
                return decode(reply["value"])
            except (ValueError, TypeError, RecursionError) as exc:
                raise CandidateError(f"malformed return value: {exc}") from None
        raise _from_raised(reply, "the candidate raised")

    def cpu_seconds(self) -> float:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0


class HarnessError(Exception):
    """The test needs something the harness does not support (the sandbox's fault, not the program's)."""


class CandidateMemoryError(Exception):
    """The candidate ran out of memory."""


def _from_raised(reply: dict, what: str) -> Exception:
    name, detail = str(reply.get("raised", "Exception")), str(reply.get("detail", ""))[:500]
    if name == "MemoryError":
        return CandidateMemoryError(detail)
    if name in RERAISED:
        return getattr(builtins, name)(f"{what}: {detail}")
    return CandidateError(f"{what}: {detail}")


class _Proxy:
    """Stands in for the candidate function inside the test code."""

    def __init__(self, checker: Checker, name: str):
        self._checker, self.__name__ = checker, name

    def __call__(self, *args, **kwargs):
        return self._checker.call(self.__name__, args, kwargs)


def _verdict_of(exc: BaseException) -> str:
    if isinstance(exc, CandidateDied):
        return exc.verdict
    if isinstance(exc, (CandidateMemoryError, MemoryError)):
        return "memory_limit"
    if isinstance(exc, CallTimeout):
        return "time_limit"
    if isinstance(exc, HarnessError):
        return "sandbox_error"
    if isinstance(exc, CandidateError) or (isinstance(exc, Exception) and str(exc).startswith(
            ("the candidate raised: ", "the program did not load: "))):
        return "runtime_error"
    return "wrong_answer"  # an assertion (or any other error of the test code) failed


def run_assert(job: dict, checker: Checker, emit) -> None:
    try:
        checker.spawn()
        tests = {"__name__": "__test__", "__builtins__": builtins}
        exec(compile(job.get("context", ""), "context.py", "exec", dont_inherit=True), tests)  # noqa: S102
        exec(compile(job["test"], "test.py", "exec", dont_inherit=True), tests)  # noqa: S102
        check = tests.get("check")
        if not callable(check):
            raise HarnessError("the test code defines no check(candidate) function")
        proxy = _Proxy(checker, job["entry_point"])
        tests[job["entry_point"]] = proxy
        check(proxy)
        emit(0, "ok", "")
    except BaseException as exc:  # noqa: BLE001 - only a normal return of check() is a pass
        emit(0, _verdict_of(exc), _describe(exc))


def run_calls(job: dict, checker: Checker, emit) -> None:
    cpu_budget, wall_budget = float(job["call_cpu_s"]), float(job["call_wall_s"])
    load_error = None
    for i, call in enumerate(job["calls"]):
        if load_error is not None:
            emit(i, *load_error)
            continue
        wall_end = time.monotonic() + wall_budget
        cpu_start = None

        def deadline():
            if time.monotonic() > wall_end or (cpu_start is not None and
                                               checker.cpu_seconds() - cpu_start > cpu_budget):
                raise CallTimeout(f"call {i} used more than {cpu_budget} CPU s or {wall_budget} wall s")
        try:
            if not checker.loaded:
                try:
                    cpu_start = 0.0
                    checker.spawn(deadline)
                except CallTimeout as exc:
                    checker.stop()
                    load_error = ("time_limit", "loading the program: " + _describe(exc))
                    emit(i, *load_error)
                    continue
                except BaseException as exc:  # noqa: BLE001 - the program does not load: every call fails
                    load_error = (_verdict_of(exc), _describe(exc))
                    emit(i, *load_error)
                    continue
                wall_end = time.monotonic() + wall_budget
            cpu_start = checker.cpu_seconds()
            args = [decode(a) for a in call["args"]]
            kwargs = {k: decode(v) for k, v in call.get("kwargs", {}).items()}
            value = checker.call(call["fn"], args, kwargs, deadline)
            emit(i, "returned", "", encode(value))
        except CallTimeout as exc:
            checker.stop()  # a fresh candidate process answers the next call
            emit(i, "time_limit", _describe(exc))
        except BaseException as exc:  # noqa: BLE001
            emit(i, _verdict_of(exc), _describe(exc))


def _prctl(option: int, value: int) -> None:
    import ctypes
    if ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


def checker_main() -> None:
    """Entry point of the checker (the run's program); never returns."""
    sys.set_int_max_str_digits(0) if hasattr(sys, "set_int_max_str_digits") else None
    # non-dumpable: a process of the same uid cannot open /proc/<pid>/{mem,fd/*} of this one
    _prctl(4, 0)  # PR_SET_DUMPABLE = 4
    checker = Checker({})
    checker.start()  # before the job is read: nothing of it is in the candidate's memory
    # the candidate (same uid) may signal the checker: every signal that can be blocked is, so none
    # can interrupt the test or a verdict being written (SIGKILL/SIGSTOP end the run: no verdict)
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP})
    raw = []
    while chunk := os.read(0, 1 << 20):
        raw.append(chunk)
    os.close(0)
    job = checker.job = json.loads(b"".join(raw))
    verdicts = os.dup(1)  # made after the fork: the candidate never holds it
    os.dup2(2, 1)  # whatever the test code prints goes to stderr, not into the verdicts
    sys.stdout = sys.stderr

    def emit(i: int, verdict: str, detail: str, value=None) -> None:
        rec = {"i": i, "verdict": verdict, "detail": detail}
        if verdict == "returned":
            rec["value"] = value
        line = (json.dumps(rec, separators=(",", ":")) + "\n").encode()
        view = memoryview(line)
        while view:
            view = view[os.write(verdicts, view):]

    try:
        (run_assert if job["kind"] == "assert" else run_calls)(job, checker, emit)
    finally:
        checker.stop()
    os._exit(0)


if __name__ == "__main__":
    checker_main()
