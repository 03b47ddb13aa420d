"""Sandbox throughput per test kind: stdin/stdout, assert (HumanEval style) and call tests.

For each kind, three contestants judge the same correct program with 2 concurrent workers:

* ``naive``: what a careful user writes without a sandbox: ``python -I -S`` on a file, 2 threads of
  ``subprocess.run``. stdio: the program with stdin; assert: HumanEval's own recipe, one file with
  prompt + completion + test + ``check(entry_point)``, pass = exit code 0; call: the program plus a
  driver that calls the function on JSON arguments and prints the results as JSON. No isolation,
  and for assert/call the driver shares the candidate's process (``print("PASSED")``/``exit(0)``
  forge it): a speed reference, not an alternative.
* ``forkserver`` and ``bwrap``: ``SandboxPool.judge`` (stdio) and ``judge_functions`` (assert, call)
  with full isolation and the two-process harness for function tests.

Interleaved: every repeat measures every (kind, contestant) in turn, ``--runs`` judged programs each;
``--repeats`` (>= 5) repeats; min / median / max of runs/s and tests/s (a call run judges
``CALLS`` tests). Every result is checked (a wrong verdict aborts). Writes
``benchmarks/results/sandbox.json``.

    OMP_NUM_THREADS=1 python benchmarks/sandbox.py [--runs 40] [--repeats 5]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from _common import stats  # noqa: E402  (this folder: the script runs as python benchmarks/sandbox.py)
from reasonzoo.sandbox import Limits, SandboxPool, judge_functions, probe  # noqa: E402

WORKERS = 2
LIMITS = Limits(cpu_s=2.0, wall_s=5.0)
STDIO_PROGRAM = "print(sum(map(int, input().split())))"
STDIO_TEST = ("17 25\n", "42\n")
PROMPT = 'from typing import List\n\n\ndef running_max(xs: List[int]) -> List[int]:\n    """Prefix maxima of xs."""\n'
COMPLETION = "    out, best = [], None\n    for x in xs:\n        best = x if best is None else max(best, x)\n" \
             "        out.append(best)\n    return out\n"
CHECK = ("def check(candidate):\n    assert candidate([1, 3, 2, 5]) == [1, 3, 3, 5]\n"
         "    assert candidate([]) == []\n    assert candidate([-2, -7]) == [-2, -2]\n")
CALLS = [([[1, 3, 2, 5]], [1, 3, 3, 5]), ([[]], []), ([[-2, -7]], [-2, -2]), ([[4]], [4])]
DRIVER = ("\nimport json, sys\nprint(json.dumps([running_max(*args) for args in json.loads(sys.stdin.read())]))\n")


def _timed(call, runs: int) -> tuple[float, list[float]]:
    """Run ``call`` ``runs`` times on WORKERS threads; returns elapsed seconds and latencies."""
    def one(_):
        t = time.perf_counter()
        call()
        return time.perf_counter() - t

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(WORKERS) as ex:
        lat = list(ex.map(one, range(runs)))
    return time.perf_counter() - start, lat


class Naive:
    """``python -I -S`` on a file: the reference."""

    def __init__(self, python: str, tmp: str):
        self.python, self.files = python, {}
        for kind, text in (("stdio", STDIO_PROGRAM), ("assert", PROMPT + COMPLETION + "\n" + CHECK + "\ncheck(running_max)\n"),
                           ("call", PROMPT + COMPLETION + DRIVER)):
            self.files[kind] = os.path.join(tmp, f"{kind}.py")
            with open(self.files[kind], "w") as f:
                f.write(text)

    def _run(self, kind: str, stdin: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.python, "-I", "-S", self.files[kind]], input=stdin, capture_output=True,
                              text=True, timeout=10)

    def judge(self, kind: str) -> None:
        if kind == "stdio":
            ok = self._run("stdio", STDIO_TEST[0]).stdout == STDIO_TEST[1]
        elif kind == "assert":
            ok = self._run("assert", "").returncode == 0
        else:
            out = self._run("call", json.dumps([args for args, _ in CALLS])).stdout
            ok = json.loads(out) == [expected for _, expected in CALLS]
        if not ok:
            raise RuntimeError(f"naive {kind}: wrong result")


class Sandboxed:
    """One isolating backend of ``reasonzoo.sandbox``."""

    def __init__(self, backend: str):
        self.pool = SandboxPool(backend=backend, workers=WORKERS)

    def judge(self, kind: str) -> None:
        if kind == "stdio":
            res = self.pool.judge(STDIO_PROGRAM, [STDIO_TEST], LIMITS)
        elif kind == "assert":
            res = judge_functions(self.pool, PROMPT + COMPLETION, [{"kind": "assert", "test": CHECK,
                                  "entry_point": "running_max"}], LIMITS, context=PROMPT)
        else:
            res = judge_functions(self.pool, PROMPT + COMPLETION, [
                {"kind": "call", "fn": "running_max", "args": args, "expected": expected} for args, expected in CALLS],
                LIMITS)
        if res.score != 1.0:
            raise RuntimeError(f"{self.pool.backend} {kind}: {res.verdicts} {res.runs[0]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40, help="judged programs per (kind, contestant, repeat)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats (>= 5)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "sandbox.json"))
    args = ap.parse_args()
    if args.repeats < 5:
        ap.error("--repeats must be >= 5")

    info = probe()
    kinds = ("stdio", "assert", "call")
    tests_per_run = {"stdio": 1, "assert": 1, "call": len(CALLS)}
    with tempfile.TemporaryDirectory() as tmp:
        contestants = {"naive_python_-I_-S": Naive(info.python, tmp)}
        for name in ("forkserver", "bwrap"):
            if info.backends[name]:
                print(f"skipping {name}: {info.backends[name]}")
            else:
                contestants[name] = Sandboxed(name)
        for c in contestants.values():  # warm-up: start servers, fill caches
            for kind in kinds:
                for _ in range(2 * WORKERS):
                    c.judge(kind)
        raw = {kind: {name: [] for name in contestants} for kind in kinds}
        lat = {kind: {name: [] for name in contestants} for kind in kinds}
        loads = []
        for rep in range(args.repeats):
            for kind in kinds:
                for name, c in contestants.items():
                    elapsed, lats = _timed(lambda c=c, kind=kind: c.judge(kind), args.runs)
                    raw[kind][name].append(args.runs / elapsed)
                    lat[kind][name] += lats
            loads.append(os.getloadavg()[0])
            print(f"repeat {rep + 1}/{args.repeats} done (load {loads[-1]:.1f})", flush=True)
        for c in contestants.values():
            if isinstance(c, Sandboxed):
                c.pool.close()

    rows = {}
    print(f"\n{'kind':<8}{'contestant':<22}{'runs/s (min/med/max)':>26}{'tests/s med':>13}"
          f"{'median ms':>11}{'vs naive':>10}")
    for kind in kinds:
        rows[kind] = {}
        ref = statistics.median(raw[kind]["naive_python_-I_-S"])
        for name in contestants:
            st = stats(raw[kind][name])
            row = {"runs_per_s": st, "tests_per_s": {k: v * tests_per_run[kind] for k, v in st.items()},
                   "tests_per_run": tests_per_run[kind], "median_latency_ms": 1000 * statistics.median(lat[kind][name]),
                   "speedup_vs_naive": st["median"] / ref, "isolated": name != "naive_python_-I_-S"}
            rows[kind][name] = row
            print(f"{kind:<8}{name:<22}{st['min']:>8.1f}/{st['median']:>6.1f}/{st['max']:>6.1f}      "
                  f"{row['tests_per_s']['median']:>11.1f}{row['median_latency_ms']:>11.1f}{row['speedup_vs_naive']:>9.2f}x")
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"workers": WORKERS, "runs_per_measurement": args.runs, "repeats": args.repeats,
                     "interleaved": "every repeat measures every (kind, contestant) in turn",
                     "limits": LIMITS.as_dict(), "calls_per_call_run": len(CALLS), "cpu_count": os.cpu_count(),
                     "omp_num_threads": os.environ["OMP_NUM_THREADS"]},
        "versions": {"python_trainer": sys.version.split()[0], "python_sandbox": info.python,
                     "platform": platform.platform()},
        "load_average_1min": stats(loads),
        "kinds": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
