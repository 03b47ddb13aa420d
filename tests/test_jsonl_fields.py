"""task/jsonl: answers keep their written value, field mapping, GSM8K answers, difficulty labels,
prompt templates with literal braces (issue 8, items 2, 8, 9)."""
import json

import pytest

from reasonzoo.jsonl import fill_template
from reasonzoo.plugins.task.jsonl import FieldsConfig, Jsonl, JsonlConfig, read_problems


def _write(tmp_path, lines: list[str], name="p.jsonl"):
    f = tmp_path / name
    f.write_text("\n".join(lines) + "\n")
    return f


def test_number_answers_keep_written_text(tmp_path):
    f = _write(tmp_path, ['{"prompt": "a", "answer": 0.00001}', '{"prompt": "b", "answer": 1e20}',
                          '{"prompt": "c", "answer": 3.0}', '{"prompt": "d", "answer": -0}',
                          '{"prompt": "e", "answer": 12345678901234567890123}', '{"prompt": "f", "answer": true}',
                          '{"prompt": "g", "answer": "x"}', '{"prompt": "h", "answer": 1.50E-3}'])
    got = [p.answer for p in read_problems(f)]
    assert got == ["0.00001", "1e20", "3.0", "-0", "12345678901234567890123", "true", "x", "1.50E-3"]


@pytest.mark.parametrize("value, message", [("null", r"p.jsonl:2: 'answer' is null"),
                                            ("[1, 2]", r"p.jsonl:2: 'answer' must be a string or a number, got a list"),
                                            ('{"a": 1}', r"p.jsonl:2: 'answer' must be a string or a number, got an object"),
                                            # issue 9 item 6: a NaN answer was accepted as the string "NaN"
                                            ("NaN", r"p.jsonl:2: not valid JSON \(NaN is not a JSON value"),
                                            ("-Infinity", r"p.jsonl:2: not valid JSON \(-Infinity is not a JSON value")])
def test_bad_answers_name_file_and_line(tmp_path, value, message):
    f = _write(tmp_path, ['{"prompt": "a", "answer": "1"}', '{"prompt": "b", "answer": %s}' % value])
    with pytest.raises(ValueError, match=message):
        read_problems(f)


def test_math_style_field_mapping(tmp_path, make_ctx):
    rows = [{"problem": f"What is {i}?", "answer": f"\\frac{{{i}}}{{2}}", "level": f"Level {1 + i % 5}",
             "unique_id": f"test/algebra/{i}.json", "subject": "Algebra", "solution": f"It is $\\boxed{{{i}}}$."}
            for i in range(20)]
    f = _write(tmp_path, [json.dumps(r) for r in rows])
    cfg = JsonlConfig(train_path=str(f), eval_fraction=0.25, prompt_template="{prompt} Put your final answer within \\boxed{}.",
                      fields=FieldsConfig(prompt="problem", difficulty="level", id="unique_id", solution="solution"))
    task = Jsonl(cfg)
    tr, ev = task.rz_load_problems(make_ctx(), "train"), task.rz_load_problems(make_ctx(), "eval")
    assert len(tr) == 15 and len(ev) == 5
    p = {q.uid: q for q in tr + ev}["test/algebra/7.json"]
    assert p.prompt == "What is 7? Put your final answer within \\boxed{}."
    assert p.answer == "\\frac{7}{2}" and p.difficulty == 3 and type(p.difficulty) is int
    assert p.solutions == ("It is $\\boxed{7}$.",) and p.meta == {"subject": "Algebra"}


def test_difficulty_labels(tmp_path):
    f = _write(tmp_path, ['{"prompt": "a", "answer": "1", "difficulty": "Level 5"}', '{"prompt": "b", "answer": "1", "difficulty": "2"}',
                          '{"prompt": "c", "answer": "1", "difficulty": 4}', '{"prompt": "d", "answer": "1"}'])
    assert [p.difficulty for p in read_problems(f)] == [5, 2, 4, None]
    for bad in ['"Level ?"', '"hard"', '"Level 1-2"', "2.5", "true"]:
        f = _write(tmp_path, ['{"prompt": "a", "answer": "1"}', '{"prompt": "b", "answer": "1", "difficulty": %s}' % bad])
        with pytest.raises(ValueError, match=r"p.jsonl:2: 'difficulty' must be an integer"):
            read_problems(f)


def test_gsm8k_answers(tmp_path, make_ctx):
    rows = [{"question": "Natalia sold clips ...", "answer": "She sold 48/2 = <<48/2=24>>24 clips.\n#### 72"},
            {"question": "Big number?", "answer": "Add them.\n#### 1,072"}]
    f = _write(tmp_path, [json.dumps(r) for r in rows])
    probs = read_problems(f, fields=FieldsConfig(prompt="question"), answer_format="gsm8k")
    assert [p.answer for p in probs] == ["72", "1072"] and probs[0].prompt == "Natalia sold clips ..."
    f = _write(tmp_path, [json.dumps(rows[0]), json.dumps({"question": "q", "answer": "no marker"})])
    with pytest.raises(ValueError, match=r"p.jsonl:2: task.answer_format=gsm8k: 'answer' has no '####'"):
        read_problems(f, fields=FieldsConfig(prompt="question"), answer_format="gsm8k")
    with pytest.raises(ValueError, match=r"task.answer_format='gsm'"):
        Jsonl(JsonlConfig(train_path=str(f), answer_format="gsm"))


def test_mapped_field_missing_names_key(tmp_path):
    f = _write(tmp_path, ['{"question": "a", "answer": "1"}', '{"prompt": "b", "answer": "1"}'])
    with pytest.raises(ValueError, match=r"p.jsonl:2: needs a non-empty string 'question' \(task.fields.prompt\)"):
        read_problems(f, fields=FieldsConfig(prompt="question"))
    f = _write(tmp_path, ['{"prompt": "a", "solution": "1"}'])
    with pytest.raises(ValueError, match=r"p.jsonl:1: needs an 'final' \(task.fields.answer\)"):
        read_problems(f, fields=FieldsConfig(answer="final"))
    f = _write(tmp_path, ['{"prompt": "a", "answer": "1", "id": null}'])
    with pytest.raises(ValueError, match=r"p.jsonl:1: 'id' is null"):
        read_problems(f)


def test_prompt_template_literal_braces(tmp_path):
    assert fill_template("{prompt} Put your final answer within \\boxed{}.", prompt="1+1?") == \
        "1+1? Put your final answer within \\boxed{}."
    assert fill_template("{{x}} {prompt} {other} \\frac{a}{b}", prompt="P") == "{x} P {other} \\frac{a}{b}"
    f = _write(tmp_path, ['{"prompt": "2+2?", "answer": 4}'])
    task = Jsonl(JsonlConfig(train_path=str(f), eval_path=str(f), prompt_template="{prompt} Answer in \\boxed{}."))
    assert task._read(str(f))[0].prompt == "2+2? Answer in \\boxed{}."
    with pytest.raises(ValueError, match=r"task.prompt_template='Q: \{promt\}': may only use the field \{prompt\}, and must contain it"):
        Jsonl(JsonlConfig(train_path=str(f), prompt_template="Q: {promt}"))
