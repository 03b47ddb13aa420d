"""Meta-tests: every hook is documented and tested; every plugin has a conf file named after it,
a docstring and a test."""
import inspect
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from reasonzoo import hookspecs
from reasonzoo.registry import HOOK_POINTS, catalogue, exclusive_hooks

TESTS = Path(__file__).parent
TEST_TEXT = "\n".join(p.read_text() for p in TESTS.rglob("test_*.py") if p.name != "test_meta.py")
SPECS = [f for n, f in vars(hookspecs).items() if n.startswith("rz_") and inspect.isfunction(f)]
CAT = catalogue()


@pytest.mark.parametrize("spec", SPECS, ids=lambda f: f.__name__)
def test_hook_documented(spec):
    doc = inspect.getdoc(spec)
    assert doc, spec.__name__
    for arg in inspect.signature(spec).parameters:
        assert f":param {arg}:" in doc or f" {arg}:" in doc, f"{spec.__name__} does not document {arg}"
    assert ":returns:" in doc
    if spec.__name__ in exclusive_hooks():
        assert "Exclusive: stops at first non-None result." in doc
    else:
        assert "Additive" in doc


@pytest.mark.parametrize("spec", SPECS, ids=lambda f: f.__name__)
def test_hook_tested(spec):
    assert spec.__name__ in TEST_TEXT, f"no test mentions {spec.__name__}"


def test_hooks_in_loop_order(tmp_path, tiny_overrides, monkeypatch):
    """hookspecs.py lists hooks in the order a run calls them (observed on a real tiny run)."""
    from reasonzoo import trainer
    from reasonzoo.train import compose

    calls = []
    real = trainer.make_manager

    def traced(plugins):
        pm = real(plugins)
        pm.add_hookcall_monitoring(lambda name, impls, kw: calls.append(name), lambda *a: None)
        return pm

    monkeypatch.setattr(trainer, "make_manager", traced)
    trainer.train(compose(tiny_overrides + ["iterations=2", "eval.every=0"]), tmp_path)
    rank = {f.__name__: i for i, f in enumerate(SPECS)}
    first = [i for i, n in enumerate(calls) if n == "rz_iteration_start"][0]
    second = [i for i, n in enumerate(calls) if n == "rz_iteration_start"][1]
    window = [n for i, n in enumerate(calls[first:second]) if i == 0 or n != calls[first + i - 1]]
    assert window == sorted(window, key=rank.get), window  # one iteration, in spec order
    assert set(window) >= {"rz_sample_problems", "rz_rollout", "rz_reward", "rz_length_penalty",
                           "rz_prepare_update", "rz_loss", "rz_iteration_end", "rz_log_metrics", "rz_checkpoint_state"}
    setup = list(dict.fromkeys(calls[:first]))
    core_setup = [n for n in setup if rank[n] < rank["rz_iteration_start"]]
    assert core_setup == sorted(core_setup, key=rank.get) == ["rz_load_problems", "rz_build_policy", "rz_place", "rz_build_engine",
                                                               "rz_trainable_parameters", "rz_run_start", "rz_warmup"]
    assert calls[-2:] == ["rz_distill", "rz_run_end"]


PLUGINS = [info for group in CAT.values() for info in group.values() if info.package == "reasonzoo"]


@pytest.mark.parametrize("info", PLUGINS, ids=lambda i: f"{i.hook_point}/{i.name}")
def test_plugin_has_conf_doc_and_test(info):
    conf = files("reasonzoo.conf").joinpath(info.hook_point, f"{info.name}.yaml")
    assert conf.is_file(), f"missing conf/{info.hook_point}/{info.name}.yaml"
    assert yaml.safe_load(conf.read_text())["name"] == info.name
    assert Path(inspect.getfile(info.cls)).stem == info.name, "plugin name = file stem"
    assert inspect.getdoc(info.cls) and inspect.getdoc(inspect.getmodule(info.cls)), "plugin and module docstrings"
    assert f"plugins.{info.hook_point}.{info.name} import" in TEST_TEXT or f"{info.hook_point}={info.name}" in TEST_TEXT, "no test"
    assert info.hook_point in HOOK_POINTS


@pytest.mark.parametrize("info", PLUGINS, ids=lambda i: f"{i.hook_point}/{i.name}")
def test_plugin_conf_lists_the_dataclass_keys_and_defaults(info):
    """conf/<group>/<name>.yaml and the plugin's config dataclass agree key for key, default for default."""
    from omegaconf import OmegaConf

    conf = yaml.safe_load(files("reasonzoo.conf").joinpath(info.hook_point, f"{info.name}.yaml").read_text()) or {}
    conf.pop("name")
    defaults = OmegaConf.to_container(OmegaConf.structured(info.config_cls))
    assert sorted(conf) == sorted(defaults), f"keys differ: {sorted(set(conf) ^ set(defaults))}"
    for key, value in defaults.items():
        assert conf[key] == (list(value) if isinstance(value, tuple) else value), f"{info.hook_point}.{key}: yaml {conf[key]!r} != dataclass {value!r}"


def test_ranged_plugin_fields_are_in_range_by_default():
    """Every built-in plugin config's defaults pass its own declared ranges (reasonzoo.ranges)."""
    from reasonzoo.ranges import check_ranges

    for info in PLUGINS:
        check_ranges(info.config_cls(), f"{info.hook_point}.")
