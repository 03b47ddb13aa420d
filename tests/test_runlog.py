"""Runs a user can follow (issue 8 item 15): the run directory printed at start and end, one plain
line per iteration and per held-out evaluation on the console and in train.log, no progress-bar
carriage returns in redirected output; a resumed run appends to the same train.log."""
from reasonzoo.runlog import eval_line, iteration_line


def test_iteration_line_hand_record():
    rec = {"iteration": 3, "reward/total_mean": 0.5, "reward/accuracy": 0.625, "response/mean_length": 23.14,
           "response/finish_length": 0.125, "loss/total": 0.01234, "time/iteration": 1.5, "time/rollout": 0.5,
           "time/reward": 0.25, "time/update": 0.75, "eval/accuracy": 0.8, "eval/mean_length": 30.0,
           "eval/accuracy/d2": 0.9, "eval/accuracy/d3": 0.7}
    assert iteration_line(rec, 10) == (
        "iteration 3/10: reward 0.500 accuracy 0.625 length 23.1 truncated 0.125 loss 0.01234 | "
        "1.50 s (rollout 0.50, reward 0.25, update 0.75) | eval accuracy 0.800 length 30.0 (d2 0.900, d3 0.700)")
    # an iteration in which a partial-rollout scheduler finished no group
    assert iteration_line({"iteration": 1, "response/groups": 0}, 2) == "iteration 1/2: groups 0"
    assert eval_line({"eval/accuracy": 0.5}).startswith("eval accuracy 0.500")


def test_train_log_and_console_lines(tmp_path, tiny_overrides, cli):
    run = tmp_path / "run"
    args = [a for a in tiny_overrides if not a.startswith("progress=")] + ["progress=true", "iterations=2",
                                                                         f"hydra.run.dir={run}"]
    proc = cli(args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "\r" not in out  # output is a pipe: no progress bars
    assert f"run directory: {run}" in out and f"run finished; outputs in {run}" in out
    log = (run / "train.log").read_text()
    lines = log.splitlines()
    assert sum("iteration 1/2:" in l for l in lines) == 1 and sum("iteration 2/2:" in l for l in lines) == 1
    assert sum("iteration 0 (before RL): eval accuracy" in l for l in lines) == 1
    assert "| eval accuracy" in next(l for l in lines if "iteration 2/2:" in l)
    for line in ("iteration 1/2:", "iteration 2/2:"):
        assert line in out


def test_resume_appends_to_train_log(tiny_overrides, kill_and_resume):
    ref, killed = kill_and_resume(tiny_overrides + ["iterations=4"], after=2)
    lines = (killed / "train.log").read_text().splitlines()
    # the killed run logged iterations 1-2 (maybe 3); the resumed run adds 3 and 4, then finishes
    assert sum(l.endswith(f"run directory: {killed}") for l in lines) == 2
    assert any("iteration 4/4:" in l for l in lines) and "run finished" in lines[-1]
