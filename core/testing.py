"""Helpers for testing loss, length-penalty and sampler plugins on hand-made batches (used by the
project's own tests; third-party plugin packages may use them too).

    from reasonzoo.testing import scored_group
    from reasonzoo.trainer import collate

    batch = collate([scored_group(policy, [1, 0], ["1+2=3;#3", "#7"])], policy.pad_token_id)
"""
from __future__ import annotations

from typing import Optional, Sequence

from .types import FinishReason, Problem, RewardResult, Rollout, RolloutGroup, Segment


def scored_group(policy, rewards: Sequence[float], texts: Sequence[str], uid: str = "p",
                 correct: Optional[Sequence[bool]] = None, length_rewards: Optional[Sequence[float]] = None,
                 prompt: str = "1+2=", answer: str = "3", version: int = 0) -> RolloutGroup:
    """A scored :class:`RolloutGroup` of one problem: one finished (``STOP``) rollout per text,
    encoded by ``policy`` (response tokens end with EOS), behaviour log-probs 0, one segment at
    policy ``version``; reward scores ``rewards``, ``correct`` (default: score > 0) and length
    rewards (default 0).

    :raises ValueError: ``rewards`` and ``texts`` (or ``correct`` / ``length_rewards``) differ in length.
    """
    n = len(texts)
    if len(rewards) != n or (correct is not None and len(correct) != n) or (length_rewards is not None and len(length_rewards) != n):
        raise ValueError(f"scored_group: {n} texts but {len(rewards)} rewards"
                         f"{'' if correct is None else f', {len(correct)} correct flags'}"
                         f"{'' if length_rewards is None else f', {len(length_rewards)} length rewards'}")
    p = Problem(uid=uid, prompt=prompt, answer=answer)
    prompt_ids = policy.encode_prompt(p.prompt)
    rolls = []
    for t in texts:
        ids = policy.encode_response(t)
        rolls.append(Rollout(p, prompt_ids, ids, (0.0,) * len(ids), FinishReason.STOP, (Segment(0, len(ids), version),), t))
    correct = [bool(x) for x in rewards] if correct is None else list(correct)
    res = tuple(RewardResult(float(x), bool(c)) for x, c in zip(rewards, correct))
    return RolloutGroup(p, tuple(rolls), res, tuple(length_rewards or (0.0,) * n))
