"""The README's main job, measured: runs ``reasonzoo-train`` exactly as the README says (plus a
run directory and a cache directory of this script's choosing) and records what the README
quotes in ``results/main_job.json``: wall time, warm-up time and whether the warm-up was cached,
held-out accuracy and mean response length per difficulty before and after RL, accuracy at every
evaluation, the command, library versions, the box's load average, and the date.

    OMP_NUM_THREADS=1 python benchmarks/main_job.py                 # warm-up cache of ~/.cache/reasonzoo
    OMP_NUM_THREADS=1 python benchmarks/main_job.py --fresh-cache   # time the warm-up too (~6 min more)

The same seed gives the same accuracies on the CPU; the wall times vary with the box's load. The
results file keeps one timing per cache state (``timing.fresh_cache`` and ``timing.cached``): a run
keeps the other state's timing when its accuracies equal the file's (same code, same figures) and
drops it otherwise. ``--plot docs/progress.png`` copies the run's progress plot. Rerun it whenever a
change moves the main job's figures, then ``python benchmarks/readme.py`` to regenerate the
README's tables from the results files.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import versions  # this folder: the script runs as python benchmarks/main_job.py

RESULTS = Path(__file__).resolve().parent / "results"


#: The distributions whose versions a results file records (with Python's, ``_common.versions``).
PACKAGES = ("reasonzoo", "torch", "transformers", "math-verify")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fresh-cache", action="store_true", help="use an empty warm-up cache (times the warm-up)")
    ap.add_argument("--out", default=str(RESULTS / "main_job.json"))
    ap.add_argument("--plot", default=None, help="copy the run's progress.png here (the README shows docs/progress.png)")
    ap.add_argument("overrides", nargs="*", help="extra overrides (the README's run has none)")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="rz-main-job-") as tmp:
        if args.fresh_cache:
            env["REASONZOO_CACHE_DIR"] = str(Path(tmp) / "cache")
        run_dir = Path(tmp) / "run"
        cmd = ["reasonzoo-train", *args.overrides]
        load = os.getloadavg()
        t0 = time.perf_counter()
        res = subprocess.run(cmd + [f"hydra.run.dir={run_dir}"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            sys.exit(f"main job failed (rc {res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        summary = json.loads((run_dir / "summary.json").read_text())
        recs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
        # `reasonzoo eval` on the run's final model: greedy, and 8 samples per problem at T=1
        ev_cmd = ["reasonzoo", "eval", str(run_dir), "--n", "8", "--k", "1,4,8", "--out", str(Path(tmp) / "eval")]
        t0 = time.perf_counter()
        ev = subprocess.run(ev_cmd, env=env, capture_output=True, text=True)
        ev_wall = time.perf_counter() - t0
        if ev.returncode != 0:
            sys.exit(f"reasonzoo eval failed (rc {ev.returncode}):\n{ev.stderr[-3000:]}")
        evaluation = json.loads((Path(tmp) / "eval" / "eval.json").read_text())
        if args.plot:
            shutil.copyfile(run_dir / "progress.png", args.plot)
    first = recs[0]
    evals = [{"iteration": r["iteration"], "accuracy": r["eval/accuracy"], "mean_length": r["eval/mean_length"]}
             for r in recs if "eval/accuracy" in r]
    rl = [r for r in recs if r["iteration"] > 0]
    before, after = summary["initial_eval"], summary["final_eval"]
    levels = sorted({k.rsplit("/", 1)[-1] for k in after if k.startswith("eval/accuracy/")}, key=lambda d: int(d[1:]))
    result = {
        "name": "main_job",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "OMP_NUM_THREADS=1 " + " ".join(cmd),
        "versions": versions(PACKAGES),
        "timing": {},
        "rl_iteration_seconds_median": sorted(r["time/iteration"] for r in rl)[len(rl) // 2] if rl else None,
        "iterations": len(rl),
        "before": {"all": {"accuracy": before["eval/accuracy"], "mean_length": before["eval/mean_length"]},
                   **{d: {"accuracy": before[f"eval/accuracy/{d}"], "mean_length": before[f"eval/mean_length/{d}"]}
                      for d in levels}},
        "after": {"all": {"accuracy": after["eval/accuracy"], "mean_length": after["eval/mean_length"]},
                  **{d: {"accuracy": after[f"eval/accuracy/{d}"], "mean_length": after[f"eval/mean_length/{d}"]}
                     for d in levels}},
        "evaluations": evals,
        "eval_command": " ".join(["reasonzoo", "eval", "<run dir>", *ev_cmd[3:-2]]),
        "eval_seconds": ev_wall,
        "eval": {m: {k: v for k, v in r.items() if k in ("all", "by_difficulty", "settings")}
                 for m, r in evaluation["modes"].items()},
    }
    cached = bool(first.get("warmup/cached", 0))
    timing = {"date": result["date"], "wall_seconds": wall, "warmup_seconds": first.get("time/warmup"),
              "loadavg_at_start": load, "loadavg_at_end": os.getloadavg()}
    old = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    same = all(old.get(k) == result[k] for k in ("before", "after", "evaluations"))
    result["timing"] = {**(old.get("timing", {}) if same else {}), "cached" if cached else "fresh_cache": timing}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    warm = "cached" if cached else f"{timing['warmup_seconds']:.0f} s"
    print(f"held-out accuracy {before['eval/accuracy']:.3f} -> {after['eval/accuracy']:.3f}; "
          f"wall {wall:.0f} s (warm-up {warm}); written to {args.out}")

if __name__ == "__main__":
    main()
