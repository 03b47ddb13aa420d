"""reward=math on a competition-math test set: references read, worked solutions accepted,
fragments refused; the old reading (math-verify's defaults, as reward/math did before issue 8)
beside the new one (``reasonzoo.plugins.reward.math``), interleaved per repeat.

    python benchmarks/math_answers.py --data math500.jsonl [--repeats 5] [--out benchmarks/results/math_answers.json]

``--data``: JSON lines with ``answer`` (the reference, bare LaTeX as MATH ships it), ``solution``
(the dataset's own worked solution, whose last ``\\boxed{}`` is its answer) and ``unique_id``
(e.g. the public MATH-500 test set; it is not committed here). Measured per side:

- ``references_parsed``: share of references that parse to something (the old reading often
  parses to a fragment, which counts as parsed: see ``references_read_as_new``);
- ``references_read_as_new``: share of references whose reading is equivalent to the new
  reading (old side only; "misread" = 1 minus it, over references the new side parses);
- ``solutions_scored_1``: share of worked solutions that score 1.0 against their reference,
  with the list of failures (id, reference, extracted answer);
- ``fragments_scored_0``: share of "fragment" responses (``\\boxed{}`` holding a strict part of the
  reference: a number inside it or one element of a tuple/list, never the whole answer with units,
  degrees, percent or a base subscript (``52_8``) dropped) that score 0, with the failures;
- seconds to score the worked solutions (min / median / max over repeats; the old side scores in
  this process with math-verify's own signal time limits, the new side in the plugin's worker
  processes, the plugin's real path, after one untimed pass that starts the workers; every
  timed pass starts with math-verify's and the plugin's parse caches emptied on both sides).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import statistics
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

UNITS = re.compile(r"_\{?\d+\}?$|\^\\circ|\^\{\\circ\}|\\circ|\\%|%|\\\$|(?:\\text|\\mbox|\\mathrm)\{[^}]*\}(?:\^\{?\d\}?)?|\\[,!;: ]|\s|\{,\}|\\dfrac|\\tfrac|\\frac")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def top_level_parts(ref: str) -> list[str]:
    """The comma-separated parts of a tuple/list answer at brace/bracket depth 0 (outer brackets removed)."""
    s = ref.strip()
    s = re.sub(r"^\\left\s*[\(\[]|\\right\s*[\)\]]$", "", s).strip()
    if s[:1] in "([" and s[-1:] in ")]":
        s = s[1:-1]
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += ch in "{([" and 1 or 0
        depth -= ch in "})]" and 1 or 0
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return [p for p in parts if p]


def fragments(ref: str) -> list[str]:
    """Strict parts of a reference (module docstring); none for a plain number or an equation."""
    core = UNITS.sub("", ref)
    if "=" in ref or NUMBER.fullmatch(core) or THOUSANDS.fullmatch(core):
        return []
    out = []
    for frag in NUMBER.findall(ref) + (top_level_parts(ref) if len(top_level_parts(ref)) > 1 else []):
        if frag not in out and UNITS.sub("", frag) != core:
            out.append(frag)
    return out


def response(answer: str) -> str:
    return f"Putting it together, the answer is $\\boxed{{{answer}}}$."


def old_score(reference: str, text: str) -> tuple[bool, list]:
    """reward/math before issue 8: math-verify's default parse of both, main-thread time limits."""
    from math_verify import parse, verify

    gold = parse(reference, parsing_timeout=5)
    pred = parse(text, parsing_timeout=5)
    return bool(verify(gold, pred, timeout_seconds=5)), gold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="JSON lines with answer, solution, unique_id")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes over the worked solutions per side")
    ap.add_argument("--workers", type=int, default=2, help="reward.workers of the new side")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "math_answers.json"))
    args = ap.parse_args()
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    from math_verify import verify

    from reasonzoo.plugins.reward.math import MathConfig, MathVerify, clear_caches, final_boxed, parse_answer
    from reasonzoo.types import FinishReason, Problem, Rollout, RolloutGroup, Segment

    raw = Path(args.data).read_bytes()
    rows = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    problems = [Problem(uid=r.get("unique_id", str(i)), prompt="", answer=r["answer"]) for i, r in enumerate(rows)]

    def groups(texts_per_problem):
        return [RolloutGroup(p, tuple(Rollout(p, (1,), (), (), FinishReason.STOP, (Segment(0, 0, 0),), t) for t in texts))
                for p, texts in zip(problems, texts_per_problem)]

    cfg = MathConfig(workers=args.workers)
    solution_groups = groups([[r["solution"]] for r in rows])
    plugin = MathVerify(cfg)
    plugin.rz_reward(None, solution_groups)  # untimed pass: workers started, every lazy sympy import done

    times = {"old": [], "new": []}
    old_ok = new_ok = None
    old_gold: list = []
    for rep in range(args.repeats):
        for side in (("old", "new") if rep % 2 == 0 else ("new", "old")):
            if side == "old":
                clear_caches()  # math-verify's parse caches cold, as in the new side's workers
                t0 = time.perf_counter()
                res = [old_score(r["answer"], r["solution"]) for r in rows]
                ok = [x for x, _ in res]
                old_gold = [g for _, g in res]
                assert old_ok in (None, ok), "old side not deterministic"
                old_ok = ok
            else:
                pool = plugin.pool.get()
                pool.run([(clear_caches, ())] * pool.size, timeout_s=60)  # one call reaches each idle worker
                t0 = time.perf_counter()
                out = plugin.rz_reward(None, solution_groups)
                times[side].append(time.perf_counter() - t0)
                ok = [row[0].correct for row in out]
                new_info = [row[0].info for row in out]
                assert new_ok in (None, ok), "new side not deterministic"
                new_ok = ok
                continue
            times[side].append(time.perf_counter() - t0)

    new_gold = [parse_answer(r["answer"]) for r in rows]
    read_as_new = [bool(ng) and bool(og) and bool(verify(list(ng), og, timeout_seconds=5)) for ng, og in zip(new_gold, old_gold)]
    parsed_new = [bool(g) for g in new_gold]

    frag_rows = [(i, f) for i, r in enumerate(rows) for f in fragments(r["answer"])]
    frag_texts = [[] for _ in rows]
    for i, f in frag_rows:
        frag_texts[i].append(response(f))
    frag_out = plugin.rz_reward(None, groups(frag_texts))
    new_frag = [(i, f, frag_out[i][frag_texts[i].index(response(f))]) for i, f in frag_rows]
    old_frag = [(i, f, old_score(rows[i]["answer"], response(f))[0]) for i, f in frag_rows]
    plugin.rz_run_end(ctx=None, summary={})

    def fails(ok, info=None):
        return [{"id": problems[i].uid, "reference": rows[i]["answer"], "boxed": final_boxed(rows[i]["solution"]),
                 **({"extracted": info[i].get("extracted"), "timeout": bool(info[i].get("timeout"))} if info else {})}
                for i, good in enumerate(ok) if not good]

    n, nf = len(rows), len(frag_rows)
    summary = lambda xs: {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}  # noqa: E731
    result = {
        "benchmark": "math_answers",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {"data": Path(args.data).name, "data_sha256": hashlib.sha256(raw).hexdigest(), "problems": n,
                     "fragments": nf, "repeats": args.repeats, "new": {"timeout_s": cfg.timeout_s, "workers": cfg.workers},
                     "old": "math_verify.parse(answer) / parse(solution) with defaults, verify(gold, pred), 5 s signal limits"},
        "versions": {"python": platform.python_version(), "math-verify": version("math-verify"), "sympy": version("sympy"),
                     "latex2sympy2_extended": version("latex2sympy2_extended"), "reasonzoo": version("reasonzoo")},
        "load_average": os.getloadavg(),
        "old": {
            "references_parsed": sum(bool(g) for g in old_gold) / n,
            "references_read_as_new": sum(read_as_new) / max(1, sum(parsed_new)),
            "solutions_scored_1": sum(old_ok) / n,
            "fragments_scored_0": sum(not ok for _, _, ok in old_frag) / max(1, nf),
            "seconds_solutions": summary(times["old"]),
            "solution_failures": fails(old_ok),
            "fragment_failures": [{"id": problems[i].uid, "reference": rows[i]["answer"], "fragment": f} for i, f, ok in old_frag if ok],
        },
        "new": {
            "references_parsed": sum(parsed_new) / n,
            "solutions_scored_1": sum(new_ok) / n,
            "fragments_scored_0": sum(not r.correct for _, _, r in new_frag) / max(1, nf),
            "seconds_solutions": summary(times["new"]),
            "solution_failures": fails(new_ok, new_info),
            "unparsed_references": [{"id": problems[i].uid, "reference": rows[i]["answer"]} for i, ok in enumerate(parsed_new) if not ok],
            "fragment_failures": [{"id": problems[i].uid, "reference": rows[i]["answer"], "fragment": f}
                                  for i, f, r in new_frag if r.correct],
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for side in ("old", "new"):
        s = result[side]
        print(f"{side}: references parsed {s['references_parsed']:.3f}, solutions scored 1 {s['solutions_scored_1']:.3f} "
              f"({len(s['solution_failures'])} failures), fragments scored 0 {s['fragments_scored_0']:.3f} of {nf}, "
              f"{s['seconds_solutions']['median']:.2f} s per pass")
    print(f"old reading equivalent to the new one on {result['old']['references_read_as_new']:.3f} of references; wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
