"""Run the paper's ablations (every ``conf/sweep/*.yaml``) one after the other, then
``reasonzoo report`` over them, and record what it cost.

    python benchmarks/ablations.py                      # all six sweeps, then the report
    python benchmarks/ablations.py --sweeps sampling    # some of them
    python benchmarks/ablations.py --report-only multirun/sampling/2026-11-30_05-00-00 ...

Each sweep is ``reasonzoo-train -m sweep=<name>`` (its jobs two at a time, one torch thread each,
as the sweep files set). Warm-ups are cached and shared by every arm and seed (``warmup_seed``);
a warm-up that is not cached yet is trained by the first job that needs it, and its minutes are
recorded separately (``warmup/seconds`` of the runs whose ``warmup/cached`` is 0), so the table
shows the sweep's time with and without them.

Writes ``benchmarks/results/ablations.json`` (wall time per sweep, the sweep directories, load
average, library versions, each arm's numbers as the report computes them; sweeps run by an earlier
invocation whose directories still exist are kept, so the six may be run in parts) and regenerates the
generated block of ``docs/ablations.md`` (between ``<!-- report -->`` and ``<!-- /report -->``)
from the report, whose plots go to ``docs/ablations/``. The text around the block (what the paper
found, whether it reproduced) is written by people, from these numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import versions  # this folder: the script runs as python benchmarks/ablations.py

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "ablations.md"
ASSETS = ROOT / "docs" / "ablations"
ORDER = ["negative_gradients", "sampling", "length_penalty", "losses", "cot_length", "model_size"]


def run_sweep(name: str, extra: list[str]) -> tuple[Path, float]:
    """Run one sweep in ``multirun/<name>/<time>``; returns its directory and wall seconds."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = ROOT / "multirun" / name / stamp
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "reasonzoo.train", "-m", f"sweep={name}", *extra,
                           f"hydra.sweep.dir={out}"], cwd=ROOT, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"sweep {name} failed (exit {proc.returncode}); its runs are in {out}")
    return out, seconds


def warmup_seconds(sweep: Path) -> float:
    """Seconds the sweep's jobs spent training warm-ups that were not cached yet."""
    total = 0.0
    for m in sweep.glob("*/metrics.jsonl"):
        first = json.loads(m.read_text().splitlines()[0])
        if first.get("warmup/cached") == 0.0:
            total += float(first.get("warmup/seconds", 0.0))
    return total


def regenerate_doc(report_md: str) -> None:
    """Replace the generated block of docs/ablations.md with ``report_md`` (plots under ablations/)."""
    body = re.sub(r"^# .*\n", "", report_md, count=1)
    body = re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", r"![\1](ablations/\2)", body)
    block = f"<!-- report -->\n{body.strip()}\n<!-- /report -->"
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Ablations\n\n<!-- report -->\n<!-- /report -->\n"
    if "<!-- report -->" not in text:
        raise SystemExit(f"{DOC}: no <!-- report --> ... <!-- /report --> block to regenerate")
    DOC.write_text(re.sub(r"<!-- report -->.*?<!-- /report -->", lambda _: block, text, flags=re.S), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweeps", nargs="*", default=ORDER, choices=ORDER)
    ap.add_argument("--report-only", nargs="*", default=None, metavar="SWEEP_DIR",
                    help="skip running: report these sweep directories (in the order of --sweeps' names)")
    ap.add_argument("--target", type=float, default=0.9)
    args, extra = ap.parse_known_args()
    from reasonzoo.ablation_report import aggregate, build_report, load_tables

    now = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
           "cpus": os.cpu_count(), "versions": versions(("torch", "transformers", "hydra-core", "hydra-joblib-launcher")), "loadavg_at_start": os.getloadavg(), "extra_overrides": extra}
    old = json.loads((RESULTS / "ablations.json").read_text()) if (RESULTS / "ablations.json").exists() else {}
    # sweeps of earlier invocations whose runs are still on disk are kept (the six may run in parts)
    sweeps = {k: v for k, v in old.get("sweeps", {}).items() if (ROOT / v.get("dir", "-")).is_dir()}
    if args.report_only is not None:
        for d in (Path(p).resolve() for p in args.report_only):
            rel = str(d.relative_to(ROOT) if d.is_relative_to(ROOT) else d)
            prev = sweeps.get(d.parent.name, {})
            sweeps[d.parent.name] = prev if prev.get("dir") == rel else {"dir": rel}
    else:
        for name in args.sweeps:
            d, seconds = run_sweep(name, extra)
            warm = warmup_seconds(d)
            sweeps[name] = {"dir": str(d.relative_to(ROOT)), "wall_seconds": seconds, "warmup_training_seconds": warm,
                            **now}
            print(f"== {name}: {seconds / 60:.1f} min ({warm / 60:.1f} CPU-min of it training uncached warm-ups)", flush=True)
    sweeps = {k: sweeps[k] for k in ORDER if k in sweeps}
    record = {**now, "sweeps": sweeps}
    timed = [s["wall_seconds"] for s in sweeps.values() if "wall_seconds" in s]
    if len(timed) == len(sweeps):
        record["total_wall_seconds"] = sum(timed)
    os.chdir(ROOT)  # relative sweep paths: the report's headings name multirun/<sweep>/<time>
    dirs = [Path(s["dir"]) for s in sweeps.values()]
    for t in load_tables(dirs):
        name = Path(t.source).parent.name
        record["sweeps"][name]["arms"] = [
            {"arm": r.name, "seeds": r.n, "initial": r.initial, "final": r.final, "best": r.best,
             "tokens_to_target": r.tokens, "reached": r.reached, "length": r.length, "wall_seconds": r.wall,
             "iterations": r.iterations}
            for r in aggregate(t, args.target)]
    if ASSETS.exists():
        shutil.rmtree(ASSETS)
    md, _ = build_report(dirs, ASSETS, args.target, title="Ablations")
    (ASSETS / "report.md").unlink()
    regenerate_doc(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ablations.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"results: {RESULTS / 'ablations.json'}; doc: {DOC}")


if __name__ == "__main__":
    main()
