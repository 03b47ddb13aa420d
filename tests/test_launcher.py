"""The launcher group: launcher=local with 2 trainer ranks (forked gloo followers driven by rank 0,
reasonzoo.distributed) trains as one rank does, resumes on another world size, names a rank that
dies; launcher=ray without Ray is one line before any work.

Tolerance: with ``train.microbatches=2`` one rank and two ranks split each minibatch the same way;
the ranks' gradient sum is ordered differently (float32), so the weights differ by ~1e-7 after an
update and the metrics agree to 1e-4 (rollouts, rewards and lengths exactly, unless a sampled token
sits on a rounding boundary: not at this seed).
"""
import json
import multiprocessing
import os
import signal
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from reasonzoo.config import validate
from reasonzoo.registry import PluginError
from reasonzoo.testing import assert_same_run
from reasonzoo.train import compose
from reasonzoo.trainer import CONFIG_FILE, train



def _records(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _run(tmp_path, name, tiny_overrides, *extra):
    cfg = compose([*tiny_overrides, "iterations=3", "train.microbatches=2", *extra])
    train(cfg, tmp_path / name)
    return _records(tmp_path / name)


def test_two_local_trainer_ranks_train_as_one(tmp_path, tiny_overrides):
    one = _run(tmp_path, "one", tiny_overrides)
    two = _run(tmp_path, "two", tiny_overrides, "launcher.trainer_ranks=2")
    assert [r.get("train/ranks") for r in two] == [None, 2.0, 2.0, 2.0]
    assert_same_run(one, two)
    assert not multiprocessing.active_children()  # the follower left when told to stop


def test_resume_on_another_world_size(tmp_path, tiny_overrides, monkeypatch):
    """A run on 2 ranks killed after iteration 1 resumes on 1 rank (launcher.* may change on
    resume) and ends as the 1-rank run from the start does."""
    from reasonzoo import train as train_mod

    one = _run(tmp_path, "one", tiny_overrides)
    cfg = compose([*tiny_overrides, "iterations=1", "train.microbatches=2", "launcher.trainer_ranks=2"])
    train(cfg, tmp_path / "two")
    saved = OmegaConf.load(tmp_path / "two" / CONFIG_FILE)  # as if killed after iteration 1 of 3
    saved.iterations = 3
    (tmp_path / "two" / CONFIG_FILE).write_text(OmegaConf.to_yaml(saved))
    (tmp_path / "two" / "summary.json").unlink()
    monkeypatch.setattr(sys, "argv", ["reasonzoo-train", f"resume={tmp_path / 'two'}", "launcher.trainer_ranks=1"])
    train_mod.main()
    assert_same_run(one, _records(tmp_path / "two"))
    assert OmegaConf.load(tmp_path / "two" / CONFIG_FILE).launcher.trainer_ranks == 2  # the saved config is the run's


def test_resume_refuses_other_overrides_naming_them(tmp_path, tiny_overrides):
    cfg = compose([*tiny_overrides, "iterations=0"])
    train(cfg, tmp_path / "r")
    res = subprocess.run(["reasonzoo-train", f"resume={tmp_path / 'r'}", "loss.tau=0.5", "launcher.trainer_ranks=2"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "['loss.tau=0.5']" in res.stderr and "launcher" in res.stderr and "Traceback" not in res.stderr


def test_a_trainer_rank_that_dies_is_named(tmp_path, tiny_overrides, monkeypatch):
    """Rank 1 killed (SIGKILL) before the second update: the run stops naming rank 1, its pid and
    the signal, with the resume hint; the checkpoint of iteration 1 is kept."""
    from reasonzoo import trainer as trainer_mod

    real = trainer_mod.update

    def update(ctx, batch, rc):
        if ctx.iteration == 2:
            for p in multiprocessing.active_children():
                if p.name == "reasonzoo-rank1":
                    os.kill(p.pid, signal.SIGKILL)
                    p.join(timeout=30)
        return real(ctx, batch, rc)

    monkeypatch.setattr(trainer_mod, "update", update)
    cfg = compose([*tiny_overrides, "iterations=3", "launcher.trainer_ranks=2"])
    with pytest.raises(RuntimeError, match=r"trainer rank 1 \(pid \d+\) died: killed by signal 9 \(resume with resume="):
        train(cfg, tmp_path / "r")
    assert (tmp_path / "r" / "checkpoints" / "iter_000001").is_dir()
    assert not multiprocessing.active_children()


def test_launcher_ray_without_ray_is_one_line_before_any_work(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(PluginError, match=r"^launcher=ray needs Ray, which is not installed: pip install -e '\.\[ray\]'$"):
        validate(compose(["launcher=ray"]))


def test_launcher_ranges_and_choices():
    with pytest.raises(PluginError, match="launcher.trainer_ranks"):
        validate(compose(["launcher.trainer_ranks=0"]))
    with pytest.raises(PluginError, match="launcher.backend='mpi'"):
        from reasonzoo.registry import build_plugins

        build_plugins(compose(["launcher.backend=mpi"]))


def test_rz_place_of_the_default_config_is_one_local_process(make_ctx):
    from reasonzoo.launch import LocalPlacement, Placement
    from reasonzoo.registry import build_plugins, make_manager

    ctx = make_ctx()
    ctx.hook = make_manager(build_plugins(ctx.cfg)).hook
    placement = ctx.hook.rz_place(ctx=ctx)
    assert isinstance(placement, LocalPlacement) and isinstance(placement, Placement)
    assert placement.start_trainer(ctx) is None and placement.metrics() == {}
    placement.close()
