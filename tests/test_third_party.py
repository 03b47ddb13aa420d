"""A third-party plugin package (examples/reasonzoo-hardfirst), installed into a temporary site,
is listed by `reasonzoo plugins` and used by `reasonzoo-train sampler=hard_first`."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reasonzoo-hardfirst"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site), str(EXAMPLE)],
                   check=True, capture_output=True, timeout=300)
    return site


def run(args, site, **kw):
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, **kw)


def test_listed_with_package_and_version(site):
    out = run(["reasonzoo", "plugins"], site)
    assert out.returncode == 0, out.stderr
    row = next(l.split() for l in out.stdout.splitlines() if "hard_first" in l)
    assert row[:4] == ["sampler", "hard_first", "reasonzoo-hardfirst", "0.2.0"]


def test_used_by_train_with_its_own_conf(site, tmp_path, tiny_overrides):
    out = run(["reasonzoo-train", "sampler=hard_first", "sampler.power=3", "iterations=1", f"hydra.run.dir={tmp_path}/run", *[a for a in tiny_overrides if not a.startswith("iterations=")]], site)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    cfg = yaml.safe_load((tmp_path / "run" / "reasonzoo_config.yaml").read_text())
    assert cfg["sampler"] == {"name": "hard_first", "power": 3}
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 2


def test_its_config_is_validated(site, tmp_path):
    out = run(["reasonzoo", "config", "sampler=hard_first", "+sampler.powr=3"], site)
    assert out.returncode == 2
    assert "sampler.powr: unknown key for plugin sampler/hard_first (HardFirstConfig); allowed keys: power" in out.stderr
