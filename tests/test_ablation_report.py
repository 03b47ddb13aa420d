"""``reasonzoo report``: the ablation table's numbers against hand-computed values on fixture run
directories, arm naming, plots, bad input, and one real tiny sweep."""
import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from reasonzoo.ablation_report import aggregate, build_report, group_arms, load_run, load_tables, mean_std, render_table
from reasonzoo.cli import main as cli_main
from reasonzoo.errors import EXIT_FAILURE, EXIT_USAGE

# Fixture sweep: 2 arms x 3 seeds, evaluations at iterations 0, 2, 4 (accuracy per evaluation).
# Arm k15 writes the trainer's cumulative counters: tokens/generated = 100 it + 10 seed,
# time/elapsed = 2 it + seed (at iteration 4: 8, 9, 10 s).
K15_ACC = {0: [0.5, 0.9, 0.8], 1: [0.4, 0.7, 0.95], 2: [0.5, 0.6, 0.7]}
K15_LEN = {0: 30.0, 1: 40.0, 2: 50.0}  # final eval/mean_length
# Arm rest has old records without them: response/tokens = 50 per iteration (seed 1 also
# rollout/tokens = 80, which takes precedence), time/iteration = 1.5 s of which time/eval = 0.5 s
# at evaluations (RL wall at iteration 4: 1.5 + 1.0 + 1.5 + 1.0 = 5.0 s). Seed 2 is unfinished:
# records up to iteration 3, no summary.json.
REST_ACC = {0: [0.3, 0.92, 0.85], 1: [0.3, 0.5, 0.9], 2: [0.3, 0.95]}
REST_LEN = {0: 20.0, 1: 20.0, 2: 26.0}


def _write_run(d: Path, records, overrides=None, config=None, finished=True):
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if overrides is not None:
        (d / ".hydra").mkdir()
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (d / "reasonzoo_config.yaml").write_text(yaml.safe_dump(config or {"seed": 0, "iterations": 4}))
    if finished:
        last = [r for r in records if "eval/accuracy" in r][-1]
        (d / "summary.json").write_text(json.dumps({"final_eval": {k: v for k, v in last.items() if k.startswith("eval/")}}))


def _records(accs, final_len, seed, new_keys, last_iteration=4, rollout_tokens=None):
    recs = []
    evals = iter(accs)
    last_eval = last_iteration - last_iteration % 2
    for it in range(last_iteration + 1):
        r = {"iteration": it}
        if it > 0:
            r.update({"response/tokens": 50, "response/mean_length": 10.0 + it + seed, "time/iteration": 1.5})
            if rollout_tokens is not None:
                r["rollout/tokens"] = rollout_tokens
            if new_keys:
                r.update({"tokens/generated": 100 * it + 10 * seed, "time/elapsed": 2.0 * it + seed})
        if it % 2 == 0:
            acc = next(evals)
            r.update({"eval/accuracy": acc, "eval/mean_length": final_len - (last_eval - it),
                      "eval/accuracy/d2": min(1.0, acc + 0.05), "eval/accuracy/d3": acc - 0.05,
                      "eval/mean_length/d2": 10.0, "eval/mean_length/d3": 14.0})
            if it > 0:
                r["time/eval"] = 0.5
        recs.append(r)
    return recs


def _make_sweep(root: Path) -> Path:
    sweep = root / "sweep"
    job = 0
    for recipe, accs, lens, new in (("k15", K15_ACC, K15_LEN, True), ("rest", REST_ACC, REST_LEN, False)):
        for seed in range(3):
            unfinished = recipe == "rest" and seed == 2
            recs = _records(accs[seed], lens[seed], seed, new, last_iteration=3 if unfinished else 4,
                            rollout_tokens=80 if (recipe == "rest" and seed == 1) else None)
            _write_run(sweep / str(job), recs, [f"recipe={recipe}", f"seed={seed}", "iterations=4", "hydra.job.chdir=false"],
                       finished=not unfinished)
            job += 1
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": ["recipe=k15,rest", "seed=0,1,2", "iterations=4"]}}}))
    return sweep


