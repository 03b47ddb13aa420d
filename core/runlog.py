"""What a run tells the person watching it: one plain line per iteration (and per held-out
evaluation) on the console and in ``<run dir>/train.log``, the run directory at start and end, and
progress bars only on a terminal (redirected output gets no carriage-return bar updates).

The lines go through the ``reasonzoo`` logger. ``reasonzoo-train`` (Hydra) already logs INFO to the
console and to ``<run dir>/train.log``; :func:`log_to_run_dir` adds the file where nothing writes
it yet (a resumed run, a programmatic :func:`reasonzoo.trainer.train` call).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

log = logging.getLogger("reasonzoo")
LOG_FILE = "train.log"


def progress_bars(enabled: bool) -> bool:
    """Whether to draw progress bars: ``progress`` is on and stderr is a terminal."""
    return bool(enabled) and sys.stderr.isatty()


@contextlib.contextmanager
def log_to_run_dir(run_dir: Path) -> Iterator[Path]:
    """While active, INFO lines of the ``reasonzoo`` logger also go to ``run_dir/train.log``
    (appended) unless a handler already writes that file."""
    path = (Path(run_dir) / LOG_FILE).resolve()
    handlers = [h for lg in (logging.getLogger(), log) for h in lg.handlers]
    present = any(isinstance(h, logging.FileHandler) and os.path.abspath(h.baseFilename) == str(path) for h in handlers)
    old_level = log.level
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    handler = None
    if not present:
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        handler.setLevel(logging.INFO)
        log.addHandler(handler)
    try:
        yield path
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        log.setLevel(old_level)


def _fmt(record: Mapping[str, Any], key: str, spec: str) -> str | None:
    v = record.get(key)
    return None if v is None else format(v, spec)


def iteration_line(record: Mapping[str, Any], iterations: int) -> str:
    """One plain line for an iteration's metrics record, e.g.
    ``iteration 12/60: reward 0.562 accuracy 0.562 length 23.1 truncated 0.000 loss 0.0123 |
    1.18 s (rollout 0.52, reward 0.01, update 0.61) | generated 3140 tokens, 14 s | eval accuracy 0.812
    length 37.6`` (``generated``: cumulative tokens of training rollouts and RL seconds so far)."""
    it = record["iteration"]
    parts = []
    for label, key, spec in (("reward", "reward/total_mean", ".3f"), ("accuracy", "reward/accuracy", ".3f"),
                             ("length", "response/mean_length", ".1f"), ("truncated", "response/finish_length", ".3f"),
                             ("loss", "loss/total", ".4g")):
        v = _fmt(record, key, spec)
        if v is not None:
            parts.append(f"{label} {v}")
    if not parts and "response/groups" in record:
        parts.append(f"groups {record['response/groups']}")
    line = f"iteration {it}/{iterations}: " + " ".join(parts)
    if "time/iteration" in record:
        line += (f" | {record['time/iteration']:.2f} s (rollout {record.get('time/rollout', 0):.2f}, "
                 f"reward {record.get('time/reward', 0):.2f}, update {record.get('time/update', 0):.2f})")
    if "tokens/generated" in record:
        line += f" | generated {record['tokens/generated']} tokens, {record.get('time/elapsed', 0):.0f} s"
    return line + (" | " + eval_line(record) if "eval/accuracy" in record else "")


def eval_line(record: Mapping[str, Any]) -> str:
    """``eval accuracy 0.812 length 37.6 truncated 0.010 (d2 0.950, d3 0.900, ...)``."""
    per_d = [(k.rsplit("/", 1)[-1], v) for k, v in record.items() if k.startswith("eval/accuracy/")]
    line = f"eval accuracy {record['eval/accuracy']:.3f} length {record.get('eval/mean_length', 0):.1f}"
    if "eval/truncated" in record:
        line += f" truncated {record['eval/truncated']:.3f}"
    if per_d:
        line += " (" + ", ".join(f"{d} {v:.3f}" for d, v in per_d) + ")"
    return line
