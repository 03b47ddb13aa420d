"""Function tests: judge a program that defines a function, not a stdin/stdout program.

Scope: the trainer side of the two function-test kinds, ``assert`` (HumanEval style: test code that
defines ``check(candidate)`` full of asserts, and the ``entry_point`` function it is given) and
``call`` (call a named function with JSON arguments, compare the return value with ``expected``).
Each is carried out by :mod:`harness` running as the sandbox program: the checking code and the
candidate run in separate processes, the candidate's results come back as plain data, and the
verdict travels on a channel the candidate holds no descriptor of (docs/sandbox.md, "Function
tests", has the threat model).

Test records (dicts, as in ``code_jsonl`` files):

* ``{"kind": "assert", "test": str, "entry_point": str}``: pass = ``check(candidate)`` returns
  normally, with ``candidate`` the program's ``entry_point``. ``context`` (the problem's code
  prefix, e.g. HumanEval's ``prompt``) is executed before the test code in the checking process, so
  helpers the test uses (HumanEval/32's ``poly``) exist there.
* ``{"kind": "call", "fn": str, "args": list, "kwargs": dict (optional), "expected": any JSON,
  "tol": float (optional, default 0)}``: pass = ``fn(*args, **kwargs)`` returns a value equal to
  ``expected`` by :func:`strict_equal`. The expected value never enters the sandbox.

One sandbox run per ``assert`` test; each run of consecutive ``call`` tests is one sandbox run (one
candidate process answers them in turn; a call over its budget is ``time_limit`` and a fresh process
answers the next). Budgets: an ``assert`` run gets ``limits``; a batch of n calls gets ``cpu_s`` and
``wall_s`` per call (enforced by the harness) and ``n * limit + HARNESS_S`` for the whole run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from . import harness
from .config import Limits
from .results import (MEMORY_LIMIT, OK, OUTPUT_LIMIT, RUNTIME_ERROR, SANDBOX_ERROR, SKIPPED,
                      TIME_LIMIT, WRONG_ANSWER, JudgeResult, RunResult)

KINDS = ("assert", "call")
"""Function-test kinds (stdin/stdout tests are the third kind, judged by ``SandboxPool.judge``)."""
HARNESS_S = 2.0
"""CPU and wall seconds added to a run for the harness itself (compiling it and the test code, the fork)."""
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness.py"), encoding="utf-8") as _f:
    HARNESS_SOURCE = _f.read()
"""Text of :mod:`harness`, the program every function-test run executes."""
_VERDICTS = {OK, WRONG_ANSWER, RUNTIME_ERROR, TIME_LIMIT, MEMORY_LIMIT, SANDBOX_ERROR}


def check_test(test, where: str = "test") -> dict:
    """Validate one function-test record; returns a normalised copy. Raises ``ValueError`` that
    names ``where`` and the field."""
    if not isinstance(test, dict) or test.get("kind") not in KINDS:
        raise ValueError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {test!r:.80}")
    if test["kind"] == "assert":
        allowed = {"kind", "test", "entry_point"}
        for key in ("test", "entry_point"):
            if not isinstance(test.get(key), str) or not test[key].strip():
                raise ValueError(f"{where}: an assert test needs a non-empty string {key!r}")
        if not test["entry_point"].isidentifier():
            raise ValueError(f"{where}: entry_point {test['entry_point']!r} is not a Python identifier")
    else:
        allowed = {"kind", "fn", "args", "kwargs", "expected", "tol"}
        if not isinstance(test.get("fn"), str) or not test["fn"].isidentifier():
            raise ValueError(f"{where}: a call test needs 'fn', a Python identifier, got {test.get('fn')!r}")
        if not isinstance(test.get("args"), list):
            raise ValueError(f"{where}: a call test needs 'args', a list, got {test.get('args')!r:.80}")
        if not isinstance(test.get("kwargs", {}), dict):
            raise ValueError(f"{where}: 'kwargs' must be an object")
        if "expected" not in test:
            raise ValueError(f"{where}: a call test needs 'expected'")
        tol = test.get("tol", 0.0)
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise ValueError(f"{where}: 'tol' must be a number >= 0, got {tol!r}")
    extra = sorted(set(test) - allowed)
    if extra:
        raise ValueError(f"{where}: unknown key(s) {extra} for a {test['kind']} test; allowed: {sorted(allowed)}")
    return dict(test)


def strict_equal(actual, expected, tol: float = 0.0) -> bool:
    """Whether a returned value (plain data rebuilt by the harness) equals ``expected`` (JSON data).

    Type-aware: ``bool`` equals only ``bool`` (``True != 1``); numbers (int, float) compare by value,
    floats within ``tol`` (absolute) when ``tol > 0``, NaN equals NaN; ``str`` only ``str``; a JSON
    list equals a list or tuple of equal items; a JSON object equals a dict with the same (string)
    keys and equal values; ``null`` only ``None``. Anything else (set, bytes, complex) equals nothing
    a JSON ``expected`` can express."""
    if expected is None or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    if type(expected) in (int, float):
        if type(actual) not in (int, float):
            return False
        if isinstance(actual, float) and isinstance(expected, float) and math.isnan(actual) and math.isnan(expected):
            return True
        return actual == expected or (tol > 0 and abs(actual - expected) <= tol)
    if type(expected) is str:
        return type(actual) is str and actual == expected
    if type(expected) is list:
        return (type(actual) in (list, tuple) and len(actual) == len(expected)
                and all(strict_equal(a, e, tol) for a, e in zip(actual, expected)))
    if type(expected) is dict:
        return (type(actual) is dict and set(actual) == set(expected)
                and all(strict_equal(actual[k], expected[k], tol) for k in expected))
    return False


@dataclasses.dataclass(frozen=True)
class _Batch:
    """One sandbox run: an assert test or consecutive call tests (indices into the test list)."""

    kind: str
    indices: tuple[int, ...]


def _batches(tests: list[dict]) -> list[_Batch]:
    out: list[_Batch] = []
    for i, t in enumerate(tests):
        if t["kind"] == "call" and out and out[-1].kind == "call":
            out[-1] = _Batch("call", out[-1].indices + (i,))
        else:
            out.append(_Batch(t["kind"], (i,)))
    return out


def _job(batch: _Batch, program: str, tests: list[dict], context: str, limits: Limits) -> tuple[str, Limits]:
    if batch.kind == "assert":
        t = tests[batch.indices[0]]
        job = {"kind": "assert", "program": program, "context": context, "test": t["test"],
               "entry_point": t["entry_point"]}
        run_limits = dataclasses.replace(limits, cpu_s=limits.cpu_s + HARNESS_S, wall_s=limits.wall_s + HARNESS_S)
    else:
        calls = [{"fn": tests[i]["fn"], "args": [harness.encode(a) for a in tests[i]["args"]],
                  "kwargs": {k: harness.encode(v) for k, v in tests[i].get("kwargs", {}).items()}}
                 for i in batch.indices]
        n = len(calls)
        job = {"kind": "call", "program": program, "calls": calls, "call_cpu_s": limits.cpu_s,
               "call_wall_s": limits.wall_s}
        run_limits = dataclasses.replace(limits, cpu_s=n * limits.cpu_s + HARNESS_S,
                                         wall_s=n * limits.wall_s + HARNESS_S)
    return json.dumps(job), run_limits


def _verdicts(batch: _Batch, tests: list[dict], run: RunResult) -> list[str]:
    """Per-test verdicts of one batch from the records on the verdict channel and the run's own
    verdict (limits of the whole run, a checker that died)."""
    records: dict[int, dict] = {}
    for line in run.stdout.splitlines():
        try:
            rec = json.loads(line)
            records[int(rec["i"])] = rec
        except (ValueError, KeyError, TypeError):
            if run.verdict != OK:
                break  # a record cut off by the run's end (an output limit, a kill): keep the rest
            return [SANDBOX_ERROR] * len(batch.indices)  # only the harness writes here
    out = []
    for k, i in enumerate(batch.indices):
        rec = records.get(k)
        if batch.kind == "assert" and run.verdict in (TIME_LIMIT, MEMORY_LIMIT, OUTPUT_LIMIT):
            out.append(run.verdict)  # the limits of the run are the limits of its one test
        elif rec is None:
            # no record: the run ended early; a clean exit without one is the harness's fault
            out.append(run.verdict if run.verdict != OK else SANDBOX_ERROR)
        elif rec["verdict"] == "returned":
            try:
                value = harness.decode(rec["value"])
            except (ValueError, TypeError, KeyError):
                out.append(SANDBOX_ERROR)
                continue
            t = tests[i]
            out.append(OK if strict_equal(value, t["expected"], float(t.get("tol", 0.0))) else WRONG_ANSWER)
        elif rec["verdict"] in _VERDICTS:
            out.append(MEMORY_LIMIT if run.verdict == MEMORY_LIMIT and rec["verdict"] == RUNTIME_ERROR
                       else rec["verdict"])
        else:
            out.append(SANDBOX_ERROR)
    return out


def judge_functions(pool, program: str, tests: list[dict], limits: Limits | None = None,
                    mode: str = "fraction", context: str = "") -> JudgeResult:
    """Judge ``program`` (Python source defining the functions under test) on function tests.

    :param pool: a :class:`~reasonzoo.sandbox.SandboxPool`; runs use its Python language.
    :param tests: records as in the module docstring (validated by :func:`check_test`).
    :param limits: per test (per call for ``call`` tests); default the pool's.
    :param mode: ``fraction`` (score = passed / tests) or ``all`` (1.0 only if all pass; batches run
        in order and stop at the first failing one, later tests are ``skipped``).
    :param context: code executed before an ``assert`` test's code in the checking process.
    :returns: a :class:`JudgeResult`; ``runs`` holds the batch's run for each of its tests.
    :raises ValueError: a malformed test or mode.
    """
    if mode not in ("fraction", "all"):
        raise ValueError(f"judge mode must be 'fraction' or 'all', got {mode!r}")
    if not tests:
        raise ValueError("judge_functions needs at least one test")
    tests = [check_test(t, f"tests[{i}]") for i, t in enumerate(tests)]
    limits = limits or pool.config.limits
    batches = _batches(tests)
    verdicts: list[str] = [SKIPPED] * len(tests)
    runs: list[RunResult | None] = [None] * len(tests)

    def collect(batch: _Batch, run: RunResult) -> bool:
        for i, v in zip(batch.indices, _verdicts(batch, tests, run)):
            verdicts[i], runs[i] = v, run
        return all(verdicts[i] == OK for i in batch.indices)

    if mode == "fraction":
        futures = [pool.submit(HARNESS_SOURCE, "python", *_job(b, program, tests, context, limits))
                   for b in batches]
        for b, fut in zip(batches, futures):
            collect(b, fut.result())
    else:
        for b in batches:
            if not collect(b, pool.run(HARNESS_SOURCE, "python", *_job(b, program, tests, context, limits))):
                for i in b.indices:  # within a call batch, calls after the first failure are skipped
                    if verdicts[i] != OK:
                        first = i
                        break
                for i in b.indices:
                    if i > first:
                        verdicts[i] = SKIPPED
                break
    passed = sum(v == OK for v in verdicts)
    score = passed / len(tests) if mode == "fraction" else float(passed == len(tests))
    return JudgeResult(score=score, verdicts=verdicts, runs=runs)
