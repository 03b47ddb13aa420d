"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics",
arXiv 2402.14740, the RLOO estimator; Kool et al. 2019).

For the k responses y_i of prompt x, each response is one action, baselined by the mean return
of the other k − 1:

    ∇J = (1/k) Σ_i ( r_i − (1/(k−1)) Σ_{j≠i} r_j ) ∇log π(y_i | x)

Implementation details:
- log π(y|x) is the sum of the response's token log-probs (``aggregation: seq-mean-token-sum``):
  the whole response is one action, as in the paper. The loss is −ρ·A summed over the response,
  ρ = π/π_old per token, unclipped: at π = π_old its gradient is the formula above; with several
  optimizer steps per iteration ρ reweights the stale samples (no clipping, unlike PPO).
- Built from :mod:`reasonzoo.pg`: ``group_baselines(loo)`` and ``clipped_surrogate`` with no clip
  bounds, then ``aggregate``. r_i − b_i = k/(k−1)·(r_i − r̄): REINFORCE's mean-baseline advantage
  scaled by k/(k−1), which makes the estimate unbiased.
- Optional KL to the frozen post-warm-up policy (``kl_coef``, 0 by default; the paper puts a
  KL penalty in the reward with a learned reward model, which a verifiable reward does not need).
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
class RLOOLossConfig(SequencePGConfig):
    """The shared unclipped sequence-level options (:class:`reasonzoo.pg.SequencePGConfig`)."""


@plugin("loss", "rloo", RLOOLossConfig)
class RLOOLoss(PolicyGradientLoss):
    """Unclipped REINFORCE with the leave-one-out group baseline."""

    name = "rloo"
    min_samples_per_prompt = 2  #: the leave-one-out baseline needs another sample

    def advantages(self, ctx, batch) -> torch.Tensor:
        return batch.returns - group_baselines(batch.returns, batch.group_index, "loo")
