"""reward/code: hand-computed rewards through the sandbox, the extraction rule, verdict metrics,
failures that cost one sample, the pool's lifecycle, and config errors."""
import logging

import pytest

from reasonzoo.plugins.reward.code import CodeConfig, CodeLimitsConfig, CodeReward, extract_program
from reasonzoo.sandbox import Limits
from reasonzoo.types import FinishReason, Problem, Rollout, RolloutGroup, Segment

DOUBLE = [{"input": f"{i}\n", "output": f"{2 * i}\n"} for i in range(4)]  # print 2n for n = 0..3
RIGHT = "print(2*int(input()))"
WRONG_ON_3 = "n=int(input())\nprint(2*n if n != 3 else 7)"  # fails 1 of the 4 tests


def groups(texts, tests=DOUBLE, uid="q", **meta):
    p = Problem(uid=uid, prompt="", answer="", meta={"tests": tests, **meta} if tests is not None else meta)
    return [RolloutGroup(p, tuple(Rollout(p, (1,), (), (), FinishReason.STOP, (Segment(0, 0, 0),), t) for t in texts))]


def fast(**kw):
    return CodeConfig(limits=CodeLimitsConfig(cpu_s=0.3, wall_s=2.0), **kw)


@pytest.fixture(scope="module")
def fraction():
    plugin = CodeReward(fast(mode="fraction"))
    yield plugin
    plugin.close()


@pytest.fixture(scope="module")
def all_pass():
    plugin = CodeReward(fast(mode="all"))
    yield plugin
    plugin.close()


def test_hand_computed_rewards(fraction, all_pass, make_ctx):
    texts = [RIGHT, WRONG_ON_3, "while True:\n    pass", "print(2*int(input())", "print(2*int(input()))\nprint('extra')"]
    frac = fraction.rz_reward(make_ctx(), groups(texts))[0]
    assert [r.score for r in frac] == [1.0, 0.75, 0.0, 0.0, 0.0]
    assert [r.correct for r in frac] == [True, False, False, False, False]
    assert frac[1].info["verdicts"] == ["ok", "ok", "ok", "wrong_answer"] and frac[1].info["passed"] == 3
    assert frac[2].info["verdicts"] == ["time_limit"] * 4  # infinite loop: CPU limit, scored 0
    assert frac[3].info["verdicts"] == ["runtime_error"] * 4 and "SyntaxError" in frac[3].info["stderr"]
    assert frac[4].info["verdicts"] == ["wrong_answer"] * 4  # line structure matters
    alls = all_pass.rz_reward(make_ctx(), groups([RIGHT, WRONG_ON_3]))[0]
    assert [(r.score, r.correct) for r in alls] == [(1.0, True), (0.0, False)]
    assert alls[1].info["verdicts"] == ["ok", "ok", "ok", "wrong_answer"] and alls[1].info["passed"] == 3


def test_mode_all_stops_at_first_failure_deterministically(all_pass, make_ctx):
    """Tests run in order and stop at the first failure, whatever the timing of other samples."""
    wrong_on_1 = "n=int(input())\nprint(2*n if n != 1 else 0)"
    out = all_pass.rz_reward(make_ctx(), groups([wrong_on_1, "print(", RIGHT] * 6))[0]
    for i in range(0, 18, 3):
        assert out[i].info["verdicts"] == ["ok", "wrong_answer", "skipped", "skipped"]
        assert out[i + 1].info["verdicts"] == ["runtime_error"] + ["skipped"] * 3
        assert out[i + 2].info["verdicts"] == ["ok"] * 4 and out[i + 2].score == 1.0


def test_resource_verdicts(fraction, make_ctx):
    one = [{"input": "", "output": "x\n"}]
    out = fraction.rz_reward(make_ctx(), groups(
        ["x = bytearray(2 * 10**9)", "import sys\nwhile True: sys.stdout.write('y' * 4096)", "import time\ntime.sleep(30)"], one))[0]
    assert [r.info["verdicts"] for r in out] == [["memory_limit"], ["output_limit"], ["time_limit"]]
    assert all(r.score == 0.0 for r in out)


