"""reasonzoo.evaluation and ``reasonzoo eval``: pass@k against hand-computed values and a brute
force over subsets, maj@n voting, per-difficulty aggregation, and the command on a trained run."""
import itertools
import json
import math
import subprocess
import sys

import pytest

from reasonzoo.evaluation import ProblemResult, aggregate, by_difficulty, majority_correct, markdown_table, pass_at_k, report


def brute_pass_at_k(n, c, k):
    """Share of k-subsets of n samples (c correct) that hold a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_hand_values():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(4, 2, 3) == 1.0  # n - c < k: every 3-subset holds a correct one
    assert pass_at_k(8, 3, 4) == pytest.approx(1 - math.comb(5, 4) / math.comb(8, 4))


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k)), (n, c, k)


@pytest.mark.parametrize("n,c,k", [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(n, c, k)


def test_majority_vote():
    # "7" wins 2:1; it is wrong
    assert majority_correct(["7", "5", "7"], [False, True, False]) is False
    # tie 1:1 goes to the first seen answer; None does not vote
    assert majority_correct([None, "5", "7", None], [False, True, False, False]) is True
    assert majority_correct([None, None], [False, False]) is False


def _res(uid, d, correct, lengths=None, trunc=None, answers=None):
    n = len(correct)
    return ProblemResult(uid, d, tuple(correct), tuple(lengths or [10] * n), tuple(trunc or [False] * n),
                         tuple(answers or ["a" if ok else "b" for ok in correct]))


def test_aggregate_by_difficulty():
    rs = [_res("p1", 2, [1, 0, 0, 0], lengths=[4, 8, 8, 8], trunc=[0, 0, 0, 1]),
          _res("p2", 2, [1, 1, 1, 0]),
          _res("p3", 5, [0, 0, 0, 0], answers=[None] * 4)]
    a = aggregate(rs, ks=(1, 2, 4, 9))
    assert a["pass@1"] == pytest.approx((0.25 + 0.75 + 0) / 3)
    assert a["pass@2"] == pytest.approx((pass_at_k(4, 1, 2) + pass_at_k(4, 3, 2)) / 3)
    assert a["pass@4"] == pytest.approx(2 / 3) and "pass@9" not in a  # k > n is left out
    assert a["mean@4"] == pytest.approx(a["pass@1"])
    assert a["maj@4"] == pytest.approx(1 / 3)  # p1: "b" wins (wrong); p2: "a" wins; p3: no answer
    assert a["mean_length"] == pytest.approx((28 + 40 + 40) / 12)
    assert a["truncated"] == pytest.approx(1 / 12)
    groups = by_difficulty(rs)
    assert list(groups) == [2, 5]
    rep = report(rs, (1, 4))
    assert rep["by_difficulty"]["2"]["pass@4"] == 1.0 and rep["by_difficulty"]["5"]["problems"] == 1
    table = markdown_table(rep, "sampled")
    assert "| all | 3 |" in table and "pass@4" in table


def test_aggregate_refuses_mixed_sample_counts():
    with pytest.raises(ValueError, match="different sample counts"):
        aggregate([_res("a", 1, [1]), _res("b", 1, [1, 0])])


def test_eval_command_on_a_trained_run(tmp_path, tiny_overrides):
    """`reasonzoo eval <run>`: the run's task, reward and held-out problems; greedy and sampled
    modes; JSON, markdown and per-sample files; sampled pass@1 at n=1 is the training-time
    evaluation of the same model (same engine, problems and reward)."""
    from reasonzoo.train import compose
    from reasonzoo.trainer import train

    run = tmp_path / "run"
    train(compose(tiny_overrides + ["iterations=1"]), run)
    out = tmp_path / "ev"
    res = subprocess.run([sys.executable, "-m", "reasonzoo.cli", "eval", str(run), "--n", "4", "--k", "1,2,4",
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    data = json.loads((out / "eval.json").read_text())
    assert data["model"].endswith("final") and data["task"]["name"] == "modarith"
    assert set(data["modes"]) == {"greedy", "sampled"}
    s = data["modes"]["sampled"]["all"]
    assert {"pass@1", "pass@2", "pass@4", "mean@4", "maj@4", "mean_length", "truncated"} <= set(s)
    assert s["pass@1"] <= s["pass@2"] <= s["pass@4"]
    assert s["problems"] == 16  # eval.problems_per_difficulty=8, difficulties 2 and 3
    lines = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 16 * (1 + 4)
    assert sum(l["correct"] for l in lines if l["mode"] == "sampled") / 64 == pytest.approx(s["mean@4"])
    assert "| all | 16 |" in (out / "eval.md").read_text() and "pass@4" in res.stdout
    # an existing non-empty --out is refused before any work, with one line
    again = subprocess.run([sys.executable, "-m", "reasonzoo.cli", "eval", str(run), "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr


def test_eval_matches_training_time_evaluation(tmp_path, tiny_overrides):
    """The module the trainer evaluates with gives the same accuracy when called by `run`
    with the run's own config (n=1, eval.temperature, same stream name)."""
    from reasonzoo.evalcmd import run as eval_run
    from reasonzoo.train import compose
    from reasonzoo.trainer import train

    run = tmp_path / "run"
    summary = train(compose(tiny_overrides + ["iterations=1", "eval.temperature=0"]), run)
    data = eval_run(run, n=1, ks=(1,), sampled=False, out=tmp_path / "ev", quiet=True)
    greedy = data["modes"]["greedy"]["all"]
    assert greedy["pass@1"] == pytest.approx(summary["final_eval"]["eval/accuracy"])
    assert greedy["mean_length"] == pytest.approx(summary["final_eval"]["eval/mean_length"])


