"""Hydra composition and validation: every config composes, overrides swap plugins, and bad
input fails before any work with a message naming the culprit."""
import importlib.util
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from reasonzoo.config import validate
from reasonzoo.registry import HOOK_POINTS, PluginError, build_plugins, catalogue, make_manager
from reasonzoo.train import compose

CAT = catalogue()


def test_default_is_the_k15_recipe():
    cfg = compose([])
    assert (cfg.loss.name, cfg.length_penalty.name, cfg.sampler.name, cfg.warmup.name) == ("k15", "k15", "curriculum", "sft")
    rc = validate(cfg)
    assert rc.samples_per_prompt == 8


@pytest.mark.parametrize("group,name", [(g, n) for g in sorted(CAT) for n in sorted(CAT[g])])
def test_every_plugin_config_composes_and_validates(group, name):
    extra = {"task/jsonl": ["task.train_path=x.jsonl"], "task/code_jsonl": ["task.train_path=x.jsonl", "reward=code"],
             "distiller/merge": ["distiller.short_model=somewhere"], "reward/code": ["task=synth_code"],
             "reward/reasoning_gym": ["task=reasoning_gym"]}
    cfg = compose([f"{group}={name}", *extra.get(f"{group}/{name}", [])])
    assert cfg[group].name == name
    if f"{group}/{name}" == "launcher/ray" and importlib.util.find_spec("ray") is None:  # an extra: refused in one line
        with pytest.raises(PluginError, match=r"^launcher=ray needs Ray, which is not installed: pip install -e '\.\[ray\]'$"):
            validate(cfg)
        return
    validate(cfg)
    plugins = build_plugins(cfg, CAT)
    make_manager(plugins)  # no two plugins claim one exclusive hook


def test_override_swaps_one_component():
    cfg = compose(["sampler=prioritized", "length_penalty=none"])
    assert cfg.sampler.name == "prioritized" and cfg.length_penalty.name == "none" and cfg.loss.name == "k15"


def test_misspelt_plugin_key_names_key_and_plugin():
    cfg = compose(["+loss.taus=0.5"])
    with pytest.raises(PluginError, match=r"loss.taus: unknown key for plugin loss/k15 .*allowed keys: tau, baseline"):
        validate(cfg)


def test_bad_type_names_key():
    cfg = compose(["loss.tau=abc"])
    with pytest.raises(PluginError, match=r"loss.tau"):
        validate(cfg)


def test_misspelt_top_level_key():
    cfg = compose([])
    OmegaConf.set_struct(cfg, False)
    cfg.train.lrr = 1.0
    with pytest.raises(PluginError, match=r"train.lrr: unknown config key; allowed keys: lr,"):
        validate(cfg)


def test_unknown_plugin_lists_available():
    cfg = compose([])
    OmegaConf.set_struct(cfg, False)
    cfg.sampler.name = "nope"
    with pytest.raises(PluginError, match=r"sampler=nope: unknown plugin; available sampler plugins: curriculum, prioritized, uniform"):
        validate(cfg)


def test_cli_unknown_group_option_fails_before_work(tmp_path):
    r = subprocess.run([sys.executable, "-m", "reasonzoo.train", "sampler=nope", f"hydra.run.dir={tmp_path}/run"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "reasonzoo: config error: sampler=nope: unknown plugin; available sampler plugins:" in r.stderr and "prioritized" in r.stderr
    assert not (tmp_path / "run").exists()


def test_cli_bad_key_is_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "reasonzoo.train", "+loss.taus=1", f"hydra.run.dir={tmp_path}/run"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "reasonzoo: config error: loss.taus: unknown key for plugin loss/k15" in r.stderr
    assert "Traceback" not in r.stderr


def test_exclusive_hook_conflict_is_refused():
    from reasonzoo.plugins.loss.k15 import K15Loss, K15LossConfig

    with pytest.raises(PluginError, match=r"exclusive hook rz_loss is implemented by 2 active plugins: a, b"):
        make_manager({"a": K15Loss(K15LossConfig()), "b": K15Loss(K15LossConfig())})


def test_misspelt_hook_is_caught():
    from reasonzoo import hookimpl

    class Typo:
        @hookimpl
        def rz_sampel_problems(self, ctx):
            return []

    with pytest.raises(PluginError, match="rz_sampel_problems"):
        make_manager({"typo": Typo()})


def test_trace_env_var_prints_hook_calls(tmp_path, monkeypatch, capsys):
    from reasonzoo.plugins.length_penalty.none import NoLengthPenalty

    monkeypatch.setenv("REASONZOO_TRACE", "1")
    pm = make_manager({"length_penalty/none": NoLengthPenalty(None)})
    pm.hook.rz_length_penalty(ctx=None, groups=[])
    assert "rz_length_penalty" in capsys.readouterr().err


def test_cli_plugins_and_config():
    out = subprocess.run(["reasonzoo", "plugins"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    rows = [l.split() for l in out.stdout.splitlines()[1:]]
    assert ["loss", "k15", "reasonzoo"] in [r[:3] for r in rows]
    assert len(rows) == sum(len(v) for v in CAT.values())
    cfgout = subprocess.run(["reasonzoo", "config", "sampler=prioritized"], capture_output=True, text=True, timeout=120)
    assert cfgout.returncode == 0 and "name: prioritized" in cfgout.stdout
    bad = subprocess.run(["reasonzoo", "config", "+loss.taus=1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "loss.taus" in bad.stderr


def test_hook_points_all_have_conf_groups():
    from importlib.resources import files

    conf = files("reasonzoo.conf")
    for hp in HOOK_POINTS:
        assert conf.joinpath(hp).is_dir(), hp
