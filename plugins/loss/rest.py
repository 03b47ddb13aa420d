"""ReST / rejection sampling: supervised fit on the best correct response of each prompt
(Gulcehre et al. 2023, "Reinforced Self-Training", arXiv 2308.08998 §2: Grow then Improve on
filtered samples; the k1.5 paper's Figure 10 baseline, §3.5, fits the best response with no
negative gradient).

For prompt x with responses y_1..y_k, let y* be the correct response with the highest return
(none: the prompt is skipped). The loss is the negative log-likelihood of the chosen responses,

    L(θ) = − (1/|tokens|) Σ_{x with y*} Σ_t log π_θ(y*_t | x, y*_<t)

Implementation details:
- "Best" = highest total return (outcome + length reward) among the correct responses; ties go
  to the first in the group (``best_by: return``). With k1.5's length reward that is the
  shortest correct response, which on the default task teaches answering directly and lowered
  held-out accuracy (docs/losses.md, measured); ``best_by: score`` ranks by the outcome score
  only, i.e. the first correct response (a random one: samples are exchangeable).
  Responses judged incorrect never enter the loss: no negative gradient.
- ``aggregation: token-mean`` (default) is plain SFT over the chosen responses' tokens;
  ``seq-mean-token-sum`` fits each chosen response's sequence log-prob with equal weight.
- Built from :mod:`reasonzoo.pg`: the rows chosen by ``keep_rows``, per-token −log π, ``aggregate``.
  No π_old or reference is computed (``needs_old_logprobs = False``).
- The optimizer is not reset between iterations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from reasonzoo import plugin
from reasonzoo.pg import PolicyGradientLoss
from reasonzoo.ranges import ranged


@dataclass
class ReSTLossConfig:
    aggregation: str = "token-mean"  #: token-mean (SFT over the chosen tokens) or a seq-mean-* mode
    norm_length: int = ranged(0, ge=0)  #: seq-mean-token-sum-norm's constant; 0 = generation.max_new_tokens
    exclude_stale_segments: bool = False  #: leave tokens from older policy versions (partial rollouts) out of the loss
    best_by: str = "return"  #: rank correct responses by total return (length reward included) or by outcome score only


BEST_BY = ("return", "score")


def best_correct(returns: torch.Tensor, correct: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: the first correct row of highest return in each group; none in a group
    without a correct row."""
    out = torch.zeros(len(returns), dtype=torch.bool)
    for g in group_index.unique():
        rows = ((group_index == g) & correct.bool()).nonzero().flatten()
        if len(rows):
            out[rows[returns[rows].argmax()]] = True  # argmax returns the first maximum
    return out


@plugin("loss", "rest", ReSTLossConfig)
class ReSTLoss(PolicyGradientLoss):
    """Negative log-likelihood of each prompt's best correct response."""

    name = "rest"
    needs_old_logprobs = False

    def __init__(self, cfg: ReSTLossConfig):
        if cfg.best_by not in BEST_BY:
            raise ValueError(f"loss.best_by={cfg.best_by!r}: allowed values are {', '.join(BEST_BY)}")
        super().__init__(cfg)

    def advantages(self, ctx, batch) -> torch.Tensor:
        return torch.ones(len(batch))

    def keep_rows(self, ctx, batch) -> torch.Tensor:
        rank = batch.returns if self.cfg.best_by == "return" else torch.zeros_like(batch.returns)  # score: the first correct
        return best_correct(rank, batch.correct, batch.group_index)

    def token_loss(self, logp, old_logp, adv):
        return -logp * adv[:, None], {}
