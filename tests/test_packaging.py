"""setup.cfg lists every subpackage (``find:`` cannot add the reasonzoo prefix)."""
import configparser
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
MAPPING = {"core": "reasonzoo", "plugins": "reasonzoo.plugins", "conf": "reasonzoo.conf"}


def test_every_package_folder_is_listed():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}
    on_disk = set()
    for folder, name in MAPPING.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            on_disk.add(".".join([name, *rel.parts]))
    assert listed == on_disk


def test_no_generic_top_level_modules_installed(tmp_path):
    """Outside the checkout, `reasonzoo` imports and `core` / `plugins` / `conf` do not."""
    import subprocess
    import sys

    code = ("import importlib.util as u, reasonzoo, reasonzoo.plugins, reasonzoo.conf; "
            "print([n for n in ('core', 'plugins', 'conf') if u.find_spec(n)])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
