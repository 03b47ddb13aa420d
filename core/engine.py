"""The rollout-engine interface every engine plugin implements.

Engines take token ids in and give token ids, log-probs and an end state out, so every rollout
scheduler and loss works with any engine.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch

from .types import Generation, GenerationRequest, SamplingParams


@runtime_checkable
class Engine(Protocol):
    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, generator: torch.Generator
    ) -> list[Generation]:
        """Generate a response continuation for each request (same order).

        Returned log-probs are those of the sampled tokens under the sampling distribution
        (temperature-scaled, top-p-renormalised); at temperature 1 and top-p 1 they are the
        policy's own log-probs. Deterministic for a given ``generator`` state.
        """

    def sync_weights(self) -> None:
        """Make the engine serve the trainer's current weights (called after every update)."""
