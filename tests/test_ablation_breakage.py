"""Faults a new user hit with the ablation features (``reasonzoo report``, sweep files), kept as
tests: hostile metrics records, a sweep still running, and the command line winning over a sweep
file's parameters."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reasonzoo import ablation_report
from reasonzoo.ablation_report import build_report, load_run, load_tables
from reasonzoo.cli import main as cli_main
from reasonzoo.errors import EXIT_FAILURE
from reasonzoo.rundir import RunLock

ITS = [{"iteration": 0, "eval/accuracy": 0.25, "eval/mean_length": 20.0},
       {"iteration": 1, "tokens/generated": 100, "time/elapsed": 1.0, "response/mean_length": 12.0,
        "eval/accuracy": 0.5, "eval/mean_length": 18.0}]


def _run(d: Path, records=ITS, overrides=("loss=k15", "seed=0"), finished=True, text=None):
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text(text if text is not None else "".join(json.dumps(r) + "\n" for r in records))
    (d / ".hydra").mkdir()
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    (d / "reasonzoo_config.yaml").write_text(yaml.safe_dump({"seed": 0}))
    if finished:
        (d / "summary.json").write_text(json.dumps({"stopped_by": "iterations"}))
    return d


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _one_error_line(argv, capsys) -> tuple[int, str]:
    code = cli_main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("reasonzoo:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return code, lines[0]


@pytest.mark.parametrize("key,value", [("eval/accuracy", None), ("eval/accuracy", "0.5"), ("eval/mean_length", None),
                                       ("tokens/generated", "x"), ("eval/accuracy/d2", [1]), ("time/elapsed", True)])
def test_a_non_number_in_a_record_is_one_line_naming_file_line_and_key(tmp_path, capsys, key, value):
    # Old code: TypeError tracebacks ('>=' between NoneType and float; int + NoneType) or
    # "could not convert string to float: 'x'" without the file.
    recs = [ITS[0], {**ITS[1], key: value}]
    _run(tmp_path / "r", recs)
    code, line = _one_error_line(["report", str(tmp_path / "r"), "--out", str(tmp_path / "out")], capsys)
    assert code == EXIT_FAILURE
    assert f"{tmp_path / 'r' / 'metrics.jsonl'}:2: '{key}' is {json.dumps(value)}; expected a number" in line
    assert not (tmp_path / "out").exists()


def test_a_boolean_iteration_is_not_an_integer(tmp_path):
    _run(tmp_path / "r", [{"iteration": True, "eval/accuracy": 0.5}])  # old code: accepted (bool is an int)
    with pytest.raises(ValueError, match=r"metrics.jsonl:1: expected a metrics record with an integer 'iteration'"):
        load_run(tmp_path / "r")


def test_is_live_sees_a_held_lock_without_taking_it(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    assert not ablation_report.is_live(d)  # no lock file
    lock = RunLock(d).acquire()
    try:
        assert ablation_report.is_live(d) and ablation_report.is_live(d)  # reading it twice: still held
    finally:
        lock.release()
    assert not ablation_report.is_live(d)  # the lock file stays, nobody holds it
    (d / ".reasonzoo.lock").write_text(f"{_dead_pid()}\n")
    assert not ablation_report.is_live(d)
    if Path("/proc/locks").is_file():  # a live pid that does not hold the lock (a reused joblib worker)
        (d / ".reasonzoo.lock").write_text(f"{os.getpid()}\n")
        assert not ablation_report.is_live(d)


def test_a_sweep_still_running_is_reported_without_its_jobs_that_have_no_record_yet(tmp_path, capsys):
    sweep = tmp_path / "sweep with spaces"
    _run(sweep / "0", overrides=("loss=k15", "seed=0"))
    _run(sweep / "1", overrides=("loss=grpo", "seed=0"), finished=False)  # running, past its first evaluation
    (sweep / "2" / ".hydra").mkdir(parents=True)  # running, still in its warm-up: no metrics.jsonl yet
    (sweep / "2" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["loss=k15", "seed=1"]))
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": ["loss=k15,grpo", "seed=0,1"]}}}))
    # the live run 1 is mid-write: its last line is torn (no newline yet)
    (sweep / "1" / "metrics.jsonl").write_text(json.dumps(ITS[0]) + "\n" + json.dumps(ITS[1])[:30])
    # Old code: "…/2: run directory without metrics.jsonl … remove it or leave it out" (a job of a
    # sweep cannot be left out), then "…/1/metrics.jsonl:2: not a JSON object".
    with RunLock(sweep / "1"), RunLock(sweep / "2"):  # held as the live jobs hold them
        md, [shown] = build_report([sweep], tmp_path / "out", plots=False)
        [table] = load_tables([sweep])
    assert f"Still running, no record yet (left out): `{sweep / '2'}`" in md
    assert "| `loss=grpo` (unfinished) | 1 | 0.250 | 0.250 | – |" in shown  # the torn record is not read
    assert "| `loss=k15` | 1 | 0.250 | 0.500 | 0.500 |" in shown
    assert table.pending == [sweep / "2"] and [r.path.name for rs in table.arms.values() for r in rs] == ["0", "1"]


def test_a_job_without_records_whose_process_ended_is_still_an_error(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _run(sweep / "0")
    (sweep / "1" / ".hydra").mkdir(parents=True)
    (sweep / "1" / ".reasonzoo.lock").write_text(f"{_dead_pid()}\n")  # failed before its first record
    code, line = _one_error_line(["report", str(sweep)], capsys)
    assert code == EXIT_FAILURE and f"{sweep / '1'}: run directory without metrics.jsonl" in line
    (sweep / "1" / "metrics.jsonl").write_text(json.dumps(ITS[0]) + "\n" + json.dumps(ITS[1])[:30])
    code, line = _one_error_line(["report", str(sweep)], capsys)  # a torn line of a dead run is not skipped
    assert code == EXIT_FAILURE and f"{sweep / '1' / 'metrics.jsonl'}:2: not a JSON object" in line


def test_a_sweep_whose_jobs_all_have_no_record_yet_is_one_line(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for j in ("0", "1"):
        (sweep / j / ".hydra").mkdir(parents=True)
    with RunLock(sweep / "0"), RunLock(sweep / "1"):
        code, line = _one_error_line(["report", str(sweep)], capsys)
    assert code == EXIT_FAILURE
    assert f"{sweep}: no job of this sweep has written a metrics record yet (running: 0, 1)" in line
    assert not (sweep / "report").exists()


def test_the_command_line_wins_over_a_sweep_files_parameters():
    from reasonzoo.train import _sweep_jobs

    jobs = _sweep_jobs(["sweep=losses", "seed=5"])  # conf/sweep/losses.yaml: recipe 7 values x seed 0,1,2
    assert len(jobs) == 7 and all("seed=5" in j and sum(o.startswith("seed=") for o in j) == 1 for j in jobs)
    jobs = _sweep_jobs(["sweep=losses", "recipe=k15,ppo"])
    assert sorted(tuple(sorted(j)) for j in jobs) == sorted(
        tuple(sorted(["sweep=losses", f"recipe={r}", f"seed={s}"])) for r in ("k15", "ppo") for s in (0, 1, 2))


def test_a_fixed_override_valid_only_for_the_swept_choices_names_the_working_form(capsys):
    # -m loss=grpo,ppo loss.clip_high=0.28: Hydra composes the fixed overrides on the default loss
    # (k15, no clip_high) first. Old code: "Could not override 'loss.clip_high'. To append to your
    # config use +loss.clip_high=0.28", a form every job would refuse in turn.
    from reasonzoo.errors import EXIT_USAGE, UsageError
    from reasonzoo.train import _sweep_jobs

    for overrides in (["loss=grpo,ppo", "loss.clip_high=0.28"], ["recipe=grpo,ppo", "loss.clip_high=0.28"],
                      ["sweep=losses", "loss.clip_high=0.28"]):
        with pytest.raises(UsageError, match=r"^loss\.clip_high=0\.28: no such key in the config before the swept "
                                             r"choices are applied .* write \+\+loss\.clip_high=0\.28 to set it"):
            _sweep_jobs(overrides)
    assert _sweep_jobs(["loss=grpo,ppo", "++loss.clip_high=0.28"]) == [
        ["loss=grpo", "++loss.clip_high=0.28"], ["loss=ppo", "++loss.clip_high=0.28"]]


def test_a_sweep_of_values_only_keeps_the_plain_unknown_key_error():
    from reasonzoo.registry import PluginError
    from reasonzoo.train import _sweep_jobs

    with pytest.raises(PluginError, match=r"^loss\.bogus: unknown key for plugin loss/k15"):
        _sweep_jobs(["seed=0,1", "loss.bogus=1"])  # seed is a value, not a group: nothing swept changes loss


def test_a_key_missing_from_a_group_chosen_outside_the_sweep_keeps_the_plain_error():
    # -m sweep=losses task=jsonl task.min_steps=2 ...: the task is fixed (not swept), so the ++
    # hint would be wrong; the error names the task plugin and its keys.
    from reasonzoo.registry import PluginError
    from reasonzoo.train import _sweep_jobs

    with pytest.raises(PluginError, match=r"^task\.min_steps: unknown key for plugin task/jsonl"):
        _sweep_jobs(["sweep=losses", "task=jsonl", "task.train_path=a.jsonl,b.jsonl", "task.min_steps=2"])


def test_a_directory_of_sweeps_names_them(tmp_path, capsys):
    # conf/sweep/*.yaml write multirun/<name>/<date>_<time>: `reasonzoo report multirun/losses` is
    # natural. Old code: "neither a run directory (no metrics.jsonl) nor a sweep directory".
    parent = tmp_path / "losses"
    for stamp in ("2026-11-30_01-00-00", "2026-11-30_02-00-00", "2026-11-30_03-00-00", "2026-11-30_04-00-00"):
        _run(parent / stamp / "0")
        (parent / stamp / "multirun.yaml").write_text("{}\n")
    code, line = _one_error_line(["report", str(parent)], capsys)
    assert code == EXIT_FAILURE and line.endswith(
        f"{parent}: a directory of sweeps, not a sweep; pass the sweep directories themselves "
        f"(2026-11-30_02-00-00, 2026-11-30_03-00-00, 2026-11-30_04-00-00 and 1 older)")
    md, [shown] = build_report([parent / "2026-11-30_04-00-00"], tmp_path / "out", plots=False)
    assert "| (all same) | 1 | 0.250 | 0.500 | 0.500 |" in shown


@pytest.mark.parametrize("override", ["sweep=losses,sampling", "sweep=glob(*)"])
def test_sweeping_over_sweep_files_is_refused(override):
    # Old code: [['sweep=losses'], ['sweep=sampling']]; Hydra then launched 2 jobs, one config of
    # each file, none of the files' 21 + 9 parameter combinations.
    from reasonzoo.errors import UsageError
    from reasonzoo.train import _sweep_jobs

    with pytest.raises(UsageError, match=r"a sweep file cannot itself be swept .* run one reasonzoo-train -m "
                                         r"sweep=<name> per file"):
        _sweep_jobs([override])
