"""The rollout-engine interface every engine plugin implements.

Engines take token ids in and give token ids, log-probs and an end state out, so every rollout
scheduler and loss works with any engine. The stopping rules every engine applies, in this order
of precedence on one token: EOS (any of ``Policy.eos_token_ids``, the token kept) or a stop string
(:class:`StopStrings`; ``Generation.text`` cut after it), then repeat detection
(:mod:`reasonzoo.repeats`), then the length limit.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch

from .types import Generation, GenerationRequest, SamplingParams


@runtime_checkable
class Engine(Protocol):
    """What the trainer and the rollout schedulers call on an engine.

    Optional attribute (not a protocol member, so engines without it still satisfy
    ``isinstance(x, Engine)``): ``logprobs_match_policy: bool``, True when the log-probs
    :meth:`generate` returns at temperature 1 and top-p 1 equal the trainer's forward
    (``Policy.token_logprobs``) at the synced weights within a tested tolerance (engine/torch in
    fp32: ~1e-6; engine/vllm with ``dtype=float32``: 1e-4). Losses then reuse them as π_old / the
    reference instead of a forward (:func:`reasonzoo.pg.behaviour_is_current`); absent = False.
    """

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, generator: torch.Generator
    ) -> list[Generation]:
        """Generate a response continuation for each request (same order).

        Returned log-probs are those of the sampled tokens under the sampling distribution
        (temperature-scaled, top-p-renormalised); at temperature 1 and top-p 1 they are the
        policy's own log-probs. Deterministic for a given ``generator`` state.

        A row ends ``STOP`` on any of ``policy.eos_token_ids`` (kept as its last token) or at the
        token completing one of ``params.stop_strings`` (``Generation.text`` then holds the text cut
        right after the string); ``REPEAT`` when ``params.repeat`` fires; else ``LENGTH``.
        """

    def sync_weights(self) -> None:
        """Make the engine serve the trainer's current weights (called after every update)."""


class StopStrings:
    """Stop strings matched on token ids, cheaply, wherever they end inside a token.

    A row stops at the token whose decoded text completes a stop string: the string's last
    character lies in that token's text, its start anywhere before (``</answer>`` completed by a
    ``>\\n`` token stops the row although the text does not *end* with ``</answer>``). This is
    vLLM's rule (its detokenizer searches the newly decoded characters plus the ``len(s) - 1``
    before them). Each check decodes only a tail window of the ids: the last token and enough
    tokens before it to give ``len(longest) - 1`` characters (``longest + 1`` tokens, doubled while
    tokens decode to nothing), so a step costs O(longest stop string), not O(response).

    :param decode: ids -> text (``Policy.decode``: special tokens skipped).
    :param strings: the stop strings (non-empty).
    :raises ValueError: an empty stop string (it would stop every row at once).
    """

    def __init__(self, decode, strings: Sequence[str]):
        if not strings or any(not s for s in strings):
            raise ValueError(f"SamplingParams.stop_strings={tuple(strings)!r}: needs at least one string and no empty "
                             "one (an empty string would stop every row at its first token)")
        self.decode, self.strings = decode, tuple(strings)
        self.longest = max(len(s) for s in self.strings)

    def fires(self, ids: Sequence[int]) -> bool:
        """Whether the last of ``ids`` (the response so far, a continued prefix included)
        completes a stop string."""
        n, w = len(ids), self.longest + 1
        while True:
            w = min(w, n)
            prev, cur = self.decode(ids[n - w : n - 1]), self.decode(ids[n - w :])
            k = len(prev) if cur.startswith(prev) else _common_prefix(prev, cur)  # new text: cur[k:]
            if k >= self.longest - 1 or w == n:
                break
            w *= 2
        if k >= len(cur):
            return False  # the token added no character (a skipped special token)
        return any(cur.find(s, max(0, k - len(s) + 1)) >= 0 for s in self.strings)

    def cut(self, ids: Sequence[int], prefix: Sequence[int] = ()) -> str | None:
        """The text of ``ids`` cut right after the first stop string completed in it (the string
        kept), or ``None`` when none is. With a ``prefix`` (the response's earlier tokens) a stop
        string may start in the prefix; only the text of ``ids`` is returned."""
        full, base = self.decode(list(prefix) + list(ids)), 0
        if prefix:
            pre = self.decode(prefix)
            if full.startswith(pre):
                base = len(pre)
            else:  # the prefix's text changed with what followed (merged bytes): cut within ids alone
                full = self.decode(ids)
        ends = [j + len(s) for s in self.strings if (j := full.find(s, max(0, base - len(s) + 1))) >= 0]
        return full[base : min(ends)] if ends else None


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)
