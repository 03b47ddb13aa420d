"""Verdicts, run/judge results, and the rules that turn raw process facts into a verdict.

Scope: one place that decides verdicts for every backend (backends only report facts: exit code,
signal, CPU and wall time, whether a limit tripped), and the output comparison used by ``judge``.

Output comparison (``outputs_match``): both texts are split into lines (any of \\n, \\r\\n, \\r);
on each line, leading/trailing whitespace is dropped and inner runs of whitespace become one space;
trailing empty lines are dropped. The resulting line lists must be equal. So "1  2 \\n\\n" matches
"1 2", but "1\\n2" does not match "1 2" (line structure matters) and case matters.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from .config import Limits

OK = "ok"
WRONG_ANSWER = "wrong_answer"
TIME_LIMIT = "time_limit"
MEMORY_LIMIT = "memory_limit"
RUNTIME_ERROR = "runtime_error"
OUTPUT_LIMIT = "output_limit"
COMPILE_ERROR = "compile_error"
SANDBOX_ERROR = "sandbox_error"
SKIPPED = "skipped"
VERDICTS = (OK, WRONG_ANSWER, TIME_LIMIT, MEMORY_LIMIT, RUNTIME_ERROR, OUTPUT_LIMIT, COMPILE_ERROR,
            SANDBOX_ERROR, SKIPPED)
"""All verdicts. ``wrong_answer`` and ``skipped`` come from ``judge`` only; ``compile_error`` only
from languages with a compile step; ``sandbox_error`` means the sandbox failed, not the program."""


@dataclass(frozen=True)
class RunResult:
    """Outcome of one program run."""

    verdict: str
    """One of ``VERDICTS``; ``ok`` from ``run`` means: exited with 0 within every limit."""
    stdout: str
    """Captured stdout (UTF-8, undecodable bytes replaced), at most ``Limits.output_bytes``."""
    stderr: str
    """Captured stderr, at most ``Limits.stderr_bytes``; for ``sandbox_error`` the reason."""
    exit_code: int | None
    """Exit status, or None when the program was killed by a signal or never ran."""
    signal: int | None = None
    """Number of the signal that killed the program, if any."""
    cpu_s: float = 0.0
    """CPU seconds (user + system) of the program and the children it waited for."""
    wall_s: float = 0.0
    """Wall seconds from start to exit, as measured inside the sandbox."""
    max_rss: int = 0
    """Peak resident set size in bytes of the largest process (``ru_maxrss``)."""
    backend: str = ""
    """Backend that ran the program."""


@dataclass(frozen=True)
class JudgeResult:
    """Outcome of judging one program on a list of tests."""

    score: float
    """``fraction``: passed / total; ``all``: 1.0 if every test passed, else 0.0."""
    verdicts: list[str]
    """One verdict per test, in test order (``skipped`` for tests not run in ``all`` mode)."""
    runs: list[RunResult | None] = field(default_factory=list)
    """The run of each test (None where skipped)."""

    @property
    def passed(self) -> int:
        return sum(v == OK for v in self.verdicts)


def classify(facts: dict, limits: Limits) -> str:
    """Verdict of a finished run from raw facts (keys as produced by ``procio.wait_facts`` plus
    ``setup_ok``, ``wall_exceeded``, ``output_exceeded``, ``oom`` and the captured ``stderr``)."""
    sig = facts.get("signal")
    if not facts.get("setup_ok", True):
        return SANDBOX_ERROR
    last = _last_line(facts["stderr"]) if facts.get("exit_code") == 1 else ""
    if facts.get("output_exceeded") or sig == signal.SIGXFSZ or "[Errno 27] File too large" in last:
        return OUTPUT_LIMIT  # Python ignores SIGXFSZ: the write fails with EFBIG instead
    if facts.get("wall_exceeded") or sig == signal.SIGXCPU or facts["cpu_s"] > limits.cpu_s:
        return TIME_LIMIT
    if facts.get("oom") or last.startswith("MemoryError"):
        return MEMORY_LIMIT
    if sig is not None or facts.get("exit_code") != 0:
        return RUNTIME_ERROR
    return OK


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def normalise_output(text: str) -> list[str]:
    """Lines of ``text`` with whitespace normalised as described in the module docstring."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def outputs_match(actual: str, expected: str) -> bool:
    """Whether two outputs are equal after :func:`normalise_output`."""
    return normalise_output(actual) == normalise_output(expected)


def sandbox_error(reason: str, backend: str) -> RunResult:
    """Result for a run that the sandbox failed to carry out."""
    return RunResult(SANDBOX_ERROR, "", reason, None, backend=backend)


def make_result(facts: dict, stdout: bytes, stderr: bytes, limits: Limits, backend: str) -> RunResult:
    """Build the RunResult of a finished run from a backend's raw facts and captured output."""
    err_text = stderr.decode("utf-8", "replace")
    verdict = classify({**facts, "stderr": err_text}, limits)
    return RunResult(verdict=verdict, stdout=stdout.decode("utf-8", "replace"), stderr=err_text,
                     exit_code=facts.get("exit_code"), signal=facts.get("signal"),
                     cpu_s=facts.get("cpu_s", 0.0), wall_s=facts.get("wall_s", 0.0),
                     max_rss=facts.get("max_rss", 0), backend=backend)


def compile_failed(facts: dict, stdout: bytes, stderr: bytes, backend: str) -> RunResult:
    """Result of a program whose compile step failed (or hit a limit)."""
    return RunResult(COMPILE_ERROR, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"),
                     facts.get("exit_code"), facts.get("signal"), facts.get("cpu_s", 0.0),
                     facts.get("wall_s", 0.0), facts.get("max_rss", 0), backend)
