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
- Samples from an older policy (``stale``): ``ignore`` (default) fits them as they are, as ReST
  does by design: its Improve steps fit the dataset of the last Grow step, i.e. samples of an
  earlier policy, without correction (Gulcehre et al. §2, Algorithm 1). ``exclude`` leaves the
  stale tokens out of the NLL. ``truncated_is`` weights each stale token's −log π term by
  w = min(π_θi/μ, C) (per token, as the policy-gradient losses; π_θi from a no-grad forward at
  the iteration's start, taken only when a chosen response holds stale tokens and the update has
  several steps), which moves the fit towards what π_θi would have sampled given the same prefix.
  ``exclude_stale_segments: true`` is the old name of ``stale: exclude``.
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
    stale: str = "ignore"  #: tokens from older policy versions: ignore (ReST's Improve steps fit older samples), exclude or truncated_is
    stale_is_cap: float = ranged(2.0, gt=0)  #: C of truncated_is (verl's truncated IS: 2.0)
    exclude_stale_segments: bool = False  #: old name of stale: exclude (true = exclude)
    best_by: str = "return"  #: rank correct responses by total return (length reward included) or by outcome score only


BEST_BY = ("return", "score")


def best_correct(returns: torch.Tensor, correct: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: the first correct row of highest return in each group; none in a group
    without a correct row."""
    out = torch.zeros(len(returns), dtype=torch.bool, device=returns.device)
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
    stale_default = "ignore"  #: ReST's Improve steps fit samples of an earlier policy as they are (Gulcehre et al. §2)

    def __init__(self, cfg: ReSTLossConfig):
        if cfg.best_by not in BEST_BY:
            raise ValueError(f"loss.best_by={cfg.best_by!r}: allowed values are {', '.join(BEST_BY)}")
        super().__init__(cfg)

    def advantages(self, ctx, batch) -> torch.Tensor:
        return torch.ones(len(batch), device=batch.returns.device)

    def keep_rows(self, ctx, batch) -> torch.Tensor:
        rank = batch.returns if self.cfg.best_by == "return" else torch.zeros_like(batch.returns)  # score: the first correct
        return best_correct(rank, batch.correct, batch.group_index)

    def token_loss(self, logp, old_logp, adv):
        return -logp * adv[:, None], {}
