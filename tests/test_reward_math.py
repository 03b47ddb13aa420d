"""reward/math on real answer formats: bare-LaTeX references (MATH-style), the last-box rule,
fragments that must score 0, unparsed references, and the time limit (issue 8, items 1 and 5).

The table holds every example of the issue; on the old reward (math-verify's default ``parse`` of
the bare reference) the rows marked "item 1" scored the other way round."""
import logging
import threading

import pytest

from reasonzoo.plugins.reward.math import MathConfig, MathVerify, answer_latex, final_boxed
from reasonzoo.types import FinishReason, Problem, Rollout, RolloutGroup, Segment


def B(s):
    return "So the answer is $\\boxed{" + s + "}$."


CASES = [
    # item 1: correct responses that scored 0
    ("\\frac12", B("\\frac{1}{2}"), 1),
    ("50\\%", B("50\\%"), 1),
    ("\\text{(B)}", B("\\text{(B)}"), 1),
    ("\\text{(B)}", B("B"), 1),
    ("(2, 5]", B("(2,5]"), 1),
    ("2\\sqrt{2}", B("\\sqrt{8}"), 1),
    ("\\sqrt{51}", B("\\sqrt{51}"), 1),
    ("p - q", B("p-q"), 1),
    ("\\pi", B("\\pi"), 1),
    # item 1: wrong responses that scored 1
    ("2\\sqrt{2}", B("2"), 0),
    ("(2, 5]", B("5"), 0),
    ("3\\pi", B("3"), 0),
    ("10^{6}", B("10"), 0),
    ("6 - 5i", B("5"), 0),
    ("1,-2", B("1"), 0),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", B("3"), 0),
    # intervals
    ("(-\\infty, 2) \\cup (3, \\infty)", B("(-\\infty,2)\\cup(3,\\infty)"), 1),
    ("[1, 3]", B("(1, 3)"), 0),
    # complex numbers
    ("3+4i", B("4i+3"), 1),
    ("6 - 5i", B("6+5i"), 0),
    # tuples
    ("(1, 2)", B("(1,2)"), 1),
    ("(1, 2)", B("(2,1)"), 0),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", B("(3, \\pi/2)"), 1),
    # radicals
    ("3\\sqrt{13}", B("\\sqrt{117}"), 1),
    ("\\frac{\\sqrt{3}}{2}", B("\\frac{1}{2}\\sqrt{3}"), 1),
    ("\\frac{\\sqrt{3}}{2}", B("\\sqrt{3}"), 0),
    # pi
    ("\\frac{\\pi}{4}", B("\\pi/4"), 1),
    ("2\\pi", B("6.28"), 0),
    # percentages
    ("50\\%", B("50"), 1),
    ("25\\%", B("50\\%"), 0),
    # text answers
    ("\\text{Evelyn}", B("\\text{Evelyn}"), 1),
    ("\\text{Evelyn}", B("\\text{Carla}"), 0),
    ("\\text{(C)}", B("C"), 1),
    ("\\text{(C)}", B("\\text{(D)}"), 0),
    # matrices
    ("\\begin{pmatrix} 3 \\\\ 2 \\\\ -6 \\end{pmatrix}", B("\\begin{pmatrix}3\\\\2\\\\-6\\end{pmatrix}"), 1),
    ("\\begin{pmatrix} 3 \\\\ 2 \\\\ -6 \\end{pmatrix}", B("\\begin{pmatrix}3\\\\2\\\\6\\end{pmatrix}"), 0),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", B("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"), 1),
    # units
    ("5\\text{ cm}", B("5"), 1),
    ("42", B("42 \\text{ inches}"), 1),
    ("12\\text{ cm}^2", B("13"), 0),
    # degrees
    ("90^\\circ", B("90"), 1),
    ("90^\\circ", B("90^{\\circ}"), 1),
    ("30^\\circ", B("60^\\circ"), 0),
    # thousands separators
    ("10,\\!000", B("10000"), 1),
    ("2220", B("2,\\!220"), 1),
    ("10{,}000", B("10,000"), 1),
    ("10,\\!000", B("10"), 0),
    # negative numbers
    ("-50", B("-50"), 1),
    ("-50", B("50"), 0),
    ("-\\frac{3}{4}", B("-0.75"), 1),
    # several boxed answers: the last one counts; adjacent boxes joined by , / and / or are one answer
    ("5", "First try $\\boxed{3}$. Wait, that is wrong: $\\boxed{5}$.", 1),
    ("3", "First try $\\boxed{3}$. Wait, that is wrong: $\\boxed{5}$.", 0),
    ("1,-2", "The roots are $\\boxed{1}, \\boxed{-2}$.", 1),
    ("1,-2", "The roots are $\\boxed{1}$ and $\\boxed{-2}$.", 1),
    # fractions and decimals, no box, wrapped references
    ("\\frac{14}{3}", B("\\dfrac{14}{3}"), 1),
    ("\\frac{14}{3}", B("4.67"), 0),
    ("$\\frac{1}{2}$", B("0.5"), 1),
    ("\\boxed{\\frac12}", B("\\frac{2}{4}"), 1),
    ("\\frac{1}{2}", "The answer is $\\frac{2}{4}$", 1),
    ("\\frac{3}{56}", B("3"), 0),
    ("10^{6}", B("6"), 0),
    # E notation, as task=jsonl keeps a numeric answer's text (1e20, 1e-05): a number, not 1*e*20
    ("1e20", B("10^{20}"), 1),
    ("1e20", B("100000000000000000000"), 1),
    ("1e20", B("20e"), 0),
    ("1e-05", B("0.00001"), 1),
    ("2.5E3", B("2500"), 1),
    ("10^{20}", B("1e20"), 1),
    ("1e300", B("10^{300}"), 1),
]


