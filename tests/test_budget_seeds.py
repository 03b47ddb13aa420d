"""What ablations need from the loop: budgets (stop at generated tokens or wall seconds; every
record carries the cumulative cost) and seeds split three ways (the RL ``seed``; ``data_seed``
for the task and its held-out split; ``warmup_seed`` for model init and the warm-up), so every RL
seed of a sweep starts from one cached warm-up and is evaluated on the same problems."""
import json
from itertools import accumulate

import pytest
import torch

from reasonzoo.plugins.task.jsonl import Jsonl, JsonlConfig
from reasonzoo.plugins.task.modarith import ModArith, ModArithConfig
from reasonzoo.train import compose
from reasonzoo.trainer import train


def _records(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_every_record_carries_cumulative_tokens_and_seconds(tmp_path, tiny_overrides):
    summary = train(compose(tiny_overrides + ["iterations=3"]), tmp_path)
    recs = _records(tmp_path)[1:]
    assert [r["tokens/generated"] for r in recs] == list(accumulate(r["response/tokens"] for r in recs))
    elapsed = list(accumulate(r["time/iteration"] - r.get("time/eval", 0.0) for r in recs))
    assert [r["time/elapsed"] for r in recs] == pytest.approx(elapsed)
    assert summary["stopped_by"] == "iterations" and summary["tokens/generated"] == recs[-1]["tokens/generated"]


def test_generated_token_budget_stops_the_run(tmp_path, tiny_overrides):
    free = train(compose(tiny_overrides + ["iterations=6"]), tmp_path / "free")
    per_it = [r["response/tokens"] for r in _records(tmp_path / "free")[1:]]
    budget = sum(per_it[:2]) + 1  # reached during iteration 3
    s = train(compose(tiny_overrides + ["iterations=6", f"budget.generated_tokens={budget}", "eval.every=0"]), tmp_path / "b")
    recs = _records(tmp_path / "b")
    assert [r["iteration"] for r in recs] == [0, 1, 2, 3]
    assert s["stopped_by"] == "generated_tokens" and recs[-1]["tokens/generated"] == sum(per_it[:3]) >= budget
    assert "eval/accuracy" in recs[-1] and s["final_eval"]["eval/accuracy"] == recs[-1]["eval/accuracy"]  # evaluated at the stop
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == "iter_000003"
    assert (tmp_path / "b" / "final" / "config.json").exists() and free["stopped_by"] == "iterations"
    # a stopped run is finished: resume= changes nothing
    again = train(compose(tiny_overrides + ["iterations=6", f"budget.generated_tokens={budget}", f"resume={tmp_path / 'b'}"]),
                  tmp_path / "b")
    assert again["stopped_by"] == "generated_tokens" and len(_records(tmp_path / "b")) == 4


def test_wall_second_budget_stops_the_run(tmp_path, tiny_overrides):
    s = train(compose(tiny_overrides + ["iterations=5", "budget.wall_seconds=1e-6"]), tmp_path)
    assert s["stopped_by"] == "wall_seconds" and [r["iteration"] for r in _records(tmp_path)] == [0, 1]


def test_budget_counts_on_across_kill_and_resume(tiny_overrides, kill_and_resume, run_metrics):
    args = [a for a in tiny_overrides if not a.startswith("iterations=")]
    ref, killed = kill_and_resume(args + ["iterations=12", "budget.generated_tokens=1400"], after=2)
    assert run_metrics(killed) == run_metrics(ref)
    recs = run_metrics(ref)
    assert 4 < len(recs) < 13 and recs[-1]["tokens/generated"] >= 1400 > recs[-2]["tokens/generated"]
    assert json.loads((killed / "summary.json").read_text())["stopped_by"] == "generated_tokens"


def test_dynamic_sampling_counts_every_generated_token(tmp_path, tiny_overrides):
    train(compose(tiny_overrides + ["rollout=dynamic", "iterations=2", "prompts_per_iteration=6", "rollout.groups=2"]), tmp_path)
    recs = _records(tmp_path)[1:]
    # here no group has reward variance (a 10-step warm-up): all dropped, their tokens still spent
    assert all(r["rollout/tokens"] > r.get("response/tokens", 0) for r in recs)
    assert [r["tokens/generated"] for r in recs] == list(accumulate(int(r["rollout/tokens"]) for r in recs))


def _weights(run_dir, it=0):
    from safetensors.torch import load_file

    return load_file(run_dir / "checkpoints" / f"iter_{it:06d}" / "model" / "model.safetensors")


def test_rl_seeds_share_the_warmup_and_the_held_out_set(tmp_path, tiny_overrides):
    tiny_overrides = tiny_overrides + [f"cache_dir={tmp_path / 'cache'}"]  # a cache of its own: the first warm-up is trained
    train(compose(tiny_overrides + ["seed=1", "iterations=1"]), tmp_path / "a")
    train(compose(tiny_overrides + ["seed=2", "iterations=1"]), tmp_path / "b")
    ra, rb = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert ra[0]["warmup/cached"] == 0.0 and rb[0]["warmup/cached"] == 1.0  # one warm-up for both RL seeds
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # both start RL from the same weights
    assert {k: v for k, v in ra[1].items() if not k.startswith("time/")} != {k: v for k, v in rb[1].items() if not k.startswith("time/")}
    train(compose(tiny_overrides + ["seed=1", "iterations=1", "warmup_seed=5"]), tmp_path / "c")
    assert _records(tmp_path / "c")[0]["warmup/cached"] == 0.0
    wc = _weights(tmp_path / "c")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)  # another warm-up seed: another starting model


def test_held_out_split_follows_data_seed_not_rl_seed(make_ctx, tmp_path):
    task = ModArith(ModArithConfig(min_steps=2, max_steps=3, train_size=100, eval_per_difficulty=10))
    uids = lambda ctx, split: [p.uid for p in task.rz_load_problems(ctx, split)]
    s1, s2, d1 = make_ctx(["seed=1"]), make_ctx(["seed=2"]), make_ctx(["seed=1", "data_seed=1"])
    assert uids(s1, "eval") == uids(s2, "eval") and uids(s1, "train") == uids(s2, "train")
    assert uids(s1, "eval") != uids(d1, "eval")
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": str(i)}) + "\n" for i in range(40)))
    js = Jsonl(JsonlConfig(train_path=str(path), eval_fraction=0.25))
    assert uids(s1, "eval") and [p.uid for p in js.rz_load_problems(s1, "eval")] == [p.uid for p in js.rz_load_problems(s2, "eval")]
    assert [p.uid for p in js.rz_load_problems(s1, "eval")] != [p.uid for p in js.rz_load_problems(d1, "eval")]
