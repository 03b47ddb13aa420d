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


def test_hooks_in_loop_order():
    """hookspecs.py lists hooks in the order the trainer calls them."""
    src = (Path(inspect.getfile(hookspecs)).parent / "trainer.py").read_text()
    order = [src.find(f"hook.{f.__name__}(") for f in SPECS]
    called = [(i, f.__name__) for i, f in zip(order, SPECS) if i >= 0]
    by_position = [name for _, name in sorted(called)]
    names = [n for _, n in called]
    # rz_load_state is called before the iteration loop like rz_warmup: both sit after rz_run_start
    assert [n for n in by_position if n not in ("rz_load_state", "rz_warmup")] == [n for n in names if n not in ("rz_load_state", "rz_warmup")]


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
