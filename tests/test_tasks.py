"""task/modarith, task/jsonl, task/reasoning_gym."""
import json

import pytest

from reasonzoo.plugins.task.jsonl import Jsonl, JsonlConfig, read_problems
from reasonzoo.plugins.task.modarith import ModArith, ModArithConfig, render, solve
from reasonzoo.plugins.task.reasoning_gym import ReasoningGym, ReasoningGymConfig


def test_solve_hand_values():
    # mod 10: 3+4=7; 7*2=14->4; 4-7=-3->7
    assert solve([3, 4, 2, 7], ["+", "*", "-"], 10) == (7, "a3+4=7;b7*2=4;c4-7=7;#7")
    # mod 5: 3+4=7->2; 2*2=4; 4-2=2
    assert solve([3, 4, 2, 2], ["+", "*", "-"], 5) == (2, "a3+4=2;b2*2=4;c4-2=2;#2")
    assert render([3, 4, 2, 2], ["+", "*", "-"]) == "3a+4b*2c-2="


def test_modarith_splits(make_ctx):
    task = ModArith(ModArithConfig(min_steps=2, max_steps=4, train_size=300, eval_per_difficulty=20))
    ctx = make_ctx()
    train, ev = task.rz_load_problems(ctx, "train"), task.rz_load_problems(ctx, "eval")
    assert {p.difficulty for p in ev} == {2, 3, 4} and len(ev) == 60
    assert not {p.uid for p in train} & {p.uid for p in ev}
    p = train[0]
    assert p.prompt.endswith("=") and p.solutions[1] == f"#{p.answer}"
    assert p.solutions[0].count(";") == p.difficulty
    assert [q.uid for q in task.rz_load_problems(ctx, "train")] == [q.uid for q in train]  # seeded
    with pytest.raises(ValueError, match="task.ops='/'"):
        ModArith(ModArithConfig(ops="/"))
    with pytest.raises(ValueError, match="task.modulus=11"):
        ModArith(ModArithConfig(modulus=11))


def test_jsonl_errors_name_file_and_line(tmp_path):
    f = tmp_path / "probs.jsonl"
    f.write_text(json.dumps({"prompt": "1+1", "answer": 2}) + "\n" + '{"problem": "x", "answer": "y", "difficulty": "hard"}\n')
    with pytest.raises(ValueError, match=r"probs.jsonl:2: 'difficulty' must be an integer"):
        read_problems(f)
    f.write_text('{"prompt": "a", "answer": "b", "difficulty": true}\n')  # a bool is no difficulty
    with pytest.raises(ValueError, match=r"probs.jsonl:1: 'difficulty' must be an integer, got True"):
        read_problems(f)
    f.write_text('{"prompt": "a", "answer": "b"}\n{oops\n')
    with pytest.raises(ValueError, match=r"probs.jsonl:2: not valid JSON"):
        read_problems(f)
    f.write_text('{"answer": "b"}\n')
    with pytest.raises(ValueError, match=r"probs.jsonl:1: needs a non-empty string 'prompt' or 'problem'"):
        read_problems(f)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_problems(tmp_path / "missing.jsonl")


def test_jsonl_split(tmp_path, make_ctx):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"problem": f"q{i}", "answer": str(i), "difficulty": i % 3}) + "\n" for i in range(50)))
    task = Jsonl(JsonlConfig(train_path=str(f), eval_fraction=0.2, prompt_template="Q: {prompt}\nA:"))
    tr, ev = task.rz_load_problems(make_ctx(), "train"), task.rz_load_problems(make_ctx(), "eval")
    assert len(ev) == 10 and len(tr) == 40 and not {p.uid for p in tr} & {p.uid for p in ev}
    assert tr[0].prompt.startswith("Q: q") and isinstance(tr[0].difficulty, int)


def test_reasoning_gym_task(make_ctx):
    task = ReasoningGym(ReasoningGymConfig(train_size=5, eval_size=3, difficulty_key="num_terms"))
    tr = task.rz_load_problems(make_ctx(), "train")
    assert len(tr) == 5 and tr[0].meta["entry"]["question"] in tr[0].prompt and isinstance(tr[0].difficulty, int)
    assert len(task.rz_load_problems(make_ctx(), "eval")) == 3
    with pytest.raises(ValueError, match="task.dataset='no_such_dataset'"):
        ReasoningGym(ReasoningGymConfig(dataset="no_such_dataset")).rz_load_problems(make_ctx(), "train")


def test_prompt_templates_keep_literal_braces(tmp_path, make_ctx):
    """Issue 8 item 8 across the tasks with templates: `\\boxed{}` needs no escaping; a template
    without its field is an error naming task.prompt_template."""
    from reasonzoo.plugins.task.code_jsonl import CodeJsonl, CodeJsonlConfig

    task = ReasoningGym(ReasoningGymConfig(train_size=2, eval_size=1, prompt_template="{question} Answer in \\boxed{}."))
    p = task.rz_load_problems(make_ctx(), "train")[0]
    assert p.prompt == p.meta["entry"]["question"] + " Answer in \\boxed{}."
    with pytest.raises(ValueError, match=r"task.prompt_template='\{questio\}': may only use the field \{question\}"):
        ReasoningGym(ReasoningGymConfig(prompt_template="{questio}"))
    f = tmp_path / "code.jsonl"
    f.write_text(json.dumps({"statement": "Echo.", "tests": [{"input": "1", "output": "1"}]}) + "\n")
    code = CodeJsonl(CodeJsonlConfig(train_path=str(f), eval_path=str(f), prompt_template="{statement}\nint main() {}"))
    assert code.rz_load_problems(make_ctx(), "train")[0].prompt == "Echo.\nint main() {}"
