"""``reasonzoo-train``: the Hydra application that composes a recipe and runs it.

    reasonzoo-train                                   # the k1.5 recipe on the default task
    reasonzoo-train sampler=prioritized length_penalty=none
    reasonzoo-train -m sampler=uniform,curriculum seed=1,2
    reasonzoo-train resume=outputs/2026-11-29/12-00-00  # continue a run from its last checkpoint

Config groups of third-party plugin packages (``pkg://<package>.conf``) are added to Hydra's
search path automatically.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .registry import PluginError, conf_search_paths

log = logging.getLogger("reasonzoo")


def _searchpath_override(args: list[str]) -> list[str]:
    paths = conf_search_paths()
    if not paths or any(a.startswith("hydra.searchpath=") for a in args):
        return []
    return [f"hydra.searchpath=[{','.join(paths)}]"]


def compose(overrides: list[str] = ()) -> DictConfig:
    """The composed config for ``overrides`` (what ``reasonzoo-train`` would run)."""
    from hydra import compose as hcompose, initialize_config_module

    overrides = list(overrides)
    with initialize_config_module(config_module="reasonzoo.conf", version_base="1.3"):
        return hcompose(config_name="config", overrides=overrides + _searchpath_override(overrides))


@hydra.main(config_path="pkg://reasonzoo.conf", config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from .trainer import train

    _run(train, cfg, Path(HydraConfig.get().runtime.output_dir))


def _run(train, cfg: DictConfig, run_dir: Path) -> None:
    try:
        train(cfg, run_dir)
    except PluginError as exc:  # a config mistake: one clear line, no traceback
        print(f"reasonzoo: config error: {exc}", file=sys.stderr)
        sys.exit(2)


def _resume(run_dir: str, extra: list[str]) -> None:
    from .trainer import CONFIG_FILE, train

    path = Path(run_dir)
    saved = path / CONFIG_FILE
    if not saved.is_file():
        print(f"reasonzoo: resume={run_dir}: not a reasonzoo run directory ({CONFIG_FILE} missing)", file=sys.stderr)
        sys.exit(2)
    if extra:
        print(f"reasonzoo: resume takes the run's saved config; drop the overrides {extra}", file=sys.stderr)
        sys.exit(2)
    cfg = OmegaConf.load(saved)
    cfg.resume = str(path)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    _run(train, cfg, path)


def main() -> None:
    args = sys.argv[1:]
    resume = [a for a in args if a.startswith("resume=")]
    if resume and resume[0].split("=", 1)[1] not in ("", "null"):
        _resume(resume[0].split("=", 1)[1], [a for a in args if a not in resume])
        return
    sys.argv = [sys.argv[0]] + args + _searchpath_override(args)
    _app()


if __name__ == "__main__":
    main()
