"""Regenerate the README's measured-results blocks from ``benchmarks/results/*.json``.

    python benchmarks/readme.py          # rewrite the blocks in README.md
    python benchmarks/readme.py --check  # exit 1 if README.md differs from what the results give

A block sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in README.md and is
produced by the function ``NAME`` below from ``results/NAME.json``; nothing else in the README is
touched. ``tests/test_readme.py`` runs ``--check``, so a results file and the README cannot drift
apart.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _mmss(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def main_job() -> str:
    r = _load("main_job")
    levels = [k for k in r["after"] if k != "all"]
    lines = ["| difficulty (steps) | accuracy before | accuracy after | length before | length after |",
             "|---:|---:|---:|---:|---:|"]
    for d in levels + ["all"]:
        b, a = r["before"][d], r["after"][d]
        name = "all" if d == "all" else d.lstrip("d")
        acc_b, acc_a = (f"**{b['accuracy']:.3f}**", f"**{a['accuracy']:.3f}**") if d == "all" else (
            f"{b['accuracy']:.3f}", f"{a['accuracy']:.3f}")
        lines.append(f"| {name} | {acc_b} | {acc_a} | {b['mean_length']:.1f} | {a['mean_length']:.1f} |")
    gain = 100 * (r["after"]["all"]["accuracy"] - r["before"]["all"]["accuracy"])
    mid = ", ".join(f"{e['accuracy']:.3f}" for e in r["evaluations"][1:-1])
    t = r["timing"]
    times = []
    if "cached" in t:
        times.append(f"{_mmss(t['cached']['wall_seconds'])} with the warm-up cached")
    if "fresh_cache" in t:
        f = t["fresh_cache"]
        times.append(f"{_mmss(f['wall_seconds'])} from a fresh cache ({_mmss(f['warmup_seconds'])} of it the warm-up)")
    loads = ", ".join(f"{x['loadavg_at_start'][0]:.1f}" for x in t.values())
    text = [
        f"Measured by `benchmarks/main_job.py` (`results/main_job.json`, {r['date'][:10]}; 2 CPU cores, one torch "
        f"thread, seed 0, load average {loads} at the start): " + " and ".join(times) + f"; {r['iterations']} RL "
        f"iterations of {r['rl_iteration_seconds_median']:.2f} s (median) and {len(r['evaluations'])} held-out "
        "evaluations. Held-out pass@1 (one sample at T=1 per problem, 200 problems per difficulty) and mean "
        "response length in tokens, before and after RL:",
        "",
        *lines,
        "",
        f"RL moved held-out accuracy from {r['before']['all']['accuracy']:.3f} to {r['after']['all']['accuracy']:.3f} "
        f"({gain:+.1f} points" + (f"; {mid} at the evaluations in between" if mid else "") + ").",
    ]
    if "eval" in r:
        s, g = r["eval"]["sampled"]["all"], r["eval"]["greedy"]["all"]
        n = r["eval"]["sampled"]["settings"]["n"]
        text += ["", f"`{r['eval_command']}` on the final model ({_mmss(r['eval_seconds'])}): greedy accuracy "
                 f"{g['pass@1']:.3f}; with {n} samples per problem at T=1, pass@1 {s['pass@1']:.3f}, "
                 f"pass@4 {s['pass@4']:.3f}, pass@{n} {s[f'pass@{n}']:.3f}, maj@{n} {s[f'maj@{n}']:.3f}, "
                 f"mean length {s['mean_length']:.1f} tokens, truncated {s['truncated']:.3f}."]
    return "\n".join(text)


def ablations() -> str:
    """Wall time of each sweep of ``benchmarks/ablations.py`` and each arm's final accuracy."""
    r = _load("ablations")
    lines = ["| sweep | wall time | arms: final held-out pass@1 (mean ± std over seeds) |", "|---|---:|---|"]
    for name, sw in r["sweeps"].items():
        arms = "; ".join(f"`{a['arm']}` {a['final'][0]:.3f}" + (f" ± {a['final'][1]:.3f}" if a["final"][1] is not None else "")
                         for a in sw["arms"])
        lines.append(f"| `{name}` | {_mmss(sw['wall_seconds'])} | {arms} |")
    total = r.get("total_wall_seconds")
    head = (f"Measured by `benchmarks/ablations.py` (`results/ablations.json`, {r['date'][:10]}; 2 CPU cores, jobs two at "
            f"a time, warm-ups cached): the six sweeps took {_mmss(total)} in all." if total is not None else
            "Measured by `benchmarks/ablations.py` (`results/ablations.json`).")
    return "\n".join([head + " What reproduced and what did not: [docs/ablations.md](docs/ablations.md).", "", *lines])


BLOCKS = {"main_job": main_job, "ablations": ablations}
PATTERN = re.compile(r"(<!-- results:(\w+) -->\n)(.*?)(<!-- /results:\2 -->)", re.DOTALL)


def render(readme: str) -> str:
    def sub(m: re.Match) -> str:
        if m.group(2) not in BLOCKS:
            raise SystemExit(f"README.md: unknown results block {m.group(2)!r}; known: {', '.join(BLOCKS)}")
        return m.group(1) + BLOCKS[m.group(2)]() + "\n" + m.group(4)

    return PATTERN.sub(sub, readme)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when README.md is stale")
    args = ap.parse_args()
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("README.md is stale: run python benchmarks/readme.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
