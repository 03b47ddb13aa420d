"""Math answers checked with the ``math-verify`` library (Kimi k1.5 §2.1: verifiable rewards for
math; math-verify 0.9, huggingface/Math-Verify): r = 1 when the response's final answer is
equivalent to the reference (``verify(gold, pred)``: equal sets, intervals, tuples, matrices,
equivalent radicals and fractions, decimals, percentages), else 0.

Implementation details:

- **Reference** = bare LaTeX, the way MATH-style sets ship answers (``\\frac12``, ``(2, 5]``,
  ``2\\sqrt{2}``, ``\\text{(B)}``, ``50\\%``). math-verify's default ``parse`` hunts for ``$...$``
  or ``\\boxed{}`` and falls back to plain expressions, so on a bare reference it finds nothing or
  a fragment (``(2, 5]`` -> ``5``, ``2\\sqrt{2}`` -> ``2``) and wrong answers score 1. Here the
  reference is read as one LaTeX answer (:func:`answer_latex`): an outer ``$...$``, ``\\[...\\]``,
  ``\\(...\\)`` or ``\\boxed{...}`` is unwrapped, a trailing ``\\%`` becomes math-verify's
  percentage marker, and the result is parsed with ``LatexExtractionConfig`` only (no
  plain-expression fallback that could pick a fragment). A reference that parses to nothing
  (ill-formed LaTeX, prose answers) is compared as text (:func:`plain`: ``\\text{}``, spacing
  commands, spaces and case dropped); it is counted as ``reward/unparsed_reference`` (share of
  this iteration's problems) with one warning per problem id.
- **Response**: its final answer is the content of the **last** ``\\boxed{}`` (or ``\\fbox{}``),
  brace-matched; boxes immediately before it joined only by commas, "and", "or" or ``$`` are
  part of the same answer (``\\boxed{1}, \\boxed{-2}`` is the answer ``1, -2``); an earlier box
  separated by other text is a draft and ignored. The answer is parsed exactly like the
  reference, so a box holding only part of the reference (``\\boxed{2}`` for ``2\\sqrt{2}``)
  scores 0. A response with no box is handed whole to math-verify (``\\boxed`` first, then
  "final answer is", then the last LaTeX or plain expression). With ``pattern`` set, the first
  group of the last match is the answer, read like a box's content.
- ``verify`` is asymmetric: the reference goes first (it decides e.g. whether ``x = 2`` counts as
  ``2``), as math-verify documents.
- ``info["extracted"]`` is a canonical string of the extracted answer (sympy's ``str`` after
  ``doit``, which evaluates what the parser left unevaluated: ``\\sqrt{8}``, ``2\\sqrt{2}`` and
  ``2 \\sqrt 2`` all give ``2*sqrt(2)``; ``0.5`` and ``\\frac12`` give ``1/2``, decimals become
  fractions), for majority voting; None when nothing was extracted.
- **Time limit**: every rollout is scored in a worker process
  (:class:`reasonzoo.rewards.WorkerPool`) under ``timeout_s``; a time-out scores 0 and is counted
  in ``reward/timeouts``. math-verify's own ``signal.alarm`` limits are off (they work only in a
  main thread and cannot stop a C-level computation).
- Truncated responses: ``truncated`` (:class:`reasonzoo.rewards.RewardConfig`).

Measured on the public MATH-500 test set (``benchmarks/math_answers.py``, results in
``benchmarks/results/math_answers.json``), old reading (math-verify's defaults) -> this one:
references parsed 0.898 -> 1.000 (the old reading agreed with this one on 0.782 of them), the
dataset's own worked solutions scored 1 on 0.784 -> 1.000 of problems, responses boxing a strict
fragment of the reference scored 0 on 0.853 -> 1.000 of 300.

This module imports neither torch nor sympy at module level: worker processes load it.
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from typing import Any, Optional

from reasonzoo import hookimpl, plugin
from reasonzoo.rewards import TimedRewardConfig, WorkerReward

log = logging.getLogger("reasonzoo.reward")

BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
#: Text allowed between boxes that form one answer: commas, "and", "or", ``$``, spaces.
JOIN = re.compile(r"^(?:\s|\$|,|\\quad|\\text\{\s*(?:and|or)\s*\}|\band\b|\bor\b)*$")
PERCENT = re.compile(r"^(.*?)\s*\\?%\s*$", re.DOTALL)
#: Wrappers stripped from a whole answer: $...$, $$...$$, \[...\], \(...\).
WRAPS = (("$$", "$$"), ("$", "$"), ("\\[", "\\]"), ("\\(", "\\)"))
#: A plain number in E notation (``1e20``, ``2.5E-3``): what a JSONL file's numeric answer keeps as
#: its text. LaTeX has no E notation, and math-verify reads ``1e20`` as 1·e·20 (Euler's number).
E_NOTATION = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


@dataclass
class MathConfig(TimedRewardConfig):
    pattern: Optional[str] = None  #: regex whose first group holds the answer (read as LaTeX); None = last \boxed{}, else math-verify on the whole response


def boxes(text: str) -> list[tuple[int, int, str]]:
    """Every ``\\boxed{...}`` / ``\\fbox{...}`` in ``text`` as ``(start, end, content)``, braces
    matched; an unclosed box runs to the end of the text."""
    out = []
    pos = 0
    while (m := BOX.search(text, pos)) is not None:
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0) if text[i - 1] != "\\" else 0
            i += 1
        content = text[m.end() : i - 1] if depth == 0 else text[m.end() :]
        out.append((m.start(), i, content))
        pos = i
    return out


def final_boxed(text: str) -> str | None:
    """The final answer of a response by the box rule (module docstring), or None without a box."""
    found = boxes(text)
    if not found:
        return None
    parts = [found[-1]]
    for b in reversed(found[:-1]):
        if not JOIN.match(text[b[1] : parts[0][0]]):
            break
        parts.insert(0, b)
    return ", ".join(c.strip() for _, _, c in parts)


def answer_latex(answer: str) -> str:
    """A bare LaTeX answer as the LaTeX string math-verify should parse: outer wrappers and one
    ``\\boxed{}`` removed, a trailing ``\\%`` moved outside the ``$...$`` (its percentage marker)."""
    s = answer.strip()
    changed = True
    while changed:
        changed = False
        for left, right in WRAPS:
            if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
                s, changed = s[len(left) : -len(right)].strip(), True
        found = boxes(s)
        if len(found) == 1 and found[0][0] == 0 and found[0][1] == len(s):
            s, changed = found[0][2].strip(), True
    s = s.rstrip(" .")
    if E_NOTATION.match(s):
        s = _e_notation_latex(s)
    pct = PERCENT.match(s)
    if pct and pct.group(1).strip():
        return f"${pct.group(1).strip()}$\\%"
    return f"${s}$"


def _e_notation_latex(number: str) -> str:
    """``1e20`` -> ``100000000000000000000``, ``1e-05`` -> ``0.00001`` (exact decimal digits);
    mantissa ``\\cdot 10^{...}`` for exponents beyond 100."""
    from decimal import Decimal

    d = Decimal(number)
    if abs(d.adjusted()) <= 100:
        return format(d, "f")
    mantissa, _, exponent = number.lower().partition("e")
    return f"{mantissa} \\cdot 10^{{{int(exponent)}}}"


def plain(answer: str) -> str:
    """Text form of an answer for the fallback comparison: ``\\text{}``/``\\textbf{}``/``\\mathrm{}``
    unwrapped, spacing commands, ``$`` and spaces removed, lower case."""
    s = re.sub(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}", r"\1", answer)
    s = re.sub(r"\\[,;:! ]|\\quad|\\qquad|~|\$|\\left|\\right", "", s)
    return re.sub(r"\s+", "", s).lower()


@functools.lru_cache(maxsize=4096)
def parse_answer(answer: str) -> tuple:
    """A bare LaTeX answer (reference or extracted final answer) parsed by math-verify:
    a tuple of sympy objects (empty when nothing parses)."""
    from math_verify import LatexExtractionConfig, parse

    return tuple(parse(answer_latex(answer), extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
                       fallback_mode="no_fallback", parsing_timeout=None))


def clear_caches() -> None:
    """Empty this module's and math-verify's parse caches (benchmarks time cold parses with it)."""
    from math_verify import parser

    parse_answer.cache_clear()
    parser.parse_latex_cached.cache_clear()
    parser.parse_expr_cached.cache_clear()


def parse_response(text: str) -> list:
    """A response without a box, parsed by math-verify (boxed first, then anchors, then LaTeX or
    plain expressions)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(text, extraction_config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
                 fallback_mode="no_fallback", parsing_timeout=None)


