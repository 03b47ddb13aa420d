"""Weights & Biases logging, offline by default: the run is written under ``<run dir>/wandb`` and
needs no network or account (``wandb sync`` uploads it later). ``mode: online`` logs live when
the user has configured wandb.

The wandb run id is made once per run and kept in ``<run dir>/wandb/reasonzoo_run_id``: a
``resume=`` continues the same wandb run, while a new run gets a new id even in a directory used
before (``overwrite=true`` removes ``wandb/``) or at the same path on another machine (an id
derived from the path merged all of those into one wandb run).
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import OmegaConf

from reasonzoo import hookimpl, plugin

MODES = ("offline", "online", "disabled")
ID_FILE = "reasonzoo_run_id"


def run_id(run_dir: Path) -> str:
    """This run's wandb id: read from ``run_dir/wandb/reasonzoo_run_id``, or made (random) and
    written there the first time."""
    path = Path(run_dir) / "wandb" / ID_FILE
    try:
        saved = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        saved = ""
    if saved:
        return saved
    new = "rz-" + uuid.uuid4().hex[:16]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new + "\n", encoding="utf-8")
    return new


@dataclass
class WandbConfig:
    mode: str = "offline"  #: offline (default, no network), online or disabled
    project: str = "reasonzoo"  #: wandb project
    entity: Optional[str] = None  #: wandb entity (team or user)
    tags: list[str] = field(default_factory=list)  #: run tags


@plugin("logger", "wandb", WandbConfig)
class Wandb:
    """Weights & Biases run (offline unless configured)."""

    def __init__(self, cfg: WandbConfig):
        if cfg.mode not in MODES:
            raise ValueError(f"logger.mode={cfg.mode!r}: allowed values are {', '.join(MODES)}")
        self.cfg = cfg
        self.run = None

    @hookimpl
    def rz_run_start(self, ctx):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            mode=self.cfg.mode, project=self.cfg.project, entity=self.cfg.entity, tags=list(self.cfg.tags),
            dir=str(ctx.run_dir), name=ctx.run_dir.name, config=OmegaConf.to_container(ctx.cfg, resolve=True),
            resume="allow", id=run_id(ctx.run_dir),
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    @hookimpl
    def rz_log_metrics(self, ctx, metrics, step):
        if self.run is not None:
            self.run.log(metrics, step=step)

    @hookimpl
    def rz_run_end(self, ctx, summary):
        if self.run is not None:
            self.run.finish(exit_code=1 if "error" in summary else 0)
            self.run = None
