"""setup.cfg lists every subpackage (``find:`` cannot add the reasonzoo prefix)."""
import configparser
from pathlib import Path

import reasonzoo

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


def test_installed_package_is_the_checkout_mapping():
    assert Path(reasonzoo.__file__).parent.name == "core" or Path(reasonzoo.__file__).parent.name == "reasonzoo"
    import importlib.util

    for generic in ("core", "plugins", "conf"):
        spec = importlib.util.find_spec(generic)
        assert spec is None or ROOT.as_posix() not in str(spec.origin or ""), f"a top-level {generic!r} module is importable"
