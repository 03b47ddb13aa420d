"""task/code_jsonl, task/synth_code, and the k15_code recipe end to end (rewards computed in the
sandbox)."""
import json
from pathlib import Path

import pytest

from reasonzoo.plugins.reward.code import CodeConfig, CodeLimitsConfig, CodeReward
from reasonzoo.plugins.task.code_jsonl import CodeJsonl, CodeJsonlConfig, read_code_problems
from reasonzoo.plugins.task.synth_code import SynthCode, SynthCodeConfig, evaluate, make_problem
from reasonzoo.types import FinishReason, Rollout, RolloutGroup, Segment

TESTS = [{"input": "1 2\n", "output": "3\n"}]


def write(path, *records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def as_groups(problems, texts_of):
    return [RolloutGroup(p, tuple(Rollout(p, (1,), (), (), FinishReason.STOP, (Segment(0, 0, 0),), t)
                                  for t in texts_of(p))) for p in problems]


@pytest.fixture(scope="module")
def reward():
    plugin = CodeReward(CodeConfig(limits=CodeLimitsConfig(cpu_s=0.5, wall_s=2.0)))
    yield plugin
    plugin.close()


# ---- code_jsonl ------------------------------------------------------------------------------

def test_code_jsonl_reads_fields(tmp_path):
    f = write(tmp_path / "c.jsonl",
              {"statement": "Add two numbers.", "tests": TESTS, "solutions": ["a,b=map(int,input().split());print(a+b)"],
               "difficulty": 2, "id": "add", "source": "hand"},
              "",
              {"prompt": "Echo.", "tests": [{"input": "x\n", "output": "x\n"}], "language": "sh"})
    a, b = read_code_problems(f, "Problem: {statement}\n")
    assert (a.uid, a.prompt, a.difficulty) == ("add", "Problem: Add two numbers.\n", 2)
    assert a.meta == {"tests": TESTS, "source": "hand"} and a.solutions == (a.answer,) and a.answer.startswith("a,b=")
    assert b.uid == "c.jsonl:3" and b.solutions == () and b.answer == "" and b.meta["language"] == "sh"


@pytest.mark.parametrize("record,match", [
    ('{"statement": "x", "tests": [}', r"c.jsonl:2: not valid JSON"),
    ('[1, 2]', r"c.jsonl:2: expected a JSON object, got list"),
    ({"tests": TESTS}, r"c.jsonl:2: needs a non-empty string 'statement' or 'prompt'"),
    ({"statement": "x"}, r"c.jsonl:2: needs 'tests'"),
    ({"statement": "x", "tests": []}, r"c.jsonl:2: 'tests' must be a non-empty list"),
    ({"statement": "x", "tests": [{"input": "1"}]}, r"c.jsonl:2: tests\[0\] must be an object with exactly the keys"),
    ({"statement": "x", "tests": [{"input": 1, "output": "1"}]}, r"c.jsonl:2: tests\[0\].input must be a string, got int"),
    ({"statement": "x", "tests": TESTS, "solutions": "print(3)"}, r"c.jsonl:2: 'solutions' must be a list of non-empty strings"),
    ({"statement": "x", "tests": TESTS, "difficulty": "hard"}, r"c.jsonl:2: 'difficulty' must be an integer, got 'hard'"),
    ({"statement": "x", "tests": TESTS, "id": "a"}, r"c.jsonl:2: duplicate id 'a'"),
])
def test_code_jsonl_errors_name_file_and_line(tmp_path, record, match):
    f = write(tmp_path / "c.jsonl", {"statement": "ok", "tests": TESTS, "id": "a"}, record)
    with pytest.raises(ValueError, match=match):
        read_code_problems(f)


def test_code_jsonl_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_code_problems(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="no problems"):
        read_code_problems(write(tmp_path / "e.jsonl", ""))
    with pytest.raises(ValueError, match=r"task.prompt_template='\{prompt\}': may only use the field \{statement\}"):
        CodeJsonl(CodeJsonlConfig(train_path="x", prompt_template="{prompt}"))


def test_code_jsonl_splits_and_reward(tmp_path, make_ctx, reward):
    recs = [{"statement": f"print n+{i}", "difficulty": i % 2,
             "tests": [{"input": f"{n}\n", "output": f"{n + i}\n"} for n in (1, 5)],
             "solutions": [f"print(int(input())+{i})"]} for i in range(20)]
    f = write(tmp_path / "t.jsonl", *recs)
    task = CodeJsonl(CodeJsonlConfig(train_path=str(f), eval_fraction=0.25))
    tr, ev = task.rz_load_problems(make_ctx(), "train"), task.rz_load_problems(make_ctx(), "eval")
    assert len(tr) == 15 and len(ev) == 5 and not {p.uid for p in tr} & {p.uid for p in ev}
    assert [p.uid for p in task.rz_load_problems(make_ctx(), "train")] == [p.uid for p in tr]  # seeded
    # every reference solution passes its tests in the sandbox; another problem's solution does not
    out = reward.rz_reward(make_ctx(), as_groups(ev, lambda p: [p.solutions[0], f"```python\n{p.solutions[0]}\n```", "print(0)"]))
    assert [[r.score for r in row] for row in out] == [[1.0, 1.0, 0.0]] * 5
    sep = CodeJsonl(CodeJsonlConfig(train_path=str(f), eval_path=str(write(tmp_path / "e.jsonl", recs[0]))))
    assert len(sep.rz_load_problems(make_ctx(), "train")) == 20 and len(sep.rz_load_problems(make_ctx(), "eval")) == 1


# ---- synth_code ------------------------------------------------------------------------------

@pytest.mark.parametrize("expr,n,value", [
    ("n+7", 5, 12), ("3*n+1", 4, 13), ("2-n*n-n", 3, -10), ("n-3-4", 0, -7), ("n*2*3+1-n", 2, 11)])
def test_evaluate_uses_python_precedence(expr, n, value):
    assert evaluate(list(expr), n) == value == eval(expr, {"n": n})  # the program computes the same


def test_make_problem_shapes():
    import random

    rng = random.Random(0)
    for ops in (1, 2, 3, 4):
        for _ in range(50):
            prompt, sol, expr, m = make_problem(rng, ops, "+-*", 0.5)
            text = "".join(expr)
            assert len(expr) == 2 * ops + 1 and "n" in expr and len(prompt) + len(sol) < 60
            if m is None:
                assert (prompt, sol) == (f"f(n)={text}:", f"n=int(input());print({text})")
            else:
                assert (prompt, sol) == (f"f(n)={text} mod {m}:", f"n=int(input());print(({text})%{m})") and 2 <= m <= 9


def test_synth_code_splits(make_ctx):
    task = SynthCode(SynthCodeConfig(min_ops=1, max_ops=3, train_size=300, eval_per_difficulty=10, tests_per_problem=5))
    tr, ev = task.rz_load_problems(make_ctx(), "train"), task.rz_load_problems(make_ctx(), "eval")
    assert {p.difficulty for p in ev} == {1, 2, 3} and len(ev) == 30 and len(tr) == 300
    assert not {p.uid for p in tr} & {p.uid for p in ev}
    assert [p.meta["tests"] for p in task.rz_load_problems(make_ctx(), "train")] == [p.meta["tests"] for p in tr]
    for p in tr + ev:
        ins = [t["input"] for t in p.meta["tests"]]
        assert len(set(ins)) == 5 and all(0 <= int(x) <= 99 for x in ins)
        assert p.solutions == (p.answer,) and p.prompt.count("n") >= 2  # f(n)= and at least one n in the expression
    # the problems follow data_seed, not the RL seed: every RL seed of a sweep trains and evaluates on the same ones
    assert task.rz_load_problems(make_ctx(), "train") != SynthCode(task.cfg).rz_load_problems(make_ctx(["data_seed=1"]), "train")
    assert task.rz_load_problems(make_ctx(), "train") == SynthCode(task.cfg).rz_load_problems(make_ctx(["seed=1"]), "train")


def test_synth_code_solutions_pass_in_sandbox(make_ctx, reward):
    task = SynthCode(SynthCodeConfig(train_size=30, eval_per_difficulty=4))
    probs = task.rz_load_problems(make_ctx(), "eval")
    off_by_one = lambda p: p.solutions[0].replace("print(", "print(1+", 1)  # noqa: E731
    out = reward.rz_reward(make_ctx(), as_groups(probs, lambda p: [p.solutions[0], off_by_one(p)]))
    assert [row[0].score for row in out] == [1.0] * len(probs)
    assert all(row[1].score < 1.0 for row in out)


@pytest.mark.parametrize("kw,match", [
    ({"max_ops": 5}, r"task.min_ops=1, task.max_ops=5: need 1 <= min_ops <= max_ops <= 4"),
    ({"ops": "+/"}, r"task.ops='\+/': allowed characters are \+-\*"),
    ({"mod_prob": 1.5}, r"task.mod_prob=1.5"),
    ({"tests_per_problem": 11, "input_max": 9}, r"task.tests_per_problem=11: must be in \[1, input_max \+ 1 = 10\]"),
])
def test_synth_code_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        SynthCode(SynthCodeConfig(**kw))


# ---- recipe k15_code end to end --------------------------------------------------------------

def test_k15_code_recipe_end_to_end(tmp_path):
    """``recipe=k15_code`` (task=synth_code, reward=code) runs two iterations in process; every
    rollout's tests went through the sandbox (verdict metrics cover all of them)."""
    from reasonzoo.train import compose
    from reasonzoo.trainer import train

    prompts, samples, tests = 4, 4, 3
    cfg = compose(["recipe=k15_code", "logger=none", "progress=false", "iterations=2",
                   f"prompts_per_iteration={prompts}", f"samples_per_prompt={samples}",
                   f"task.tests_per_problem={tests}", "task.train_size=120", "task.eval_per_difficulty=4",
                   "warmup.steps=10", "warmup.batch_size=16", "eval.problems_per_difficulty=4", "eval.every=1",
                   "generation.max_new_tokens=40", "train.minibatch_size=8", "reward.limits.cpu_s=0.5",
                   "reward.truncated=score"])  # judge cut responses too: every rollout goes through the sandbox
    assert (cfg.task.name, cfg.reward.name, cfg.reward.mode) == ("synth_code", "code", "all")
    summary = train(cfg, tmp_path)
    recs = [json.loads(line) for line in (Path(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in recs] == [0, 1, 2]
    for r in recs[1:]:
        verdicts = {k: v for k, v in r.items() if k.startswith("reward/verdict_")}
        assert "reward/verdict_time_limit" in verdicts and sum(verdicts.values()) == pytest.approx(1.0)
        assert r["reward/code_test_runs"] == prompts * samples * tests  # every test of every rollout judged
        assert r["reward/verdict_sandbox_error"] == 0.0 and r["reward/code_errors"] == 0.0
        assert 0.0 <= r["reward/mean"] <= 1.0 and "loss/k15" in r
    assert set(summary["final_eval"]) >= {"eval/accuracy/d1", "eval/accuracy/d2", "eval/accuracy/d3"}


# ---- code_jsonl: function-completion problems ------------------------------------------------

def _fn_problem(i, name, params, doc, body, asserts):
    """A hand-written problem in HumanEval's record layout (task_id, prompt, canonical_solution,
    test with check(candidate), entry_point)."""
    prompt = f"def {name}({params}):\n    \"\"\"{doc}\"\"\"\n"
    test = "def check(candidate):\n" + "".join(f"    assert {a}\n" for a in asserts)
    return {"task_id": f"fn/{i}", "prompt": prompt, "canonical_solution": body, "test": test, "entry_point": name}


FN_PROBLEMS = [
    _fn_problem(0, "add", "a, b", "Return a + b.", "    return a + b\n",
                ["candidate(2, 3) == 5", "candidate(-4, 4) == 0"]),
    _fn_problem(1, "largest", "xs", "Return the largest element of a non-empty list.", "    return max(xs)\n",
                ["candidate([3, 9, 2]) == 9", "candidate([-5]) == -5"]),
    _fn_problem(2, "flip", "s", "Return s reversed.", "    return s[::-1]\n",
                ["candidate('abc') == 'cba'", "candidate('') == ''"]),
    _fn_problem(3, "vowels", "s", "Count the vowels aeiou in s.", "    return sum(c in 'aeiou' for c in s)\n",
                ["candidate('banana') == 3", "candidate('xyz') == 0"]),
    _fn_problem(4, "is_even", "n", "Whether n is even.", "    return n % 2 == 0\n",
                ["candidate(4) is True", "candidate(7) is False"]),
    _fn_problem(5, "fact", "n", "Return n factorial.", "    return 1 if n < 2 else n * fact(n - 1)\n",
                ["candidate(5) == 120", "candidate(0) == 1"]),
    _fn_problem(6, "squares", "n", "Sum of k*k for k in 1..n.", "    return sum(k * k for k in range(1, n + 1))\n",
                ["candidate(3) == 14", "candidate(0) == 0"]),
    _fn_problem(7, "first", "xs", "First element, or None when empty.", "    return xs[0] if xs else None\n",
                ["candidate([4, 5]) == 4", "candidate([]) is None"]),
]


def test_code_jsonl_reads_humaneval_layout_and_function_tests(tmp_path):
    native = {"id": "mul", "statement": "Complete mul.", "prefix": "def mul(a, b):\n", "entry_point": "mul",
              "tests": [{"kind": "call", "args": [2, 3], "expected": 6},            # fn from entry_point
                        {"kind": "assert", "test": "def check(c):\n    assert c(1, 1) == 1\n"},
                        {"kind": "stdio", "input": "", "output": ""}],
              "solutions": ["    return a * b\n"]}
    f = write(tmp_path / "fn.jsonl", FN_PROBLEMS[0], native)
    he, mul = read_code_problems(f)
    rec = FN_PROBLEMS[0]
    assert (he.uid, he.prompt, he.answer, he.solutions) == ("fn/0", rec["prompt"], rec["canonical_solution"],
                                                           (rec["canonical_solution"],))
    assert he.meta == {"prefix": rec["prompt"], "tests": [{"kind": "assert", "test": rec["test"], "entry_point": "add"}]}
    assert mul.meta["tests"] == [{"kind": "call", "args": [2, 3], "expected": 6, "fn": "mul"},
                                 {"kind": "assert", "test": "def check(c):\n    assert c(1, 1) == 1\n", "entry_point": "mul"},
                                 {"input": "", "output": ""}]
    assert mul.meta["prefix"] == "def mul(a, b):\n" and "entry_point" not in mul.meta


@pytest.mark.parametrize("record,match", [
    ({"statement": "x", "tests": [{"kind": "call", "fn": "f", "args": [1]}]}, r"fn.jsonl:2: tests\[0\]: a call test needs 'expected'"),
    ({"statement": "x", "tests": [{"kind": "assert", "test": "def check(c): pass"}]},
     r"fn.jsonl:2: tests\[0\]: an assert test needs a non-empty string 'entry_point'"),
    ({"statement": "x", "tests": [{"kind": "run"}]}, r"fn.jsonl:2: tests\[0\]: 'kind' must be one of assert, call"),
    ({"statement": "x", "entry_point": "a-b", "tests": TESTS}, r"fn.jsonl:2: 'entry_point' must be a Python identifier"),
    ({"statement": "x", "language": "sh", "tests": [{"kind": "call", "fn": "f", "args": [], "expected": 1}]},
     r"fn.jsonl:2: function tests \(assert, call\) need language python"),
    ({"statement": "x", "prefix": 3, "tests": TESTS}, r"fn.jsonl:2: 'prefix' must be a string"),
    ({"task_id": "t", "prompt": "def f():\n", "test": "", "entry_point": "f"}, r"fn.jsonl:2: HumanEval record needs a non-empty string 'test'"),
])
def test_code_jsonl_function_test_errors(tmp_path, record, match):
    f = write(tmp_path / "fn.jsonl", FN_PROBLEMS[1], record)
    with pytest.raises(ValueError, match=match):
        read_code_problems(f)


def test_code_jsonl_function_problems_train_end_to_end(tmp_path):
    """task=code_jsonl on a small local JSONL of function-completion problems (HumanEval layout),
    reward=code, warmup=none: a few iterations in process; every rollout's assert test went through
    the sandbox harness, no sandbox errors, and the reference completions of the same problems score
    1 with the same reward plugin (the 0s of the untrained model are its own)."""
    from reasonzoo.train import compose
    from reasonzoo.trainer import train

    data = write(tmp_path / "fn.jsonl", *FN_PROBLEMS)
    prompts, samples = 4, 2
    cfg = compose(["task=code_jsonl", f"task.train_path={data}", "task.eval_fraction=0.25", "reward=code",
                   "reward.mode=all", "reward.limits.cpu_s=0.5", "warmup=none", "logger=none", "progress=false",
                   "iterations=2", f"prompts_per_iteration={prompts}", f"samples_per_prompt={samples}",
                   "eval.every=1", "generation.max_new_tokens=24", "train.minibatch_size=8",
                   "reward.truncated=score"])  # the untrained model's responses are mostly cut: judge them anyway
    train(cfg, tmp_path / "run")
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in recs] == [0, 1, 2]
    for r in recs[1:]:
        assert r["reward/code_test_runs"] == prompts * samples  # one assert test per problem
        assert r["reward/verdict_sandbox_error"] == 0.0 and r["reward/code_errors"] == 0.0
        verdicts = {k: v for k, v in r.items() if k.startswith("reward/verdict_")}
        assert sum(verdicts.values()) == pytest.approx(1.0)
        assert "loss/k15" in r and 0.0 <= r["reward/mean"] <= 1.0
    assert "eval/accuracy" in recs[-1]
    # the same problems through the same reward: reference completions pass, a wrong one fails
    reward = CodeReward(CodeConfig(limits=CodeLimitsConfig(cpu_s=0.5, wall_s=2.0)))
    try:
        probs = read_code_problems(data)
        out = reward.rz_reward(None, as_groups(probs, lambda p: [p.answer, "    return None\n"]))
    finally:
        reward.close()
    assert [[r.score for r in row] for row in out] == [[1.0, 0.0]] * len(FN_PROBLEMS)