def canonical(expr: Any) -> str:
    """A canonical string of a parsed answer (module docstring); equal for equivalent answers
    where sympy's automatic evaluation makes them equal (``simplify`` would merge more, e.g.
    expanded and factored polynomials, but doubled the scoring time on MATH-500)."""
    import sympy

    if isinstance(expr, str):
        return plain(expr)
    try:
        e = expr.doit() if hasattr(expr, "doit") else expr
        if isinstance(e, sympy.Expr) and e.has(sympy.Float):
            e = sympy.nsimplify(e, rational=True)  # 0.75 -> 3/4, as \frac34 gives
    except Exception:  # noqa: BLE001 - a canonical form is a convenience, never a failure
        e = expr
    if isinstance(e, sympy.MatrixBase):
        return f"Matrix({sympy.sstr(e.tolist())})"
    return sympy.sstr(e)


def score_math(reference: str, text: str, pattern: str | None) -> dict:
    """Score one response against a bare-LaTeX reference (runs in a worker process).

    :returns: ``{"score": 0.0 | 1.0, "correct": bool, "info": {"extracted": str | None,
        "unparsed_reference": bool}}``.
    """
    from math_verify import verify

    if pattern is not None:
        found = re.findall(pattern, text)
        last = found[-1] if found else None
        answer = (last[0] if isinstance(last, tuple) else last) if last is not None else None
    else:
        answer = final_boxed(text)
    gold = parse_answer(reference)
    if answer is not None:
        pred = list(parse_answer(answer)) if answer.strip() else []
    else:
        pred = parse_response(text)
    if not gold:
        # reference unreadable as LaTeX: exact text comparison with the extracted answer
        if answer is None:
            answer = pred and str(pred[-1])
        ok = bool(answer) and plain(answer) == plain(reference)
        return {"score": float(ok), "correct": ok,
                "info": {"extracted": plain(answer) if answer else None, "unparsed_reference": True}}
    ok = bool(pred) and bool(verify(list(gold), pred, timeout_seconds=None))
    return {"score": float(ok), "correct": ok,
            "info": {"extracted": canonical(pred[0]) if pred else None, "unparsed_reference": False}}


