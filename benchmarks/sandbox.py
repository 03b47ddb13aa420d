"""Sandbox throughput: executions/s and median latency of a trivial program, 2 concurrent workers.

Measures, side by side in one run, every usable backend of ``reasonzoo.sandbox`` and a naive
reference (``subprocess.run([sys.executable, ...])`` with the program file, no isolation), and
prints a table with ratios vs the naive reference. Writes ``benchmarks/results/sandbox.json``.
Goal (issue 4): >= 120 executions/s with full isolation on 2 cores.

    OMP_NUM_THREADS=1 python benchmarks/sandbox.py [--runs 400]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from reasonzoo.sandbox import Limits, SandboxPool, probe  # noqa: E402

PROGRAM = "print(sum(map(int, input().split())))"
STDIN = "17 25\n"
WORKERS = 2
LIMITS = Limits(cpu_s=2.0, wall_s=5.0)


def _measure(call, runs: int) -> dict:
    """Run ``call`` ``runs`` times on WORKERS threads; check every answer; time it."""
    def one(_):
        t = time.perf_counter()
        out = call()
        if out != "42\n":
            raise RuntimeError(f"wrong output {out!r}")
        return time.perf_counter() - t

    for _ in range(2 * WORKERS):  # warm-up: start servers, fill caches
        one(None)
    start = time.perf_counter()
    with cf.ThreadPoolExecutor(WORKERS) as ex:
        lat = list(ex.map(one, range(runs)))
    elapsed = time.perf_counter() - start
    return {"execs_per_s": runs / elapsed, "median_latency_ms": 1000 * statistics.median(lat),
            "p90_latency_ms": 1000 * statistics.quantiles(lat, n=10)[-1], "runs": runs}


def naive(runs: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "main.py")
        with open(path, "w") as f:
            f.write(PROGRAM)

        def call():
            return subprocess.run([sys.executable, path], input=STDIN, capture_output=True,
                                  text=True, timeout=10).stdout
        return _measure(call, runs)


def backend(name: str, runs: int) -> dict:
    with SandboxPool(backend=name, workers=WORKERS, allow_unsandboxed=True) as pool:
        def call():
            res = pool.run(PROGRAM, stdin=STDIN, limits=LIMITS)
            return res.stdout if res.verdict == "ok" else f"{res.verdict}: {res.stderr}"
        return _measure(call, runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=400, help="timed runs per backend")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "sandbox.json"))
    args = ap.parse_args()

    info = probe()
    rows = {"naive_subprocess": naive(args.runs)}
    for name in ("forkserver", "bwrap", "unsafe_subprocess"):
        if info.backends[name]:
            print(f"skipping {name}: {info.backends[name]}")
            continue
        rows[name] = backend(name, args.runs)
    ref = rows["naive_subprocess"]
    print(f"\n{'backend':<20}{'execs/s':>10}{'median ms':>12}{'p90 ms':>10}{'vs naive':>10}  isolated")
    for name, r in rows.items():
        r["speedup_vs_naive"] = r["execs_per_s"] / ref["execs_per_s"]
        iso = "yes" if name in ("forkserver", "bwrap") else "no"
        print(f"{name:<20}{r['execs_per_s']:>10.1f}{r['median_latency_ms']:>12.1f}"
              f"{r['p90_latency_ms']:>10.1f}{r['speedup_vs_naive']:>9.2f}x  {iso}")
    result = {
        "date": datetime.date.today().isoformat(),
        "settings": {"program": PROGRAM, "stdin": STDIN, "workers": WORKERS, "runs": args.runs,
                     "cpu_count": os.cpu_count(), "limits": LIMITS.as_dict(),
                     "python": sys.version.split()[0], "omp_num_threads": os.environ["OMP_NUM_THREADS"]},
        "goal_execs_per_s_isolated": 120,
        "backends": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