def test_table_numbers_are_the_hand_computed_ones(tmp_path):
    [table] = load_tables([_make_sweep(tmp_path)])
    assert list(table.arms) == ["recipe=k15", "recipe=rest"]
    assert table.common == ["iterations=4"]  # seed and hydra.* never define an arm
    k15, rest = aggregate(table, target=0.9)
    # k15 final (0.8, 0.95, 0.7): mean 0.81667; squared deviations 0.000278 + 0.017778 + 0.013611 = 0.031667
    assert k15.final == pytest.approx((0.8166667, math.sqrt(0.0316667 / 2)), abs=1e-6)
    # best after iteration 0 (0.9, 0.95, 0.7): mean 0.85, sq. dev. 0.0025 + 0.01 + 0.0225 = 0.035
    assert k15.best == pytest.approx((0.85, math.sqrt(0.035 / 2)))
    assert k15.initial == pytest.approx((0.4666667, math.sqrt(0.0066667 / 2)), abs=1e-6)
    # reaches 0.9 at iteration 2 (seed 0: 200 tokens) and 4 (seed 1: 410 tokens); seed 2 never
    assert k15.tokens == pytest.approx((305.0, math.sqrt(2 * 105.0**2)))
    assert k15.reached == 2 and k15.n == 3
    assert k15.length == pytest.approx((40.0, 10.0))
    assert k15.wall == pytest.approx((9.0, 1.0))  # time/elapsed at iteration 4: 8, 9, 10
    assert k15.iterations == (4, 4) and k15.unfinished == 0
    # rest, fallback counters: seed 0 reaches at 2 (2 x 50 tokens), seed 1 at 4 (4 x 80 rollout/tokens),
    # seed 2 at 2 (100): mean 173.33, sq. dev. 5377.8 + 21511.1 + 5377.8 = 32266.7
    assert rest.tokens == pytest.approx((173.33333, math.sqrt(32266.667 / 2)), rel=1e-6)
    assert rest.reached == 3
    assert rest.final == pytest.approx((0.9, 0.05))  # seed 2: its last evaluation (iteration 2), 0.95
    assert rest.best == pytest.approx((0.9233333, math.sqrt(0.0012667 / 2)), abs=1e-6)
    assert rest.initial == pytest.approx((0.3, 0.0))
    assert rest.wall == pytest.approx((14.0 / 3, math.sqrt((2 * (1 / 3) ** 2 + (2 / 3) ** 2) / 2)))  # 5.0, 5.0, 4.0 s
    assert rest.length == pytest.approx((22.0, math.sqrt(24.0 / 2)))
    assert rest.iterations == (3, 4) and rest.unfinished == 1
    lines = render_table([k15, rest], 0.9).splitlines()
    assert lines[0] == ("| arm | seeds | initial acc | final acc | best acc | tokens to acc ≥ 0.9 | reached | "
                        "final length | wall (s) | iterations |")
    assert lines[2] == ("| `recipe=k15` | 3 | 0.467 ± 0.058 | 0.817 ± 0.126 | 0.850 ± 0.132 | 305 ± 148 | 2/3 | "
                        "40.0 ± 10.0 | 9.0 ± 1.0 | 4 |")
    assert lines[3] == ("| `recipe=rest` (unfinished) | 3 | 0.300 ± 0.000 | 0.900 ± 0.050 | 0.923 ± 0.025 | 173 ± 127 | "
                        "3/3 | 22.0 ± 3.5 | 4.7 ± 0.6 | 3–4 |")


