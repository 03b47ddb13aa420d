"""Run directories (issue 9 items 1-3): unique by default, locked by the live run, never changed by
a run whose set-up fails or that would clobber a finished or resumable run, and a finished run
resumed is reported complete with nothing changed."""
import hashlib
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from reasonzoo.checkpoint import save_checkpoint
from reasonzoo.errors import RunDirError
from reasonzoo.rundir import RunLock, remove_stale_temporaries, unique_dir
from reasonzoo.train import compose
from reasonzoo.trainer import CONFIG_FILE, train


def _digest(run_dir):
    """{relative path: sha1} of every file under run_dir (what 'nothing changed' compares)."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        if p.is_file() and p.name != ".reasonzoo.lock":
            out[str(p.relative_to(run_dir))] = (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_default_directories_are_unique_within_one_second(tmp_path, monkeypatch):
    """Two runs started in the same second got the same outputs/<date>/<time>."""
    assert unique_dir(tmp_path / "a" / "12-00-00") == tmp_path / "a" / "12-00-00"
    assert unique_dir(tmp_path / "a" / "12-00-00") == tmp_path / "a" / "12-00-00-1"
    assert unique_dir(tmp_path / "a" / "12-00-00") == tmp_path / "a" / "12-00-00-2"
    from reasonzoo import train as train_mod

    monkeypatch.chdir(tmp_path)
    first = train_mod._preflight(["logger=none"])
    second = train_mod._preflight(["logger=none"])
    assert first != second and all(a.startswith("hydra.run.dir=") for a in first + second)
    assert len({p for p in (tmp_path / "outputs").glob("*/*")}) == 2


def test_a_live_run_directory_is_refused(tmp_path, tiny_overrides):
    """A second run into a directory where a run is live silently replaced its metrics."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"iteration": 0}\n')
    before = _digest(run)
    with RunLock(run):
        with pytest.raises(RunDirError, match=rf"{run} is in use by a live run \(pid {os.getpid()}"):
            train(compose(tiny_overrides + [f"resume={run}"]), run)
    assert _digest(run) == before


