"""Helpers for testing loss, length-penalty and sampler plugins on hand-made batches (used by the
project's own tests; third-party plugin packages may use them too).

    from reasonzoo.testing import scored_group
    from reasonzoo.trainer import collate

    batch = collate([scored_group(policy, [1, 0], ["1+2=3;#3", "#7"])], policy.pad_token_id)
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

from .types import FinishReason, Problem, RewardResult, Rollout, RolloutGroup, Segment


def scored_group(policy, rewards: Sequence[float], texts: Sequence[str], uid: str = "p",
                 correct: Optional[Sequence[bool]] = None, length_rewards: Optional[Sequence[float]] = None,
                 prompt: str = "1+2=", answer: str = "3", version: int = 0,
                 versions: Optional[Sequence[Union[int, Sequence[int]]]] = None,
                 logprobs: Optional[Sequence[Union[float, Sequence[float]]]] = None) -> RolloutGroup:
    """A scored :class:`RolloutGroup` of one problem: one finished (``STOP``) rollout per text,
    encoded by ``policy`` (response tokens end with EOS); reward scores ``rewards``, ``correct``
    (default: score > 0) and length rewards (default 0).

    Which policy sampled what (for losses' treatment of samples from an older policy): by default
    every response is one segment at policy ``version`` with behaviour log-probs 0.
    ``versions``: per text, an int (one segment at that version) or one version per response
    token (EOS included; consecutive equal versions form one :class:`Segment`). ``logprobs``: per
    text, a float for every token or one behaviour log-prob per response token.

    :raises ValueError: ``rewards`` and ``texts`` (or ``correct`` / ``length_rewards`` /
        ``versions`` / ``logprobs``) differ in length, or a per-token list is not as long as its
        response.
    """
    n = len(texts)
    if len(rewards) != n or (correct is not None and len(correct) != n) or (length_rewards is not None and len(length_rewards) != n):
        raise ValueError(f"scored_group: {n} texts but {len(rewards)} rewards"
                         f"{'' if correct is None else f', {len(correct)} correct flags'}"
                         f"{'' if length_rewards is None else f', {len(length_rewards)} length rewards'}")
    for name, per_text in (("versions", versions), ("logprobs", logprobs)):
        if per_text is not None and len(per_text) != n:
            raise ValueError(f"scored_group: {n} texts but {len(per_text)} {name}")
    p = Problem(uid=uid, prompt=prompt, answer=answer)
    prompt_ids = policy.encode_prompt(p.prompt)
    rolls = []
    for i, t in enumerate(texts):
        ids = policy.encode_response(t)
        v = version if versions is None else versions[i]
        tok_versions = [int(v)] * len(ids) if isinstance(v, int) else [int(x) for x in v]
        lp = 0.0 if logprobs is None else logprobs[i]
        tok_logprobs = [float(lp)] * len(ids) if isinstance(lp, (int, float)) else [float(x) for x in lp]
        for name, vals in (("versions", tok_versions), ("logprobs", tok_logprobs)):
            if len(vals) != len(ids):
                raise ValueError(f"scored_group: text {i} ({t!r}) has {len(ids)} response tokens but {len(vals)} {name}")
        segs, start = [], 0
        for j in range(1, len(ids) + 1):
            if j == len(ids) or tok_versions[j] != tok_versions[start]:
                segs.append(Segment(start, j, tok_versions[start]))
                start = j
        rolls.append(Rollout(p, prompt_ids, ids, tuple(tok_logprobs), FinishReason.STOP, tuple(segs), t))
    correct = [bool(x) for x in rewards] if correct is None else list(correct)
    res = tuple(RewardResult(float(x), bool(c)) for x, c in zip(rewards, correct))
    return RolloutGroup(p, tuple(rolls), res, tuple(length_rewards or (0.0,) * n))
