"""Every numeric option has a declared range checked at validation (issue 9 item 6); combinations
that cannot work are refused there too, naming both sides; the range metadata, the checks and the
YAML comments have one source."""
import dataclasses
import re
from dataclasses import dataclass
from importlib.resources import files

import pytest

from reasonzoo.config import RunConfig, validate
from reasonzoo.ranges import Range, check_ranges, field_range, ranged
from reasonzoo.registry import PluginError, PluginInfo, validate_plugin_config
from reasonzoo.train import compose

# (override, the one line's expected start): each was accepted silently or failed late before
BAD = [
    ("train.minibatch_size=-1", r"train.minibatch_size=-1: out of range; allowed: >= 1"),
    ("train.minibatch_size=0", r"train.minibatch_size=0: out of range; allowed: >= 1"),
    ("generation.temperature=0", r"generation.temperature=0.0: out of range; allowed: > 0"),
    ("generation.temperature=-1", r"generation.temperature=-1.0: out of range; allowed: > 0"),
    ("generation.top_p=1.5", r"generation.top_p=1.5: out of range; allowed: \(0, 1\]"),
    ("generation.top_p=0", r"generation.top_p=0.0: out of range; allowed: \(0, 1\]"),
    ("generation.max_new_tokens=0", r"generation.max_new_tokens=0: out of range; allowed: >= 1"),
    ("iterations=-3", r"iterations=-3: out of range; allowed: >= 0"),
    ("eval.every=-1", r"eval.every=-1: out of range; allowed: >= 0"),
    ("prompts_per_iteration=-4", r"prompts_per_iteration=-4: out of range; allowed: >= 1"),
    ("samples_per_prompt=0", r"samples_per_prompt=0: out of range; allowed: >= 1"),
    ("checkpoint.every=0", r"checkpoint.every=0: out of range; allowed: >= 1"),
    ("eval.batch_size=0", r"eval.batch_size=0: out of range; allowed: >= 1"),
    ("train.betas=[0.9,1.0]", r"train.betas\[1\]=1.0: out of range; allowed: \[0, 1\)"),
    ("train.lr=nan", r"train.lr=nan: out of range; allowed: > 0"),
    ("train.max_grad_norm=nan", r"train.max_grad_norm=nan: not a finite number"),
    ("loss.tau=nan", r"loss.tau=nan: not a finite number \(plugin loss/k15\)"),
]


@pytest.mark.parametrize("override,message", BAD, ids=[b[0] for b in BAD])
def test_out_of_range_value_is_refused_naming_key_and_range(override, message):
    with pytest.raises(PluginError, match="^" + message):
        validate(compose([override]))


def test_group_baseline_loss_refuses_one_sample_per_prompt():
    with pytest.raises(PluginError, match=r"^samples_per_prompt=1: loss/k15 needs at least 2 samples per prompt"):
        validate(compose(["samples_per_prompt=1"]))
    assert validate(compose(["samples_per_prompt=2"])).samples_per_prompt == 2


def test_reward_needing_fields_the_task_lacks_names_both():
    with pytest.raises(PluginError, match=r"^reward=code needs problem field\(s\) meta.tests, which task=modarith does not provide"):
        validate(compose(["reward=code"]))
    with pytest.raises(PluginError, match=r"reward=reasoning_gym needs .*meta.entry.*task=modarith"):
        validate(compose(["reward=reasoning_gym"]))
    validate(compose(["task=synth_code", "reward=code"]))  # a task with tests is fine


def test_plugin_config_ranges_use_the_same_mechanism():
    @dataclass
    class ToyConfig:
        clip: float = ranged(0.2, ge=0, lt=1)  #: a clip range

    class Toy:
        pass

    info = PluginInfo("loss", "toy", Toy, ToyConfig, __name__, "reasonzoo", "0")
    assert validate_plugin_config(info, {"name": "toy", "clip": 0.5}).clip == 0.5
    with pytest.raises(PluginError, match=r"^loss.clip=1.5: out of range; allowed: \[0, 1\) \(plugin loss/toy\)"):
        validate_plugin_config(info, {"name": "toy", "clip": 1.5})


def test_range_text_and_membership():
    assert str(Range(ge=1)) == ">= 1" and str(Range(gt=0)) == "> 0" and str(Range(gt=0, le=1)) == "(0, 1]"
    assert str(Range(ge=0, lt=1)) == "[0, 1)" and str(Range(le=5)) == "<= 5"
    assert 1 in Range(ge=1) and 0 not in Range(ge=1) and float("nan") not in Range(ge=0)
    check_ranges(RunConfig())  # the defaults are in range


def _ranged_fields(cls, prefix=""):
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
            yield from _ranged_fields(f.default_factory, f"{prefix}{f.name}.")
        elif field_range(f) is not None:
            yield prefix, f.name, field_range(f)


def test_config_yaml_comments_state_the_declared_ranges():
    """conf/config.yaml gives each trainer option's range in brackets, as declared on its field."""
    text = files("reasonzoo.conf").joinpath("config.yaml").read_text()
    for prefix, name, rng in _ranged_fields(RunConfig):
        section = text if not prefix else text.split(f"\n{prefix[:-1]}:\n", 1)[1].split("\n\n", 1)[0]
        line = re.search(rf"^\s*{name}:.*$", section, re.M)
        assert line, f"{prefix}{name} missing from config.yaml"
        assert f"[{rng}" in line.group(0), f"{prefix}{name}: comment should state its range [{rng}]: {line.group(0)}"


def test_more_prompts_than_the_task_has_is_refused_before_warmup(tmp_path, tiny_overrides):
    """prompts_per_iteration=100000 ran past 400 s without a word; now refused at set-up (after the
    problems are loaded, before the warm-up), naming both numbers, with nothing written."""
    from reasonzoo.trainer import train

    with pytest.raises(PluginError, match=r"^prompts_per_iteration=100000 exceeds the \d+ training problems of task=modarith"):
        train(compose(tiny_overrides + ["prompts_per_iteration=100000", "warmup.steps=100000"]), tmp_path / "run")
    assert not [p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith(".")]


@pytest.mark.parametrize("override,key", [("budget=5", "budget"), ("train=0.1", "train"), ("eval=null", "eval")])
def test_a_value_for_a_group_of_keys_names_the_group_and_its_keys(override, key):
    """budget=5 used to fail with ': Merge error: int is not a subclass of BudgetConfig' (no key)."""
    from reasonzoo.config import validate

    with pytest.raises(PluginError, match=rf"^{key}=.*: {key} is a group of keys, not a value; set one of its keys \({key}\.\w+"):
        validate(compose([override]))
