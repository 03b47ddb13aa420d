"""GRPO: group relative policy optimisation (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300
§4.1, eq. 3), with the Dr.GRPO (Liu et al. 2025, arXiv 2503.20783 §3) and DAPO (Yu et al. 2025,
arXiv 2503.14476 §3) options.

For the G responses o_i of prompt q, with ρ_i,t = π_θ(o_i,t | q, o_i,<t) / π_θold(o_i,t | q, o_i,<t),

    J(θ) = (1/G) Σ_i (1/|o_i|) Σ_t { min( ρ_i,t Â_i, clip(ρ_i,t, 1−ε, 1+ε) Â_i ) − β D_KL[π_θ ‖ π_ref] }
    Â_i = (r_i − mean(r)) / std(r)        (outcome supervision, §4.1.2: every token gets Â_i)

and the loss is −J. Options, each one config key:

- ``advantage_scale``: ``group`` (the paper's std over the group), ``batch`` (std of all the
  batch's returns, TRL's ``scale_rewards="batch"``) or ``none`` (Dr.GRPO: no std division).
- ``aggregation``: ``seq-mean-token-mean`` (eq. 3's 1/|o_i| then 1/G), ``token-mean`` (DAPO §3.3,
  verl's default: every token weighs the same), ``seq-mean-token-sum-norm`` (Dr.GRPO: a constant
  normaliser ``norm_length`` instead of |o_i|), ``seq-mean-token-sum``.
- ``clip_low`` / ``clip_high``: ε_low, ε_high (DAPO's clip-higher: 0.2 / 0.28; equal = PPO/GRPO).
- ``kl_coef`` β and ``kl_estimator`` (k3 is eq. 4's; k1, k2 from Schulman 2020); β = 0 (the
  current default of verl and TRL; the paper used 0.04) keeps no reference model.
- ``drop_uniform_groups``: DAPO's dynamic-sampling filter (§3.2): groups whose returns are all
  equal leave the loss (their advantages are 0 anyway; they would only dilute token and row
  means and the KL term). The refill half of dynamic sampling (sampling more prompts until the
  batch is full) is the rollout scheduler ``rollout/dynamic``; see ``docs/losses.md``.

Implementation details:
- Built from :mod:`reasonzoo.pg`: ``group_baselines(mean)`` → ``scale_advantages`` →
  ``clipped_surrogate`` → ``aggregate``, plus ``kl_estimate`` (one implementation of each).
- The std is unbiased (n−1, as ``torch.std`` in TRL and verl), plus ``eps`` (1e-6, verl's).
- r_i is the total return (outcome + length reward, as for every loss here).
- π_old comes from the loss's own detached forward when the update is one optimizer step; else
  (``reuse_behaviour_logprobs: true``, default) from the engine's behaviour log-probs when they
  are π_θold's (:func:`reasonzoo.pg.behaviour_is_current`: T = 1, top-p = 1, no stale segment in
  the loss, an engine declaring ``logprobs_match_policy``), which saves a full forward; else from
  the trainer's forward at the start of the update (exact at any sampling temperature).
  ``loss/reused_behaviour_logprobs`` says which (1 = behaviour log-probs).
- The frozen reference is the policy after the warm-up (as DeepSeekMath's reference is the SFT
  model), captured at the first iteration of a fresh run and kept in checkpoints. The KL term is
  aggregated like the surrogate (same mask, same mode), as in eq. 3.
- Rollouts left out by the reward (``in_loss=False``, DAPO's overlong filtering with
  ``reward.truncated=mask``) still count in their group's mean and std, as in DAPO.
- Samples from an older policy (``stale``, as in every policy-gradient loss,
  :class:`reasonzoo.pg.PolicyGradientLoss`): ``truncated_is`` (default) multiplies each stale
  token's clipped-surrogate term by w = min(π_θi/μ, ``stale_is_cap`` = 2), μ the engine's
  behaviour log-prob: AReaL's decoupled PPO objective (arXiv 2505.24298; π_prox =
  π_θi, the clip's centre) with the weight truncated (IMPALA's ρ̄; verl's truncated IS);
  ``exclude`` leaves stale tokens out (of the KL term too); ``ignore`` treats them as π_θi's.
  The KL term is not weighted. With no stale token all three are the same loss.
- The optimizer is not reset between iterations (unlike loss/k15), as in verl and TRL.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from reasonzoo import plugin
from reasonzoo.pg import PolicyGradientLoss, SCALES, group_baselines, scale_advantages, uniform_groups
from reasonzoo.ranges import ranged


@dataclass
class GRPOLossConfig:
    advantage_scale: str = "group"  #: group (GRPO), batch (std of the batch's returns) or none (Dr.GRPO)
    eps: float = ranged(1e-6, gt=0)  #: added to the std before dividing (verl's 1e-6)
    aggregation: str = "seq-mean-token-mean"  #: token-mean, seq-mean-token-mean (eq. 3), seq-mean-token-sum, seq-mean-token-sum-norm
    norm_length: int = ranged(0, ge=0)  #: seq-mean-token-sum-norm's constant; 0 = generation.max_new_tokens (Dr.GRPO)
    clip_low: Optional[float] = 0.2  #: ε_low, ratio clipped below at 1 − ε_low; null = no lower clip
    clip_high: Optional[float] = 0.2  #: ε_high, ratio clipped above at 1 + ε_high (DAPO: 0.28); null = no upper clip
    kl_coef: float = ranged(0.0, ge=0)  #: β, weight of the KL to the frozen post-warm-up policy (paper 0.04; 0 = no reference)
    kl_estimator: str = "k3"  #: k1, k2 or k3 (eq. 4; Schulman 2020)
    drop_uniform_groups: bool = False  #: DAPO dynamic-sampling filter: groups with equal returns leave the loss
    stale: str = "truncated_is"  #: tokens from older policy versions: ignore, exclude or truncated_is (weight min(π_θi/μ, C)); docs/losses.md
    stale_is_cap: float = ranged(2.0, gt=0)  #: C of truncated_is (verl's truncated IS: 2.0)
    exclude_stale_segments: bool = False  #: old name of stale: exclude (true = exclude)
    reuse_behaviour_logprobs: bool = True  #: π_old from the engine's log-probs where exact (reasonzoo.pg.behaviour_is_current); false = always a forward


@plugin("loss", "grpo", GRPOLossConfig)
class GRPOLoss(PolicyGradientLoss):
    """GRPO's clipped token-level surrogate with group-normalised outcome advantages."""

    name = "grpo"
    min_samples_per_prompt = 2  #: a group of one has advantage 0

    def __init__(self, cfg: GRPOLossConfig):
        if cfg.advantage_scale not in SCALES:
            raise ValueError(f"loss.advantage_scale={cfg.advantage_scale!r}: allowed values are {', '.join(SCALES)}")
        super().__init__(cfg)

    def advantages(self, ctx, batch) -> torch.Tensor:
        r, g = batch.returns, batch.group_index
        return scale_advantages(r - group_baselines(r, g, "mean"), r, g, self.cfg.advantage_scale, self.cfg.eps)

    def keep_rows(self, ctx, batch) -> torch.Tensor:
        if self.cfg.drop_uniform_groups:
            return ~uniform_groups(batch.returns, batch.group_index)
        return super().keep_rows(ctx, batch)