@pytest.mark.parametrize("text,expected", [
    ("```python\nprint(1)\n```", "print(1)"),
    ("Here:\n```py\nprint(1)\n```\nthen better:\n```python\nprint(2)\n```\ndone", "print(2)"),  # last tagged block
    ("```text\nnot code\n```\n```\nprint(3)\n```", "print(3)"),  # untagged block when no python block
    ("```python\nprint(4)\n```\n```\nprint(5)\n```", "print(4)"),  # a tagged block wins over a later untagged one
    ("  print(6)  \n", "print(6)"),  # no fence: the whole response
    ("```cpp\nint main(){}\n```", "```cpp\nint main(){}\n```"),  # another language's block is not Python
])
def test_extraction_rule(text, expected):
    assert extract_program(text) == expected


def test_extraction_by_language_and_regex(fraction, make_ctx):
    assert extract_program("```c++\nint main(){}\n```", "cpp") == "int main(){}"
    assert extract_program("```sh\necho hi\n```", "sh") == "echo hi"
    assert extract_program("<code>print(1)</code> and <code>print(2)</code>", pattern=r"<code>(.*?)</code>") == "print(2)"
    assert extract_program("no tags", pattern=r"<code>(.*?)</code>") is None
    plugin = CodeReward(fast(pattern=r"<code>(.*?)</code>"))
    try:
        out = plugin.rz_reward(make_ctx(), groups(["<code>print(2*int(input()))</code>", "print(2*int(input()))"]))[0]
    finally:
        plugin.close()
    assert out[0].score == 1.0
    assert out[1].score == 0.0 and out[1].info["verdicts"] == ["no_program"] * 4 and out[1].info["program"] is None


def test_problem_language_overrides_default(fraction, make_ctx):
    out = fraction.rz_reward(make_ctx(), groups(['read n; echo $((n * 2))'], language="sh"))[0]
    assert out[0].score == 1.0 and out[0].info["language"] == "sh"


def test_failures_cost_one_sample(fraction, make_ctx, caplog, monkeypatch):
    with caplog.at_level(logging.WARNING, logger="reasonzoo.reward"):
        out = fraction.rz_reward(make_ctx(), groups([RIGHT], tests=None, uid="no-tests"))
    assert out[0][0].score == 0.0 and not out[0][0].correct and "meta['tests']" in out[0][0].info["error"]
    assert "reward code failed on problem 'no-tests'" in caplog.text
    bad = [{"input": 1, "output": "2\n"}]
    assert "tests'][0]" in fraction.rz_reward(make_ctx(), groups([RIGHT], tests=bad))[0][0].info["error"]
    # the sandbox raising for one program: that sample scores 0, its neighbours are judged normally
    pool, _ = fraction._resources()
    real = type(pool).judge

    def flaky(self, program, *a, **kw):
        if "boom" in program:
            raise RuntimeError("sandbox exploded")
        return real(self, program, *a, **kw)

    monkeypatch.setattr(type(pool), "judge", flaky)
    out = fraction.rz_reward(make_ctx(), groups([RIGHT, "# boom\n" + RIGHT, RIGHT]))[0]
    assert [r.score for r in out] == [1.0, 0.0, 1.0] and "sandbox exploded" in out[1].info["error"]


def test_sandbox_error_verdict_is_one_sample(make_ctx, monkeypatch):
    """A sandbox worker that cannot start gives ``sandbox_error`` verdicts (the pool catches it):
    the sample scores 0 and nothing raises."""
    from reasonzoo.sandbox import SandboxPool

    def broken(self):
        raise OSError("fork server died")

    monkeypatch.setattr(SandboxPool, "_make_worker", broken)
    plugin = CodeReward(fast())
    try:
        out = plugin.rz_reward(make_ctx(), groups([RIGHT, RIGHT]))[0]
    finally:
        plugin.close()
    assert [(r.score, r.info["verdicts"]) for r in out] == [(0.0, ["sandbox_error"] * 4)] * 2


def test_concurrent_results_are_in_order_and_deterministic(fraction, make_ctx):
    texts = [RIGHT if i % 3 == 0 else WRONG_ON_3 if i % 3 == 1 else "print(" for i in range(24)]
    g = groups(texts[:12], uid="a") + groups(texts[12:], uid="b")
    first = fraction.rz_reward(make_ctx(), g)
    second = fraction.rz_reward(make_ctx(), g)
    expect = [1.0 if i % 3 == 0 else 0.75 if i % 3 == 1 else 0.0 for i in range(24)]
    assert [r.score for row in first for r in row] == expect
    assert [[r.info for r in row] for row in first] == [[r.info for r in row] for row in second]