@plugin("reward", "math", MathConfig)
class MathVerify(WorkerReward):
    """Equivalence of the final (last boxed) answer with a bare-LaTeX reference, via math-verify."""

    problem_fields_required = ("answer",)  #: checked against the task at config validation
    preload = ("sympy", "math_verify")

    def __init__(self, cfg: MathConfig):
        super().__init__(cfg)
        self._warned: set[str] = set()

    def call(self, rollout):
        return score_math, (rollout.problem.answer, rollout.text, self.cfg.pattern)

    @hookimpl
    def rz_reward(self, ctx, groups):
        out = super().rz_reward(ctx, groups)
        for g, row in zip(groups, out):
            if g.problem.uid not in self._warned and any(r.info.get("unparsed_reference") for r in row):
                self._warned.add(g.problem.uid)
                log.warning("reward math: reference of problem %r does not parse as LaTeX (%r); "
                            "its responses are compared as text", g.problem.uid, g.problem.answer)
        return out

    @hookimpl
    def rz_iteration_end(self, ctx, groups):
        scored = [g for g in groups if g.rewards]
        unparsed = sum(any(r.info.get("unparsed_reference") for r in g.rewards) for g in scored)
        return {**super().rz_iteration_end(ctx, groups), "reward/unparsed_reference": unparsed / len(scored) if scored else 0.0}
