"""The console entry points: one-line errors with distinct exit codes (issue 8 item 16, issue 9
item 7), and a plugin listing that imports no heavy library (issue 8 item 17)."""
import os
import subprocess
import sys

import pytest
import torch

from reasonzoo.errors import EXIT_FAILURE, EXIT_USAGE, CheckpointError, RunDirError, report
from reasonzoo.registry import PluginError, catalogue, plugin_listing


def _run(args, cwd, env=None, timeout=180):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


class _Result:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


def _train_main(args, cwd, monkeypatch, capsys, env=None):
    """``reasonzoo-train <args>`` in this process (no interpreter start-up): exit code and stderr."""
    from reasonzoo import train as train_mod

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["reasonzoo-train", *args])
    monkeypatch.setattr(train_mod, "_created_dir", None)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    try:
        train_mod.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    return _Result(code, capsys.readouterr().err)


def _one_line_error(r, code, text):
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("reasonzoo:")]
    assert len(lines) == 1 and text in lines[0], r.stderr


def test_train_misspelt_key_without_plus_is_one_line_and_leaves_no_directory(tmp_path, monkeypatch, capsys):
    """`reasonzoo-train loss.taus=0.2` answered with Hydra's "+loss.taus" advice and left a directory."""
    r = _run(["reasonzoo-train", "loss.taus=0.2"], cwd=tmp_path)  # the installed console script
    _one_line_error(r, EXIT_USAGE, "config error: loss.taus: unknown key for plugin loss/k15 (K15LossConfig); allowed keys: tau,")
    assert list(tmp_path.iterdir()) == []  # no outputs/<date>/<time>
    r = _train_main(["train.minibatch_size=-1", f"hydra.run.dir={tmp_path}/run"], tmp_path, monkeypatch, capsys)
    _one_line_error(r, EXIT_USAGE, "train.minibatch_size=-1: out of range; allowed: >= 1")
    assert not (tmp_path / "run").exists()


def _cli_main(args, capsys):
    from reasonzoo.cli import main

    capsys.readouterr()
    return _Result(main(args), capsys.readouterr().err)


def test_config_command_errors_are_one_line(capsys):
    """`reasonzoo config loss.taus=0.2` and `reasonzoo config sampler=priortized` printed 60-line tracebacks."""
    r = _cli_main(["config", "loss.taus=0.2"], capsys)
    _one_line_error(r, EXIT_USAGE, "loss.taus: unknown key for plugin loss/k15")
    r = _cli_main(["config", "sampler=priortized"], capsys)
    _one_line_error(r, EXIT_USAGE, "sampler=priortized: unknown plugin; available sampler plugins: curriculum, prioritized, uniform")


def test_sweep_jobs_are_all_validated(tmp_path, monkeypatch, capsys):
    r = _train_main(["-m", "sampler=uniform,nope", "seed=1,2"], tmp_path, monkeypatch, capsys)
    _one_line_error(r, EXIT_USAGE, "sampler=nope: unknown plugin")
    assert list(tmp_path.iterdir()) == []


def test_plugins_listing_imports_no_torch_and_matches_the_catalogue():
    code = ("import sys; from reasonzoo.cli import main; rc = main(['plugins']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    r = _run([sys.executable, "-c", code], cwd=None)
    assert r.returncode == 0, r.stderr
    *rows, last = r.stdout.splitlines()
    assert last == "NO-TORCH 0"
    listed = sorted((c[0], c[1], c[2], c[3], tuple(f"rz_{h}" for h in c[4].split(",")) if len(c) > 4 else ())
                    for c in (line.split() for line in rows[1:]))
    cat = catalogue()
    expected = sorted((i.hook_point, i.name, i.package, i.version, tuple(i.hooks)) for g in cat.values() for i in g.values())
    assert listed == expected
    assert sorted((x.module, x.hooks) for x in plugin_listing()) == sorted(
        (i.module, tuple(i.hooks)) for g in cat.values() for i in g.values())


def test_report_exit_codes(capsys, monkeypatch):
    monkeypatch.delenv("REASONZOO_DEBUG", raising=False)
    assert report(PluginError("loss.taus: unknown key")) == EXIT_USAGE
    assert report(RunDirError("x is in use")) == EXIT_USAGE
    assert report(CheckpointError("/r/state.pt: truncated")) == EXIT_FAILURE
    assert report(FileNotFoundError(2, "No such file or directory", "/data/x.jsonl")) == EXIT_FAILURE
    err = capsys.readouterr().err.splitlines()
    assert err == ["reasonzoo: config error: loss.taus: unknown key", "reasonzoo: usage error: x is in use",
                   "reasonzoo: error: /r/state.pt: truncated",
                   "reasonzoo: error: [Errno 2] No such file or directory: '/data/x.jsonl'"]
    with pytest.raises(KeyError):  # a bug keeps its traceback
        report(KeyError("x"))
    monkeypatch.setenv("REASONZOO_DEBUG", "1")
    try:
        raise CheckpointError("/r/state.pt: truncated")
    except CheckpointError as exc:
        assert report(exc) == EXIT_FAILURE
    assert "Traceback" in capsys.readouterr().err


def test_missing_data_file_is_one_line_run_failure(tmp_path):
    r = _run(["reasonzoo-train", "task=jsonl", f"task.train_path={tmp_path}/missing.jsonl", "warmup=none", "logger=none"],
             cwd=tmp_path)  # a real process: Hydra runs, creates the directory, the failure removes it
    _one_line_error(r, EXIT_FAILURE, "missing.jsonl")
    assert list(tmp_path.iterdir()) == []  # the run directory it created was removed again


def _fake_run(run_dir, tiny_policy, overrides):
    """A run directory with a saved config and one checkpoint (as a killed run leaves it)."""
    from omegaconf import OmegaConf

    from reasonzoo.checkpoint import save_checkpoint
    from reasonzoo.train import compose
    from reasonzoo.trainer import CONFIG_FILE

    run_dir.mkdir()
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(compose(overrides)))
    opt = torch.optim.AdamW(tiny_policy.model.parameters())
    state = {"iteration": 1, "policy_version": 1, "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
             "plugins": {}}
    return save_checkpoint(run_dir, 1, tiny_policy, state)


