"""Prompts through the tokenizer's chat template (issue 8, item 7), the context check at load
(item 11), and the whole path on a MATH-style JSONL file with field mapping, a local chat model
and reward=math (the issue's done-when)."""
import json

import pytest

from reasonzoo.policy import Policy, build_byte_tokenizer, build_tiny_model
from reasonzoo.types import Problem

#: starts with the BOS token, as Llama/Mistral templates do
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def chat_tokenizer():
    tok = build_byte_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|system|>"]})
    tok.chat_template = TEMPLATE
    return tok


def save_chat_model(path, max_positions=128):
    tok = chat_tokenizer()
    model = build_tiny_model(len(tok), "llama", 32, 2, 2, 64, max_positions, tok.pad_token_id, tok.bos_token_id,
                             tok.eos_token_id, seed=0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_prompt_goes_through_the_template_with_one_bos(tmp_path):
    policy = Policy.load(save_chat_model(tmp_path))
    assert policy.chat
    ids = policy.encode_prompt("1+1?")
    bos = policy.tokenizer.bos_token_id
    assert ids[0] == bos and ids.count(bos) == 1  # the template's BOS only (not 1, 1, ...)
    assert policy.tokenizer.decode(list(ids)) == "<s><|user|>\n1+1?\n<|assistant|>\n"
    user, assistant = policy.tokenizer.convert_tokens_to_ids(["<|user|>", "<|assistant|>"])
    assert ids[1] == user and ids[-2] == assistant  # the template's special tokens stay single tokens

    sys_policy = Policy.load(tmp_path, system_prompt="Be brief.")
    assert sys_policy.tokenizer.decode(list(sys_policy.encode_prompt("1+1?"))) == \
        "<s><|system|>\nBe brief.\n<|user|>\n1+1?\n<|assistant|>\n"
    raw = Policy.load(tmp_path, chat_template="none")
    assert not raw.chat and raw.tokenizer.decode(list(raw.encode_prompt("1+1?"))) == "<s>1+1?"


def test_chat_options_errors_name_the_key(tmp_path):
    from reasonzoo.plugins.model.hf import HFModel, HFModelConfig

    with pytest.raises(ValueError, match=r"model.chat_template='yes': allowed values are auto, none"):
        HFModel(HFModelConfig(chat_template="yes"))
    with pytest.raises(ValueError, match=r"model.overlong='cut': allowed values are error, drop"):
        HFModel(HFModelConfig(overlong="cut"))
    with pytest.raises(ValueError, match=r"model.system_prompt='Hi': needs a chat template"):
        HFModel(HFModelConfig(system_prompt="Hi"))  # the tiny model: no template, caught before any work
    tok = build_byte_tokenizer()  # no chat template
    model = build_tiny_model(len(tok), "llama", 16, 1, 2, 32, 64, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, seed=0)
    with pytest.raises(ValueError, match=r"model.system_prompt='Be brief.': needs a chat template"):
        Policy(model=model, tokenizer=tok, system_prompt="Be brief.")


def _problems(lengths):
    return [Problem(uid=f"p{i}", prompt="x" * n, answer="1") for i, n in enumerate(lengths)]


def test_overlong_problems_are_an_error_or_dropped_and_counted():
    tok = build_byte_tokenizer()
    model = build_tiny_model(len(tok), "llama", 16, 1, 2, 32, 64, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, seed=0)
    policy = Policy(model=model, tokenizer=tok)
    assert policy.context_length == 64
    splits = {"train": _problems([10, 40, 23, 24, 50]), "eval": _problems([5, 30])}
    # prompt tokens = length + BOS; limit: + 40 new tokens <= 64, i.e. length <= 23
    with pytest.raises(ValueError, match=r"max_new_tokens=40 exceeds the model's context of 64 tokens for 3 of 5 train "
                                         r"problems \(first: id 'p1', 41 prompt tokens\); 1 of 2 eval problems \(first: id 'p1'.*"
                                         r"model.overlong=drop"):
        policy.fit_context(splits, 40)
    kept, metrics = Policy(model=model, tokenizer=tok, overlong="drop").fit_context(splits, 40)
    assert [p.uid for p in kept["train"]] == ["p0", "p2"] and [p.uid for p in kept["eval"]] == ["p0"]
    assert metrics == {"data/dropped_overlong/train": 3.0, "data/dropped_overlong/eval": 1.0, "data/max_prompt_tokens": 51.0}
    kept, metrics = policy.fit_context(splits, 10)  # everything fits
    assert kept == {k: list(v) for k, v in splits.items()} and metrics["data/dropped_overlong/train"] == 0.0


def test_math_jsonl_with_chat_model_end_to_end(tmp_path, monkeypatch, run_metrics):
    """The done-when of issue 8 (data part): MATH-style fields mapped, a local model whose tokenizer
    has a chat template, bare-LaTeX references scored by reward=math, a few iterations."""
    from reasonzoo.train import compose
    from reasonzoo.trainer import train

    model_dir = save_chat_model(tmp_path / "model")
    answers = ["\\frac{1}{2}", "2\\sqrt{2}", "(2, 5]", "\\text{(B)}", "50\\%", "x^2+1", "7", "\\pi"]
    rows = [{"problem": f"Problem {i}: compute the value of item {i}.", "answer": answers[i % len(answers)],
             "level": f"Level {1 + i % 3}", "unique_id": f"test/algebra/{i}.json", "type": "Algebra"} for i in range(24)]
    rows.append({"problem": "A very long problem. " * 6, "answer": "1", "level": "Level 1", "unique_id": "test/long.json"})
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    seen = []
    real = Policy.encode_prompt

    def recording(self, text):
        ids = real(self, text)
        seen.append((text, self.tokenizer.decode(list(ids))))
        return ids

    monkeypatch.setattr(Policy, "encode_prompt", recording)
    cfg = compose(["logger=none", "progress=false", "iterations=2", "prompts_per_iteration=4", "samples_per_prompt=4",
                   "task=jsonl", f"task.train_path={data}", "task.eval_fraction=0.25", "task.fields.prompt=problem",
                   "task.fields.difficulty=level", "task.fields.id=unique_id",
                   "task.prompt_template='{prompt} Put your final answer within \\boxed{}.'",  # as on a shell
                   "reward=math", "warmup=none", f"model.path={model_dir}", "model.overlong=drop",
                   "eval.problems_per_difficulty=4", "eval.every=1", "generation.max_new_tokens=24",
                   "train.minibatch_size=8"])
    summary = train(cfg, tmp_path / "run")
    recs = run_metrics(tmp_path / "run")
    assert [r["iteration"] for r in recs] == [0, 1, 2]
    # the 127-token prompt + 24 new tokens > 128 positions: dropped and counted
    assert recs[0]["data/dropped_overlong/train"] + recs[0]["data/dropped_overlong/eval"] == 1
    for r in recs[1:]:
        assert {"reward/mean", "loss/k15", "eval/accuracy"} <= set(r)
        assert {k for k in r if k.startswith("eval/accuracy/d")} <= {"eval/accuracy/d1", "eval/accuracy/d2", "eval/accuracy/d3"}
        assert any(k.startswith("eval/accuracy/d") for k in r)  # "Level n" labels became difficulties
    assert "eval/accuracy" in summary["final_eval"]
    assert seen and all(shown == f"<s><|user|>\n{text}\n<|assistant|>\n" for text, shown in seen)
    assert any(text.endswith("Put your final answer within \\boxed{}.") and text.startswith("Problem ") for text, _ in seen)