def group(answer, texts, uid="q", finish=FinishReason.STOP):
    p = Problem(uid=uid, prompt="", answer=answer)
    return RolloutGroup(p, tuple(Rollout(p, (1,), (), (), finish, (Segment(0, 0, 0),), t) for t in texts))


@pytest.fixture(scope="module")
def plugin():
    p = MathVerify(MathConfig())
    yield p
    p.rz_run_end(ctx=None, summary={})


def test_table_of_reference_response_pairs(plugin):
    assert len(CASES) >= 40
    out = plugin.rz_reward(None, [group(g, [t], uid=f"case{i}") for i, (g, t, _) in enumerate(CASES)])
    got = [int(row[0].correct) for row in out]
    wrong = [(g, t, w) for (g, t, w), c in zip(CASES, got) if c != w]
    assert not wrong, f"{len(wrong)} of {len(CASES)} pairs scored the other way: {wrong}"
    assert all(row[0].score == float(w) for row, (_, _, w) in zip(out, CASES))
    assert not any(row[0].info["unparsed_reference"] for row in out)


def test_extracted_is_canonical_for_equivalent_answers(plugin):
    out = plugin.rz_reward(None, [group("2\\sqrt{2}", [B("\\sqrt{8}"), B("2\\sqrt{2}"), B("2 \\sqrt 2"), B("3")]),
                                  group("\\frac12", [B("0.5"), B("\\frac{1}{2}"), B("\\dfrac{2}{4}")])])
    assert [r.info["extracted"] for r in out[0]] == ["2*sqrt(2)"] * 3 + ["3"]
    assert [r.info["extracted"] for r in out[1]] == ["1/2"] * 3


def test_last_box_rule():
    assert final_boxed("draft \\boxed{3} no wait \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert final_boxed("$\\boxed{1}$, $\\boxed{-2}$ and $\\boxed{5}$") == "1, -2, 5"
    assert final_boxed("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}") == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert final_boxed("no box here") is None
    assert answer_latex("$\\boxed{50\\%}$") == "$50$\\%" and answer_latex("\\[ x^2 \\]") == "$x^2$"


def test_pattern_reads_its_group_as_latex(make_ctx):
    plugin = MathVerify(MathConfig(pattern=r"Answer: (.*)"))
    out = plugin.rz_reward(make_ctx(), [group("2\\sqrt{2}", ["Answer: \\sqrt{8}", "Answer: 2", "no answer"])])
    plugin.pool.close()
    assert [r.correct for r in out[0]] == [True, False, False]
    assert out[0][2].info["extracted"] is None


def test_unparsed_reference_is_counted_and_warned_once_per_problem(plugin, caplog):
    bad, good = "0.\\overline{3}", "\\frac13"
    with caplog.at_level(logging.WARNING, logger="reasonzoo.reward"):
        first = plugin.rz_reward(None, [group(bad, [B(bad), B("\\frac13"), B("7")], uid="bad1"), group(good, [B("1/3")], uid="ok")])
        second = plugin.rz_reward(None, [group(bad, [B(bad)] * 3, uid="bad1"), group(bad, [B("1")], uid="bad2")])
    # text comparison for an unreadable reference: the same LaTeX scores 1, anything else 0
    assert [r.correct for r in first[0]] == [True, False, False] and first[1][0].correct
    warnings = [r.getMessage() for r in caplog.records if "does not parse as LaTeX" in r.getMessage()]
    assert len(warnings) == 2 and "'bad1'" in warnings[0] and "'bad2'" in warnings[1]
    scored = [RolloutGroup(g.problem, g.rollouts, tuple(r)) for g, r in
              zip([group(bad, ["a"] * 3, uid="bad1"), group(good, ["a"], uid="ok")], first)]
    assert plugin.rz_iteration_end(None, scored)["reward/unparsed_reference"] == 0.5
    assert second[0][0].correct


def test_runaway_answer_times_out_from_a_worker_thread(make_ctx):
    """``\\boxed{9^{9^{9^{9^{9}}}}}`` ran for minutes in a thread (math-verify's alarm is main-thread
    only): now the worker process is killed at timeout_s and the rollout scores 0, counted."""
    plugin = MathVerify(MathConfig(timeout_s=2.0))
    got = {}
    g = group("1", ["$\\boxed{9^{9^{9^{9^{9}}}}}$", B("1")])
    t = threading.Thread(target=lambda: got.update(out=plugin.rz_reward(None, [g])))
    t.start()
    t.join(300)  # a hang guard, not a timing assertion
    assert not t.is_alive()
    plugin.pool.close()
    runaway, fine = got["out"][0]
    assert runaway.info["timeout"] is True and runaway.score == 0.0 and not runaway.correct
    assert fine.correct and "timeout" not in fine.info
    metrics = plugin.rz_iteration_end(None, [RolloutGroup(g.problem, g.rollouts, (runaway, fine))])
    assert metrics["reward/timeouts"] == 1.0