def test_eval_bad_path_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "reasonzoo.cli", "eval", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "nope" in res.stderr


def test_eval_overrides_may_follow_options(monkeypatch):
    """`reasonzoo eval RUN --n 4 task=jsonl ...`: Hydra overrides after the options are overrides,
    not "unrecognized arguments" (argparse's default parser stops at the first option)."""
    from reasonzoo import evalcmd

    seen = {}
    monkeypatch.setattr(evalcmd, "run", lambda path, overrides, **kw: seen.update(path=path, overrides=overrides, **kw))
    assert evalcmd.main(["runs/x", "--n", "4", "eval.problems_per_difficulty=2", "--k", "1,4", "reward=math"]) == 0
    assert seen["path"] == "runs/x" and seen["overrides"] == ["eval.problems_per_difficulty=2", "reward=math"]
    assert seen["n"] == 4 and seen["ks"] == [1, 4]


@pytest.mark.parametrize("kw, message", [
    ({"temperature": -1.0}, "--temperature -1.0: must be >= 0"),
    ({"top_p": 1.5}, r"--top-p 1.5: must be in \(0, 1\]"),
    ({"temperature": 0.0, "n": 4, "ks": (1, 4)}, "--temperature 0 --n 4: temperature 0 is greedy decoding"),
])
def test_eval_bad_sampling_settings_refused_before_any_work(tmp_path, kw, message):
    """Bad sampled-mode settings are a usage error before the model is looked for or the output
    folder created (they used to surface after loading the model, leaving an empty folder, and
    --temperature 0 --n 4 silently became one response per problem)."""
    from reasonzoo.evalcmd import run as eval_run

    out = tmp_path / "ev"
    with pytest.raises(ValueError, match=message):
        eval_run(tmp_path / "no-model-here", out=out, **kw)
    assert not out.exists()


def test_eval_bad_k_and_file_as_out_are_one_line(tmp_path, capsys):
    from reasonzoo.evalcmd import main

    assert main([str(tmp_path), "--k", "a"]) == 2
    assert "--k a: expected comma-separated integers" in capsys.readouterr().err
    f = tmp_path / "file.txt"
    f.write_text("x")
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    assert main([str(run), "--out", str(f)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def _saved_run(tmp_path, overrides):
    """A run directory as `reasonzoo eval` reads it: the saved config and a (fake) final model."""
    from omegaconf import OmegaConf

    from reasonzoo.train import compose
    from reasonzoo.trainer import CONFIG_FILE

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    OmegaConf.save(compose(overrides), run / CONFIG_FILE)
    return run


def test_eval_override_of_an_inherited_task_key(tmp_path):
    """`reasonzoo eval <jsonl run> task.eval_fraction=0.5` (the README's example of changing the
    run's own config) composed the override on the default task first and died with Hydra's
    "Could not override 'task.eval_fraction'" traceback."""
    from reasonzoo.evalcmd import build_config

    run = _saved_run(tmp_path, ["task=jsonl", "task.train_path=/data/p.jsonl", "reward=math", "seed=7"])
    cfg, saved = build_config(run, ["task.eval_fraction=0.5", "task.prompt_template='{prompt} Box it: \\boxed{}.'",
                                    "generation.max_new_tokens=5"])
    assert saved == run / "reasonzoo_config.yaml"
    assert cfg.task.name == "jsonl" and cfg.task.train_path == "/data/p.jsonl" and cfg.task.eval_fraction == 0.5
    assert cfg.task.prompt_template == "{prompt} Box it: \\boxed{}." and cfg.reward.name == "math"
    assert cfg.seed == 7 and cfg.generation.max_new_tokens == 5


@pytest.mark.parametrize("override, message", [
    ("task.eval_fractoin=0.5", "task.eval_fractoin: unknown key for plugin task/jsonl"),
    ("reward=nope", "reward=nope: unknown plugin; available reward plugins: answer,"),
    ("sampler.nope=1", "sampler.nope: unknown key for plugin sampler/"),
    ("task.x={a b", "task.x={a b: not a valid override"),
])
def test_eval_config_mistakes_are_one_line_usage_errors(tmp_path, capsys, override, message):
    """Config mistakes after the path were Hydra tracebacks (exit 1), unlike reasonzoo-train's."""
    from reasonzoo.cli import main

    run = _saved_run(tmp_path, ["task=jsonl", "task.train_path=/data/p.jsonl", "reward=math"])
    assert main(["eval", str(run), override, "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ev").exists()


def test_eval_failed_set_up_leaves_no_output_folder(tmp_path, monkeypatch):
    """A task that fails to load (a missing data file, a wrong task.fields.*) left an empty
    evals/<date>/<time>-<pid> (or --out) folder behind; a pre-existing empty --out stays."""
    from reasonzoo.evalcmd import run as eval_run

    run = _saved_run(tmp_path, ["task=jsonl", f"task.train_path={tmp_path}/missing.jsonl", "reward=math"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        eval_run(run, n=2, ks=(1,), quiet=True)
    assert not (tmp_path / "evals").exists()
    with pytest.raises(FileNotFoundError):
        eval_run(run, n=2, ks=(1,), out=tmp_path / "ev", quiet=True)
    assert not (tmp_path / "ev").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(FileNotFoundError):
        eval_run(run, n=2, ks=(1,), out=tmp_path / "mine", quiet=True)
    assert (tmp_path / "mine").is_dir()