def test_target_moves_the_tokens_column(tmp_path):
    [table] = load_tables([_make_sweep(tmp_path)])
    k15, rest = aggregate(table, target=0.5)  # k15: iteration 0 for seeds 0 and 2 (0 tokens), seed 1 at 2 (210)
    assert k15.tokens == pytest.approx((70.0, math.sqrt((2 * 70.0**2 + 140.0**2) / 2))) and k15.reached == 3
    # rest: all at iteration 2: 100, 2 x 80 = 160, 100 tokens; sq. dev. 400 + 1600 + 400
    assert rest.tokens == pytest.approx((120.0, math.sqrt(2400.0 / 2))) and rest.reached == 3


def test_one_seed_shows_the_mean_alone_and_mean_std_is_the_sample_std():
    assert mean_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, math.sqrt((16 / 9 + 1 / 9 + 25 / 9) / 2)))
    assert mean_std([0.25]) == (0.25, None) and mean_std([]) is None


def test_single_run_row_has_no_std(tmp_path):
    _write_run(tmp_path / "r", _records([0.2, 0.95, 0.9], 33.0, 0, True))
    [table] = load_tables([tmp_path / "r"])
    assert table.source == "runs" and list(table.arms) == ["(all same)"]
    row = render_table(aggregate(table, 0.9), 0.9).splitlines()[2]
    assert row == "| (all same) | 1 | 0.200 | 0.900 | 0.950 | 200 | 1/1 | 33.0 | 8.0 | 4 |"


def test_arms_are_named_by_the_overrides_that_differ(tmp_path):
    base = {"seed": 0, "sampler": {"name": "uniform"}, "loss": {"name": "k15", "tau": 0.1}, "train": {"lr": 1e-4}}
    recs = _records([0.2, 0.5, 0.6], 20.0, 0, True)
    # a key one arm does not override is named with that arm's configured value (sampler.name)
    _write_run(tmp_path / "a", recs, ["sampler=curriculum", "seed=0", "hydra.run.dir=x", "resume=null"], base)
    _write_run(tmp_path / "b", recs, ["seed=1", "++overwrite=true"], base)
    _write_run(tmp_path / "c", recs, ["sampler=curriculum", "+seed=2"], base)
    t = load_tables([tmp_path / "a", tmp_path / "b", tmp_path / "c"])[0]
    assert {k: [r.path.name for r in v] for k, v in t.arms.items()} == {"sampler=curriculum": ["a", "c"], "sampler=uniform": ["b"]}
    _write_run(tmp_path / "d", recs, ["recipe=rest", "seed=0"], base)  # a recipe is no key of the composed config
    t = load_tables([tmp_path / "b", tmp_path / "d"])[0]
    assert list(t.arms) == ["recipe=(default)", "recipe=rest"]
    assert "| `recipe=(default)` | 1 |" in render_table(aggregate(t), 0.9)
    # without .hydra/overrides.yaml: the flattened configs are compared; a swapped plugin is named by its name
    runs = []
    for i, (loss, lr, seed) in enumerate([("k15", 1e-4, 0), ("grpo", 1e-4, 1), ("k15", 1e-4, 2), ("k15", 3e-4, 0)]):
        cfg = {**base, "seed": seed, "cache_dir": f"/c{i}", "loss": {"name": loss, "tau": 0.1 if loss == "k15" else None,
                                                                      **({"kl_coef": 0.04} if loss == "grpo" else {})},
               "train": {"lr": lr}}
        _write_run(tmp_path / f"cfg{i}", recs, None, cfg)
        runs.append(load_run(tmp_path / f"cfg{i}"))
    arms = group_arms("runs", runs).arms
    assert {k: len(v) for k, v in arms.items()} == {"loss=k15 train.lr=0.0001": 2, "loss=grpo train.lr=0.0001": 1,
                                                    "loss=k15 train.lr=0.0003": 1}
    assert list(group_arms("runs", runs[:1] + runs[2:3]).arms) == ["(all same)"]  # seeds and cache_dir only