def test_checkpoint_cleanup_touches_only_its_own_temporaries(tmp_path, tiny_policy):
    """One run's checkpoint clean-up deleted the other's in-progress .tmp-iter_*."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ckpts = tmp_path / "checkpoints"
        (ckpts / f".tmp-iter_000007-{live.pid}").mkdir(parents=True)
        (ckpts / f".tmp-iter_000003-{_dead_pid()}").mkdir()
        state = {"iteration": 1}
        save_checkpoint(tmp_path, 1, tiny_policy, state)
        assert (ckpts / f".tmp-iter_000007-{live.pid}").is_dir()  # another writer's: untouched
        removed = remove_stale_temporaries(tmp_path)  # at lock time: only dead writers' go
        assert len(removed) == 1 and removed[0].name.startswith(".tmp-iter_000003-")
        assert (ckpts / f".tmp-iter_000007-{live.pid}").is_dir()
    finally:
        live.kill()
        live.wait()


def _held_run(run, tiny_policy, overrides):
    run.mkdir()
    (run / CONFIG_FILE).write_text(OmegaConf.to_yaml(compose(overrides)))
    (run / "metrics.jsonl").write_text('{"iteration": 0, "eval/accuracy": 0.5}\n{"iteration": 1}\n')
    opt = torch.optim.AdamW(tiny_policy.model.parameters())
    save_checkpoint(run, 1, tiny_policy, {"iteration": 1, "policy_version": 1, "optimizer": opt.state_dict(),
                                          "torch_rng": torch.get_rng_state(), "plugins": {}})


def test_fresh_run_into_a_held_directory_changes_nothing(tmp_path, tiny_policy, tiny_overrides):
    """A fresh run deleted the old metrics and rewrote its config before reading its data file."""
    run = tmp_path / "run"
    _held_run(run, tiny_policy, tiny_overrides)
    before = _digest(run)
    with pytest.raises(RunDirError, match=rf"{run} holds a resumable run .*resume={run}.*overwrite=true"):
        train(compose(tiny_overrides), run)
    assert _digest(run) == before
    bad = [o for o in tiny_overrides if not o.startswith("task.")] + ["task=jsonl", f"task.train_path={tmp_path}/missing.jsonl", "overwrite=true"]
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        train(compose(bad), run)  # set-up fails: the old run must survive even with overwrite=true
    assert _digest(run) == before


def test_resume_of_a_finished_run_changes_nothing_and_overwrite_replaces(tmp_path, tiny_overrides, capsys):
    """resume=<a finished run> re-ran the final evaluation and rewrote summary.json."""
    run = tmp_path / "run"
    fast = [o for o in tiny_overrides if not o.startswith("warmup.")] + [
        "iterations=1", "eval.every=0", "eval.before=false", "warmup=none"]
    first = train(compose(fast), run)
    before = _digest(run)
    again = train(compose(fast + [f"resume={run}"]), run)
    assert again == first and _digest(run) == before
    assert f"{run} is complete" in capsys.readouterr().err
    with pytest.raises(RunDirError, match=rf"{run} holds a finished run"):
        train(compose(fast), run)
    assert _digest(run) == before
    train(compose(fast + ["overwrite=true", "seed=1"]), run)  # explicit: replaced
    assert OmegaConf.load(run / CONFIG_FILE).seed == 1
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith('{"iteration": 0')  # the new run's only


def test_sigint_keeps_the_last_checkpoint_and_says_how_to_resume(tmp_path, tiny_overrides):
    """SIGINT ended with a KeyboardInterrupt traceback; now the step is abandoned, the last complete
    checkpoint kept, the lock and signal handlers released, and the message says how to resume."""
    import signal
    import threading
    import time

    from reasonzoo.checkpoint import latest_checkpoint, load_state
    from reasonzoo.errors import EXIT_SIGINT, RunInterrupted, report

    run = tmp_path / "run"
    # Python's default_int_handler, or SIG_IGN when the suite runs as a background job of a shell
    # without job control (POSIX: such jobs start with SIGINT ignored): train() restores either
    before = signal.getsignal(signal.SIGINT)

    def interrupt():
        while not (run / "checkpoints" / "latest").exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(RunInterrupted) as info:
        train(compose(tiny_overrides + ["iterations=100000", "eval.every=0"]), run)
    exc = info.value
    assert exc.signum == signal.SIGINT and exc.checkpoint == latest_checkpoint(run)
    assert f"continue with: reasonzoo-train resume={run}" in str(exc) and report(exc) == EXIT_SIGINT
    assert load_state(exc.checkpoint)["iteration"] >= 0
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert signal.getsignal(signal.SIGINT) is before
    RunLock(run).acquire().release()  # released: a resume can take it


def test_sigterm_raises_run_interrupted_with_its_exit_code():
    import signal

    from reasonzoo.errors import EXIT_SIGTERM, RunInterrupted, report, signals_raise

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted) as info:
        with signals_raise():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**8):  # the handler runs at the next bytecode
                pass
    assert info.value.signum == signal.SIGTERM and report(info.value) == EXIT_SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_full_disk_while_checkpointing_keeps_the_previous_one_and_names_the_path(tmp_path, tiny_policy, monkeypatch):
    """A full (or read-only) run directory: one line naming the path, the last checkpoint kept."""
    from reasonzoo import checkpoint
    from reasonzoo.checkpoint import latest_checkpoint

    save_checkpoint(tmp_path, 1, tiny_policy, {"iteration": 1})

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(OSError, match=r"No space left on device \(writing checkpoint iter_000002; the previous one is kept\)"
                                      r".*\.tmp-iter_000002-"):
        save_checkpoint(tmp_path, 2, tiny_policy, {"iteration": 2})
    assert latest_checkpoint(tmp_path).name == "iter_000001"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_two_runs_started_together_get_their_own_directories(tmp_path, tiny_overrides):
    """The reported failure end to end: two `reasonzoo-train` started at once in one folder (seeds
    1 and 2) each finish in a directory of their own, with only their own metrics and config."""
    import json

    args = [o for o in tiny_overrides if not o.startswith("iterations=")] + ["iterations=1", "eval.every=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(["reasonzoo-train", *args, f"seed={s}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for s in (1, 2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(o[-3000:] for o in outs)
    runs = sorted(p.parent for p in tmp_path.glob("outputs/*/*/metrics.jsonl"))
    assert len(runs) == 2
    seeds = sorted(OmegaConf.load(r / CONFIG_FILE).seed for r in runs)
    assert seeds == [1, 2]
    for r in runs:
        assert [json.loads(l)["iteration"] for l in (r / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_full_disk_while_writing_metrics_or_summary_names_the_file(tmp_path, monkeypatch):
    import builtins

    from reasonzoo.checkpoint import atomic_write_text
    from reasonzoo.trainer import _write_metrics

    (tmp_path / "summary.json").write_text("old")
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, text):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(builtins, "open", lambda *a, **k: Full(real_open(*a, **k)))
    with pytest.raises(OSError, match=rf"No space left on device \(appending iteration 3 to the metrics\): '{tmp_path}/metrics.jsonl'"):
        _write_metrics(tmp_path / "metrics.jsonl", {"iteration": 3})
    with pytest.raises(OSError, match=rf"No space left on device \(writing summary.json; the old one is kept\): '{tmp_path}/summary.json'"):
        atomic_write_text(tmp_path / "summary.json", "new")
    monkeypatch.undo()
    assert (tmp_path / "summary.json").read_text() == "old" and not list(tmp_path.glob(".summary.json.tmp*"))


def test_run_directory_turned_read_only_mid_run_is_one_line_and_keeps_the_checkpoint(tmp_path, tiny_overrides):
    """Issue 9 item 8 end to end: the run directory of a live run becomes read-only (a read-only
    bind mount in the run's own mount namespace; CI runs as root, for which chmod would not stop
    writes): the run stops with one line naming the path, exit code 1, no traceback, and the last
    complete checkpoint stays loadable."""
    import shutil
    import time

    from reasonzoo.checkpoint import latest_checkpoint, load_state

    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.fail("needs root and util-linux's unshare/nsenter (the README's setup installs util-linux; CI runs as root)")
    run = tmp_path / "run"
    args = [a for a in tiny_overrides if not a.startswith(("iterations=", "eval.every="))] + [
        "iterations=40", "eval.every=0", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", sys.executable, "-m", "reasonzoo.train", *args],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "iter_000002" / "state.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    for cmd in (["mount", "--bind", str(run), str(run)], ["mount", "-o", "remount,bind,ro", str(run)]):
        subprocess.run(["nsenter", "-t", str(proc.pid), "-m", *cmd], check=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, out + err
    lines = [l for l in err.splitlines() if l.startswith("reasonzoo:")]
    assert len(lines) == 1 and "Read-only file system" in lines[0] and str(run) in lines[0], err
    assert "Traceback" not in err
    ckpt = latest_checkpoint(run)  # the host's view: the mount was private to the run
    assert load_state(ckpt)["iteration"] >= 2 and not (run / "final").exists()


@pytest.mark.parametrize("hydra_handler", [False, True])
def test_overwrite_drops_the_old_runs_log_lines_and_wandb_folder(tmp_path, tiny_overrides, hydra_handler):
    """overwrite=true replaced metrics and checkpoints but left the old run's lines at the top of
    train.log and its offline wandb/ run beside the new one. With Hydra, the log is held open in
    append mode by Hydra's handler from before set-up: what the new run logged stays, in order."""
    import logging

    run = tmp_path / "run"
    fast = [o for o in tiny_overrides if not o.startswith("warmup.")] + [
        "iterations=1", "eval.every=0", "eval.before=false", "warmup=none"]
    train(compose(fast), run)
    (run / "wandb" / "offline-run-old").mkdir(parents=True)
    old_lines = (run / "train.log").read_text().splitlines()
    assert sum("run directory:" in line for line in old_lines) == 1
    handler = None
    if hydra_handler:
        handler = logging.FileHandler(run / "train.log", mode="a", encoding="utf-8")
        logging.getLogger().addHandler(handler)
    try:
        train(compose(fast + ["overwrite=true", "seed=1"]), run)
        logging.getLogger("reasonzoo").warning("a line after the run")
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    text = (run / "train.log").read_text()
    assert "\0" not in text
    lines = text.splitlines()
    assert sum("run directory:" in line for line in lines) == 1, text
    assert not set(old_lines) & set(lines)
    assert "run directory:" in lines[0]
    assert "run finished" in lines[-1 - hydra_handler] and ("a line after the run" in lines[-1]) == hydra_handler
    assert not (run / "wandb").exists()