def test_iteration_end_verdict_metrics(fraction, make_ctx):
    g = groups([RIGHT, WRONG_ON_3, "print("])
    scored = [RolloutGroup(g[0].problem, g[0].rollouts, tuple(fraction.rz_reward(make_ctx(), g)[0]))]
    m = fraction.rz_iteration_end(make_ctx(), scored)
    assert all(k.startswith("reward/") for k in m)
    # 12 test runs: 4 + 3 ok, 1 wrong answer, 4 runtime errors
    assert m["reward/code_test_runs"] == 12.0
    assert m["reward/verdict_ok"] == pytest.approx(7 / 12)
    assert m["reward/verdict_wrong_answer"] == pytest.approx(1 / 12)
    assert m["reward/verdict_runtime_error"] == pytest.approx(4 / 12)
    assert m["reward/verdict_time_limit"] == 0.0 and m["reward/verdict_no_program"] == 0.0
    assert m["reward/code_pass_fraction"] == pytest.approx((1 + 0.75 + 0) / 3)
    assert m["reward/code_errors"] == 0.0


def test_pool_is_lazy_and_closed_at_run_end(make_ctx):
    plugin = CodeReward(fast())
    assert plugin._pool is None  # nothing started by construction
    assert plugin.rz_reward(make_ctx(), groups([RIGHT]))[0][0].score == 1.0
    pool = plugin._pool
    assert pool is not None and not pool._closed
    plugin.rz_run_end(make_ctx(), {})
    assert plugin._pool is None and pool._closed


def test_limits_map_onto_sandbox_limits():
    lim = CodeLimitsConfig(cpu_s=0.5, wall_s=4, memory_mib=128, processes=3, open_files=20, output_kib=2, file_mib=1).to_limits()
    assert lim == Limits(cpu_s=0.5, wall_s=4, memory_bytes=128 << 20, processes=3, open_files=20,
                         output_bytes=2048, file_bytes=1 << 20)


@pytest.mark.parametrize("cfg,match", [
    (CodeConfig(mode="some"), r"reward.mode='some': allowed values are fraction, all"),
    (CodeConfig(language="cobol"), r"reward.language='cobol': allowed values are c, cpp, python, sh"),
    (CodeConfig(backend="docker"), r"reward.backend='docker': allowed values are auto, forkserver"),
    (CodeConfig(backend="unsafe_subprocess"), r"reward.allow_unsandboxed=true"),
    (CodeConfig(pattern="("), r"reward.pattern='\(': not a valid regex"),
    (CodeConfig(limits=CodeLimitsConfig(cpu_s=0)), r"reward.limits: Limits.cpu_s must be a positive number"),
    (CodeConfig(workers=0), r"reward.workers=0: must be >= 1"),
])
def test_config_errors_name_the_key(cfg, match):
    with pytest.raises(ValueError, match=match):
        CodeReward(cfg)


def test_code_reward_selected_by_config():
    from reasonzoo.config import validate
    from reasonzoo.registry import build_plugins
    from reasonzoo.train import compose

    cfg = compose(["task=synth_code", "reward=code", "reward.mode=all", "reward.limits.cpu_s=0.5"])
    validate(cfg)
    plugin = build_plugins(cfg)["reward/code"]
    assert plugin.cfg.mode == "all" and plugin.limits.cpu_s == 0.5 and plugin._pool is None


# ---- function tests through the reward (assert and call kinds, a prefix the response completes) ----

PREFIX = 'def scale(xs: list, k: int) -> list:\n    """Multiply every element of xs by k."""\n'
CHECK = ("def check(candidate):\n    assert candidate([1, 2], 3) == [3, 6]\n    assert candidate([], 5) == []\n"
         "    assert candidate([-1], 0) == [0]\n")
BODY = "    return [x * k for x in xs]\n"


def fn_groups(texts, tests, prefix=PREFIX, **meta):
    return groups(texts, tests=tests, prefix=prefix, **meta)


