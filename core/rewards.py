"""Helpers for reward plugins: per-sample scoring where one failure never ends the run."""
from __future__ import annotations

import logging
import re
from typing import Callable, Sequence

from .types import Rollout, RewardResult, RolloutGroup

log = logging.getLogger("reasonzoo.reward")


def score_groups(groups: Sequence[RolloutGroup], fn: Callable[[Rollout], RewardResult], plugin: str) -> list[list[RewardResult]]:
    """Apply ``fn`` to every rollout. An exception is logged (plugin name, problem uid, error)
    and scored 0 / not correct with the error in ``info["error"]``."""
    out = []
    for g in groups:
        row = []
        for r in g.rollouts:
            try:
                row.append(fn(r))
            except Exception as exc:  # noqa: BLE001 - a reward failure costs one sample, never the run
                log.warning("reward %s failed on problem %r: %r", plugin, g.problem.uid, exc)
                row.append(RewardResult(score=0.0, correct=False, info={"error": repr(exc)}))
        out.append(row)
    return out


def extract(pattern: str | None, text: str) -> str | None:
    """The last match of ``pattern``'s first group in ``text`` (whole text when ``pattern`` is None)."""
    if pattern is None:
        return text.strip()
    found = re.findall(pattern, text)
    if not found:
        return None
    last = found[-1]
    return (last[0] if isinstance(last, tuple) else last).strip()
