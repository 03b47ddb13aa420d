"""REINFORCE with a group-mean baseline (Williams 1992; the baseline as in k1.5 §2.3.2, where
the mean reward of the k samples stands in for τ·log Z, here without the KL-regularised
mirror-descent term).

For the k responses y_i of prompt x,

    ∇J = (1/k) Σ_i ( r_i − r̄ ) ∇log π(y_i | x),     r̄ = (1/k) Σ_j r_j

Implementation details:
- log π(y|x) is the sum of the response's token log-probs (``aggregation: seq-mean-token-sum``).
  The loss is −ρ·A summed over the response, ρ = π/π_old per token, unclipped: at π = π_old its
  gradient is the formula above; with several optimizer steps ρ reweights the stale samples.
- Built from :mod:`reasonzoo.pg`: ``group_baselines(mean)``, ``clipped_surrogate`` with no clip
  bounds, ``aggregate``. The mean includes r_i itself, so the estimate is biased by a factor
  (k−1)/k; loss/rloo is the unbiased leave-one-out version.
- Optional KL to the frozen post-warm-up policy (``kl_coef``, 0 by default).
- π_old: as in every policy-gradient loss (:class:`reasonzoo.pg.PolicyGradientLoss`): the
  engine's behaviour log-probs where they are π_θold's (``reuse_behaviour_logprobs``,
  :func:`reasonzoo.pg.behaviour_is_current`), else a forward at the start of the update.
- Samples from an older policy (``stale``; :class:`reasonzoo.pg.PolicyGradientLoss`):
  ``truncated_is`` (default) multiplies each stale token's −ρ·A term by w = min(π_θi/μ, C),
  C = ``stale_is_cap`` (2): a per-token truncated importance weight (IMPALA's ρ̄, Espeholt et al.
  2018 eq. 1; verl's truncated IS; AReaL's decoupled objective, arXiv 2505.24298,
  without its clip); ``exclude`` leaves them out of the sequence log-prob; ``ignore`` treats them
  as π_θi's. Per-token rather than the sequence ratio Π_t w_t, whose variance grows with the
  stale segment's length; the truncation bounds each factor (verl's token-level default).
- The optimizer is not reset between iterations (unlike loss/k15).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from reasonzoo import plugin
from reasonzoo.pg import PolicyGradientLoss, SequencePGConfig, group_baselines


@dataclass
class ReinforceLossConfig(SequencePGConfig):
    """The shared unclipped sequence-level options (:class:`reasonzoo.pg.SequencePGConfig`)."""


@plugin("loss", "reinforce", ReinforceLossConfig)
class ReinforceLoss(PolicyGradientLoss):
    """Unclipped REINFORCE with the group-mean baseline."""

    name = "reinforce"
    min_samples_per_prompt = 2  #: the group mean of one sample is the sample: advantage 0

    def advantages(self, ctx, batch) -> torch.Tensor:
        return batch.returns - group_baselines(batch.returns, batch.group_index, "mean")