def test_corrupt_checkpoint_names_the_file_without_traceback(tmp_path, tiny_policy, tiny_overrides, monkeypatch, capsys):
    """A corrupt checkpoint gave a deep traceback naming no file."""
    ckpt = _fake_run(tmp_path / "run", tiny_policy, tiny_overrides)
    state = ckpt / "state.pt"
    state.write_bytes(state.read_bytes()[:100])  # truncated
    r = _train_main([f"resume={tmp_path / 'run'}"], tmp_path, monkeypatch, capsys)
    _one_line_error(r, EXIT_FAILURE, f"{state}: truncated or corrupt checkpoint state")
    r = _train_main([f"resume={tmp_path / 'run'}"], tmp_path, monkeypatch, capsys, env={"REASONZOO_DEBUG": "1"})
    assert r.returncode == EXIT_FAILURE and "Traceback" in r.stderr
    weights = ckpt / "model" / "model.safetensors"
    from reasonzoo.checkpoint import load_model_weights

    weights.write_bytes(weights.read_bytes()[:64])
    with pytest.raises(CheckpointError, match=rf"{weights}: truncated or corrupt weights"):
        load_model_weights(ckpt / "model")


def test_non_utf8_saved_config_names_the_file(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "reasonzoo_config.yaml").write_bytes(b"seed: 0\nname: \xff\xfe\n")
    r = _train_main([f"resume={run}"], tmp_path, monkeypatch, capsys)
    _one_line_error(r, EXIT_FAILURE, f"{run / 'reasonzoo_config.yaml'}: not UTF-8 text")


def test_resume_of_a_non_run_is_a_usage_error(tmp_path, monkeypatch, capsys):
    r = _train_main([f"resume={tmp_path}"], tmp_path, monkeypatch, capsys)
    _one_line_error(r, EXIT_USAGE, "not a reasonzoo run directory")


def test_explicit_directory_of_a_live_run_is_refused_before_hydra(tmp_path, monkeypatch, capsys):
    from reasonzoo.rundir import RunLock

    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):
        r = _train_main(["logger=none", f"hydra.run.dir={run}"], tmp_path, monkeypatch, capsys)
    _one_line_error(r, EXIT_USAGE, f"{run} is in use by a live run (pid {os.getpid()}")
    assert sorted(p.name for p in run.iterdir()) == [".reasonzoo.lock"]  # Hydra wrote nothing


def test_weights_of_another_model_are_a_checkpoint_error(tmp_path, tiny_policy, qwen2_gqa_policy):
    from reasonzoo.checkpoint import load_into

    qwen2_gqa_policy.save(tmp_path / "other")
    with pytest.raises(CheckpointError, match=rf"weights at {tmp_path / 'other'}: tensor model\.\S+ has shape \(\d+, \d+\), "
                                              r"the model expects \(\d+, \d+\)"):
        load_into(tiny_policy.model, tmp_path / "other")


def test_non_utf8_jsonl_names_file_and_line(tmp_path):
    from reasonzoo.jsonl import iter_objects

    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "a", "answer": "1"}\n{"prompt": "\xff", "answer": "2"}\n')
    with pytest.raises(ValueError, match=rf"^{path}:2: not UTF-8 text \(byte 13 of the line\)"):
        list(iter_objects(path))


def test_sweep_expansion_for_validation():
    from reasonzoo.train import _sweep_jobs

    assert _sweep_jobs(["seed=range(1,3)", "sampler=uniform,curriculum", "iterations=2"]) == [
        ["seed=1", "sampler=uniform", "iterations=2"], ["seed=1", "sampler=curriculum", "iterations=2"],
        ["seed=2", "sampler=uniform", "iterations=2"], ["seed=2", "sampler=curriculum", "iterations=2"]]
    assert _sweep_jobs(["sampler=glob(*)", "seed=1,2"]) == [["seed=1"], ["seed=2"]]  # glob: left to Hydra


def test_unquoted_template_override_names_itself_and_how_to_quote(tmp_path, monkeypatch, capsys):
    """A shell drops the quotes of task.prompt_template='{prompt} ... \\boxed{}.', so Hydra gets
    `{prompt} ...` and said only "no viable alternative at input '{prompt}'" (naming no override)."""
    bad = "task.prompt_template={prompt} Put your final answer within \\boxed{}."
    quoted = "\"task.prompt_template='{prompt} Put your final answer within \\boxed{}.'\""
    for r in (_train_main(["task=jsonl", "task.train_path=x.jsonl", bad], tmp_path, monkeypatch, capsys),
              _train_main(["-m", "task=jsonl", "task.train_path=x.jsonl", bad], tmp_path, monkeypatch, capsys),
              _cli_main(["config", "task=jsonl", bad], capsys)):
        _one_line_error(r, EXIT_USAGE, f"{bad}: not a valid override (no viable alternative at input '{{prompt}}')")
        assert quoted in r.stderr
    assert list(tmp_path.iterdir()) == []
    cfg = _cli_main(["config", "task=jsonl", "task.train_path=x.jsonl", quoted.strip('"')], capsys)
    assert cfg.returncode == 0
