"""reasonzoo.testgen: the paper's k-of-n filters (§2.3.5) at their boundaries, with hand-made
reference solutions (some wrong on chosen inputs) run in the sandbox."""
import pytest

from reasonzoo import testgen
from reasonzoo.sandbox import Limits, SandboxPool

LIMITS = Limits(cpu_s=0.3, wall_s=2.0)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2) as p:
        yield p


def solution(wrong_on=(), crash=False):
    """A program printing 2n, except 100 + its id on the inputs in ``wrong_on`` (each wrong
    solution prints its own wrong value, so wrong ones never agree with each other)."""
    bad = "raise SystemExit(1)" if crash else "print(100 + {tag})"
    return f"n = int(input())\nif n in {set(wrong_on) or '()'}:\n    {bad}\nelse:\n    print(2 * n)\n"


def solutions(bugs):
    """Ten solutions; ``bugs[j]`` = inputs solution j gets wrong."""
    return [solution(bugs.get(j, ())).replace("{tag}", str(j)) for j in range(10)]


def test_test_validity_boundary_7_of_10(pool):
    # input 1: solutions 7,8,9 wrong -> 7 agree: valid (boundary); input 2: 6..9 wrong -> 6 agree: invalid;
    # input 3: only 9 wrong -> valid
    sols = solutions({6: (2,), 7: (1, 2), 8: (1, 2), 9: (1, 2, 3)})
    res = testgen.select_tests(["1\n", "2\n", "3\n"], sols, pool, testgen.TestgenConfig(), LIMITS)
    assert [(c.agree, c.valid) for c in res.candidates] == [(7, True), (6, False), (9, True)]
    assert res.tests == [{"input": "1\n", "output": "2\n"}, {"input": "3\n", "output": "6\n"}]
    # solution 6 is wrong only on the invalid test, so it passes; 7, 8, 9 fail a valid one
    assert res.solution_passes == (True,) * 7 + (False,) * 3
    assert not res.kept and res.reason == "7 of 10 solutions pass all valid tests (< 9)"


@pytest.mark.parametrize("wrong,kept", [((9,), True), ((8, 9), False)])
def test_problem_kept_boundary_9_of_10(pool, wrong, kept):
    sols = solutions({j: (1,) for j in wrong})
    res = testgen.select_tests(["1\n", "2\n"], sols, pool, testgen.TestgenConfig(), LIMITS)
    assert all(c.valid for c in res.candidates)
    assert sum(res.solution_passes) == 10 - len(wrong)
    assert res.kept is kept and res.thresholds == (7, 9)


def test_failed_runs_agree_with_nobody(pool):
    # three solutions crash on input 5 and one loops forever: 6 agree -> invalid, even though the
    # failures "agree" on printing nothing
    sols = [solution() for _ in range(6)] + [solution((5,), crash=True)] * 3 + ["while True:\n    pass"]
    res = testgen.select_tests(["5\n"], sols, pool, testgen.TestgenConfig(), LIMITS)
    c = res.candidates[0]
    assert c.verdicts.count("runtime_error") == 3 and c.verdicts[-1] == "time_limit"
    assert c.outputs.count(None) == 4 and c.agree == 6 and not c.valid
    assert not res.kept and res.reason == "0 valid tests (< min_tests=1)"


def test_majority_output_is_normalised(pool):
    sols = ["print(' 4 ')", "print('4')\nprint()", "print(4)", "print(5)"]
    cfg = testgen.TestgenConfig(num_solutions=4, test_agree=3, problem_pass=3)
    res = testgen.select_tests(["\n"], sols, pool, cfg, LIMITS)
    assert res.tests == [{"input": "\n", "output": "4\n"}] and res.solution_passes == (True, True, True, False)
    assert res.kept


def test_thresholds_scale_with_fewer_solutions(pool):
    cfg = testgen.TestgenConfig()
    assert cfg.scaled(10) == (7, 9) and cfg.scaled(5) == (4, 5) and cfg.scaled(1) == (1, 1) and cfg.scaled(30) == (7, 9)
    # 5 solutions, one wrong: 4 of 5 agree -> valid; 4 of 5 pass < 5 -> dropped
    five = [solution() for _ in range(4)] + [solution((1,)).replace("{tag}", "0")]
    res = testgen.select_tests(["1\n"], five, pool, cfg, LIMITS)
    assert res.thresholds == (4, 5) and res.candidates[0].valid and not res.kept
    # one solution: its outputs are the tests
    res = testgen.select_tests(["3\n"], [solution()], pool, cfg, LIMITS)
    assert res.kept and res.tests == [{"input": "3\n", "output": "6\n"}]


def test_more_solutions_than_num_solutions_are_sampled(pool):
    sols = [solution() for _ in range(12)] + [solution((1,)).replace("{tag}", "1")] * 3
    cfg = testgen.TestgenConfig(num_solutions=4, test_agree=3, problem_pass=3)
    a = testgen.select_tests(["1\n"], sols, pool, cfg, LIMITS, seed=5)
    b = testgen.select_tests(["1\n"], sols, pool, cfg, LIMITS, seed=5)
    assert len(a.solution_passes) == 4 and a == b


def test_generate_inputs_seeded_distinct_round_robin():
    gens = [lambda rng: f"{rng.randint(0, 3)}\n", lambda rng: f"{rng.randint(10, 10**6)}\n"]
    a = testgen.generate_inputs(gens, 6, seed=1)
    assert a == testgen.generate_inputs(gens, 6, seed=1) and a != testgen.generate_inputs(gens, 6, seed=2)
    assert len(set(a)) == 6
    # a generator with 4 possible outputs cannot give 6 distinct inputs: it stops after 6 * max_attempts calls
    assert sorted(testgen.generate_inputs(gens[:1], 6, seed=1)) == ["0\n", "1\n", "2\n", "3\n"]
    with pytest.raises(TypeError, match="returned int"):
        testgen.generate_inputs([lambda rng: 3], 1, seed=0)


def test_generate_tests_end_to_end(pool):
    """The whole pipeline: generated inputs, 10 solutions of which one is wrong on even inputs."""
    gens = [lambda rng: f"{rng.randint(0, 50)}\n"]
    sols = [solution() for _ in range(9)] + ["n = int(input())\nprint(2 * n + (n % 2 == 0))"]
    res = testgen.generate_tests(gens, sols, pool, testgen.TestgenConfig(num_tests=8), LIMITS, seed=3)
    assert len(res.candidates) == 8 and res.kept and len(res.tests) == 8
    assert all(t["output"] == f"{2 * int(t['input'])}\n" for t in res.tests)
    assert res.solution_passes[:9] == (True,) * 9


@pytest.mark.parametrize("kw,match", [
    ({"test_agree": 5}, r"test_agree=5: must be a strict majority of num_solutions=10, i.e. in \(5, 10\]"),
    ({"test_agree": 11}, r"test_agree=11"),
    ({"problem_pass": 11}, r"problem_pass=11: must be <= num_solutions=10"),
    ({"num_tests": 0}, r"TestgenConfig.num_tests must be an int >= 1"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        testgen.TestgenConfig(**kw)