def test_cli_writes_report_and_plots_and_prints_the_table(tmp_path, capsys):
    sweep = _make_sweep(tmp_path)
    other = tmp_path / "sweep2"
    other.mkdir()
    for i, seed in enumerate((0, 1)):
        _write_run(other / str(i), _records([0.2, 0.95, 0.9], 33.0, seed, True), [f"seed={seed}"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli_main(["report", str(sweep), str(other), "--out", str(out), "--target", "0.9", "--title", "Loss ablation"]) == 0
    printed = capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert md.startswith("# Loss ablation\n\nMean ± sample std (n − 1) over seeds")
    for text in (md, printed):
        assert "| `recipe=k15` | 3 | 0.467 ± 0.058 | 0.817 ± 0.126 |" in text
        assert "| (all same) | 2 | 0.200 ± 0.000 | 0.900 ± 0.000 |" in text  # one table per sweep
    assert f"## {sweep}" in md and f"## {other}" in md
    assert f"Unfinished (no summary.json; their last evaluation counts as final): `{sweep / '5'}` (seed 2)" in md
    links = [line[line.index("](") + 2:-1] for line in md.splitlines() if line.startswith("![")]
    # per sweep: accuracy (3 x-axes), training length, per difficulty (d2, d3), accuracy vs length
    assert len(links) == 8 and len(set(links)) == 8
    for name in links:
        assert "/" not in name and (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "notes.txt").read_text() == "mine"  # nothing but its own outputs is touched
    assert sorted(p.name for p in out.iterdir()) == sorted(links + ["report.md", "notes.txt"])


def test_default_out_is_report_inside_the_first_path_and_a_rerun_reads_the_sweep_again(tmp_path, capsys):
    sweep = _make_sweep(tmp_path)
    assert cli_main(["report", str(sweep)]) == 0
    first = (sweep / "report" / "report.md").read_text()
    assert cli_main(["report", str(sweep)]) == 0  # report/ is not taken for a job of the sweep
    assert (sweep / "report" / "report.md").read_text() == first


def test_no_difficulty_plot_without_difficulties(tmp_path):
    recs = [{k: v for k, v in r.items() if "/d" not in k} for r in _records([0.2, 0.5, 0.6], 20.0, 0, True)]
    _write_run(tmp_path / "r", recs)
    md, _ = build_report([tmp_path / "r"], tmp_path / "out")
    assert "difficulty" not in md and len([l for l in md.splitlines() if l.startswith("![")]) == 3


def _error(argv, capsys):
    capsys.readouterr()
    code = cli_main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("reasonzoo:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return code, lines[0]


def test_bad_input_is_one_line_naming_the_path(tmp_path, capsys):
    missing = tmp_path / "nope"
    code, line = _error(["report", str(missing)], capsys)
    assert code == EXIT_FAILURE and f"{missing}: no such directory" in line
    (tmp_path / "empty").mkdir()
    code, line = _error(["report", str(tmp_path / "empty")], capsys)
    assert code == EXIT_FAILURE and f"{tmp_path / 'empty'}: neither a run directory" in line
    sweep = _make_sweep(tmp_path)
    (sweep / "6" / ".hydra").mkdir(parents=True)  # a job that failed before its first record
    code, line = _error(["report", str(sweep)], capsys)
    assert code == EXIT_FAILURE and f"{sweep / '6'}: run directory without metrics.jsonl" in line
    (sweep / "6" / "metrics.jsonl").write_text("")
    code, line = _error(["report", str(sweep)], capsys)
    assert code == EXIT_FAILURE and f"{sweep / '6' / 'metrics.jsonl'}: no metrics records" in line
    (sweep / "6" / "metrics.jsonl").write_text('{"iteration": 0}\n{"iterat')
    code, line = _error(["report", str(sweep)], capsys)
    assert code == EXIT_FAILURE and f"{sweep / '6' / 'metrics.jsonl'}:2: not a JSON object" in line
    assert not (sweep / "report").exists()  # nothing written on a bad input
    code, line = _error(["report", str(sweep / "0"), "--target", "1.5"], capsys)
    assert code == EXIT_USAGE and "--target 1.5: out of range; allowed: 0 < ACC <= 1" in line
    code, line = _error(["report", str(sweep / "0"), "--out", str(sweep / "1")], capsys)
    assert code == EXIT_USAGE and f"--out {sweep / '1'}: is a run or sweep directory" in line


TINY = ["logger=none", "progress=false", "iterations=2", "prompts_per_iteration=4", "samples_per_prompt=4",
        "task.min_steps=2", "task.max_steps=3", "task.train_size=200", "task.eval_per_difficulty=20",
        "warmup.steps=10", "warmup.batch_size=16", "eval.problems_per_difficulty=8", "eval.every=1",
        "generation.max_new_tokens=24", "train.minibatch_size=8"]


def test_real_tiny_sweep(tmp_path, monkeypatch):
    """A real two-arm Hydra multirun (length_penalty k15 / none, one seed each, run in this process)
    reads as two arms whose numbers are those of the runs' own records and summaries."""
    from reasonzoo import train as train_mod

    sweep = tmp_path / "sweep"
    monkeypatch.setattr(sys, "argv", ["reasonzoo-train", "-m", "length_penalty=k15,none", *TINY, f"hydra.sweep.dir={sweep}"])
    monkeypatch.setattr(train_mod, "_created_dir", None)
    train_mod.main()  # a failure exits (SystemExit) with its one-line error
    [table] = load_tables([sweep])
    assert list(table.arms) == ["length_penalty=k15", "length_penalty=none"]
    rows = aggregate(table, target=0.01)
    for row, runs in zip(rows, table.arms.values()):
        [run] = runs
        recs = run.records
        assert row.final == (run.summary["final_eval"]["eval/accuracy"], None)
        assert row.length == (run.summary["final_eval"]["eval/mean_length"], None)
        assert row.initial == (recs[0]["eval/accuracy"], None) and row.iterations == (2, 2)
        assert row.best == (max(r["eval/accuracy"] for r in recs[1:]), None)
        # sync rollouts: every generated token belongs to a finished response
        hit = next((r for r in recs if r["eval/accuracy"] >= 0.01), None)
        assert row.reached == (hit is not None)
        if hit is not None:
            assert row.tokens == (sum(r.get("response/tokens", 0) for r in recs if r["iteration"] <= hit["iteration"]), None)
        assert row.wall[0] == pytest.approx(sum(r["time/iteration"] - r["time/eval"] for r in recs[1:]), rel=1e-6, abs=1e-3)
    md, _ = build_report([sweep])
    assert "| `length_penalty=k15` | 1 |" in md and (sweep / "report" / "sweep_accuracy.png").is_file()


def test_wall_time_in_minutes_and_budget_stops_noted(tmp_path):
    long = _records([0.2, 0.5, 0.6], 20.0, 0, True)
    for r in long[1:]:
        r["time/elapsed"] = 90.0 * r["iteration"]  # 360 s at iteration 4 -> 6.0 min
    _write_run(tmp_path / "a", long, ["seed=0"])
    _write_run(tmp_path / "b", _records([0.2, 0.5, 0.6], 20.0, 1, True), ["seed=1"])  # 9 s
    (tmp_path / "a" / "summary.json").write_text(json.dumps({"stopped_by": "wall_seconds"}))
    (tmp_path / "b" / "summary.json").write_text(json.dumps({"stopped_by": "iterations"}))
    md, [shown] = build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    row = shown.splitlines()[-1]
    assert "| wall (min) |" in shown
    assert row.endswith("| 3.1 ± 4.1 | 4 |")  # (6.0 + 0.15) / 2 min; std sqrt(2 x 175.5^2) s = 4.14 min
    assert f"Stopped by a budget: `{tmp_path / 'a'}` (budget.wall_seconds)" in md
    assert f"`{tmp_path / 'b'}` (budget" not in md  # stopped_by: iterations is the normal end
