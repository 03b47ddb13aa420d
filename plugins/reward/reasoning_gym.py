"""Scores with reasoning-gym's own per-dataset scorer (for ``task=reasoning_gym``; reasoning-gym,
Stojanovski et al. 2025, arXiv 2505.24760: procedurally generated tasks with verifiers).

reasoning-gym gives partial credit when the right answer appears inside a longer one; the reward
is 1 only when the scorer returns ``>= threshold`` (default 1.0, a 0/1 reward as in k1.5), else 0.

Implementation details:

- The scorer of a dataset (``reasoning_gym.get_score_answer_fn``, which constructs the whole
  dataset object: ~57 ms for one generator) is built **once per dataset name** per worker process
  (:func:`scorer`) and reused for every rollout; it is looked up by the entry's
  ``metadata["source_dataset"]``, so composite datasets score each entry with its own generator.
- Every rollout is scored in a worker process under ``timeout_s``
  (:class:`reasonzoo.rewards.WorkerPool`; some scorers run sympy); a time-out scores 0 and counts
  in ``reward/timeouts``. Truncated responses: ``truncated`` (:class:`reasonzoo.rewards.RewardConfig`).
- ``info["extracted"]`` is the extracted answer, stripped; ``info["scorer"]`` the raw score.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from reasonzoo import plugin
from reasonzoo.rewards import TimedRewardConfig, WorkerReward, extract

_SCORERS: dict[str, Callable[[Any, dict], float]] = {}


@dataclass
class ReasoningGymRewardConfig(TimedRewardConfig):
    pattern: Optional[str] = None  #: regex whose first group is the answer; None = whole response
    threshold: float = 1.0  #: scorer value that counts as correct


def build_scorer(name: str) -> Callable[[Any, dict], float]:
    """reasoning-gym's ``score_answer(answer, entry)`` of dataset ``name`` (expensive: builds the dataset)."""
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(name)


def scorer(name: str) -> Callable[[Any, dict], float]:
    """The scorer of dataset ``name``, built on first use in this process and cached."""
    fn = _SCORERS.get(name)
    if fn is None:
        fn = _SCORERS[name] = build_scorer(name)
    return fn


def score_entry(entry: dict, text: str, pattern: str | None, threshold: float) -> dict:
    """Score one response on a reasoning-gym entry (runs in a worker process).

    :returns: ``{"score": 0.0 | 1.0, "correct": bool, "info": {"extracted": str | None, "scorer": float}}``.
    """
    answer = extract(pattern, text)
    value = float(scorer(entry["metadata"]["source_dataset"])(answer, entry)) if answer is not None else 0.0
    ok = value >= threshold
    return {"score": float(ok), "correct": ok, "info": {"extracted": answer, "scorer": value}}


@plugin("reward", "reasoning_gym", ReasoningGymRewardConfig)
class ReasoningGymReward(WorkerReward):
    """reasoning-gym's scorer, thresholded to 0/1."""

    problem_fields_required = ("meta.entry",)  #: checked against the task at config validation
    preload = ("reasoning_gym",)

    def call(self, rollout):
        entry = rollout.problem.meta.get("entry")
        if entry is None:
            raise ValueError(f"problem {rollout.problem.uid!r} has no reasoning-gym entry; use reward=reasoning_gym only with task=reasoning_gym")
        return score_entry, (entry, rollout.text, self.cfg.pattern, self.cfg.threshold)