def test_assert_tests_complete_the_prefix(fraction, make_ctx):
    tests = [{"kind": "assert", "test": CHECK, "entry_point": "scale"}]
    texts = [BODY,                                                       # a body: continues the stub
             "```python\ndef scale(xs, k):\n    return [k * x for x in xs]\n```",  # the whole def, fenced
             "    return None\n",
             "    print('PASSED')\n    return xs\n",
             "    import os\n    os._exit(0)\n",
             "    return [x * k for x in xs] +\n"]                            # syntax error
    out = fraction.rz_reward(make_ctx(), fn_groups(texts, tests))[0]
    assert [r.score for r in out] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert [r.info["verdicts"][0] for r in out] == ["ok", "ok", "wrong_answer", "wrong_answer", "runtime_error",
                                                    "runtime_error"]
    assert out[0].info["program"] == PREFIX + BODY  # prefix + completion, indentation kept


def test_call_tests_and_mixed_kinds(fraction, all_pass, make_ctx):
    tests = [{"input": "", "output": "loaded\n"},  # a stdin/stdout test beside the function tests
             {"kind": "call", "fn": "scale", "args": [[1, 2], 2], "expected": [2, 4]},
             {"kind": "call", "fn": "scale", "args": [[0.5], 3], "expected": [1.5]},
             {"kind": "call", "fn": "scale", "args": [[True], 1], "expected": [True]}]
    texts = [BODY + "print('loaded')\n", BODY, "    return [1 for x in xs]\nprint('loaded')\n"]
    out = fraction.rz_reward(make_ctx(), fn_groups(texts, tests))[0]
    # True * 1 is the int 1, not True: strict comparison fails the last test of the right body
    assert [r.info["verdicts"] for r in out] == [["ok", "ok", "ok", "wrong_answer"],
                                                 ["wrong_answer", "ok", "ok", "wrong_answer"],
                                                 ["ok", "wrong_answer", "wrong_answer", "wrong_answer"]]
    assert [r.score for r in out] == [0.75, 0.5, 0.25]
    alls = all_pass.rz_reward(make_ctx(), fn_groups(texts[:2], tests))[0]
    assert [r.info["verdicts"] for r in alls] == [["ok", "ok", "ok", "wrong_answer"],
                                                  ["wrong_answer", "skipped", "skipped", "skipped"]]
    assert [r.score for r in alls] == [0.0, 0.0]


def test_function_tests_need_python(fraction, make_ctx):
    tests = [{"kind": "call", "fn": "f", "args": [], "expected": 1}]
    out = fraction.rz_reward(make_ctx(), groups(["echo 1"], tests=tests, language="sh"))[0]
    assert out[0].score == 0.0 and "function tests (assert, call) need language python" in out[0].info["error"]
    bad = [{"kind": "call", "fn": "f", "args": 3, "expected": 1}]
    out = fraction.rz_reward(make_ctx(), groups(["def f(): return 1"], tests=bad))[0]
    assert "problem.meta['tests'][0]: a call test needs 'args', a list" in out[0].info["error"]


@pytest.mark.parametrize("mode,score,in_loss,ran", [("zero", 0.0, True, False), ("mask", 0.0, False, False),
                                                   ("score", 1.0, True, True)])
def test_truncated_responses(mode, score, in_loss, ran, make_ctx, monkeypatch):
    """reward.truncated on the code reward: a correct program in a response cut at max_new_tokens
    is not run and scores 0 (zero, mask: also out of the loss) or is run and scored (score); a
    finished response is always run; the share shows in reward/truncated."""
    plugin = CodeReward(fast(truncated=mode))
    judged = []
    score_fn = plugin.score
    monkeypatch.setattr(plugin, "score", lambda r, pool: judged.append(r.finish_reason) or score_fn(r, pool))
    try:
        p = Problem(uid="q", prompt="", answer="", meta={"tests": DOUBLE})
        cut = Rollout(p, (1,), (), (), FinishReason.LENGTH, (Segment(0, 0, 0),), RIGHT)
        done = Rollout(p, (1,), (), (), FinishReason.STOP, (Segment(0, 0, 0),), RIGHT)
        (res,) = plugin.rz_reward(make_ctx(), [RolloutGroup(p, (cut, done))])
        assert (res[0].score, res[0].in_loss, res[1].score) == (score, in_loss, 1.0)
        assert judged == ([FinishReason.LENGTH, FinishReason.STOP] if ran else [FinishReason.STOP])
        scored = [RolloutGroup(p, (cut, done), rewards=tuple(res))]
        assert plugin.rz_iteration_end(make_ctx(), scored)["reward/truncated"] == 0.5
    finally:
        plugin.close()
