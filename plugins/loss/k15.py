"""k1.5 policy optimisation: online mirror descent with a sequence-level surrogate (§2.3.2).

At iteration i the current policy π_θi is the reference. For the k samples y_1..y_k of prompt x,

    L(θ) = mean_j ( r_j − τ·log Z − τ·log( π_θ(y_j|x) / π_θi(y_j|x) ) )²

with τ·log Z estimated from the same k samples, either as the mean reward r̄ (``baseline: mean``,
what the paper uses in practice) or as τ·log mean_j exp(r_j/τ) (``baseline: logmeanexp``).
Its gradient (paper eq. 3) is, for the mean baseline,

    ∇L = −2τ · (1/k) Σ_j [ ∇log π_θ(y_j|x)(r_j − r̄) − (τ/2)∇( log π_θ(y_j|x) − log π_θi(y_j|x) )² ]

Implementation details:
- log π(y|x) is the SUM of the response's token log-probs (sequence level, not per token).
- r_j is the total reward (outcome + length reward), the baseline is computed over the full
  group once per iteration (``rz_prepare_update``), so minibatches may split groups.
- The reference log-probs are those of the trainer's model at θ = θ_i, not the sampler's, so
  they are exact whatever the sampling temperature. When the update is a single optimizer step
  (``train.epochs == 1`` and ``train.minibatch_size >= N``; micro-batches accumulate into that
  one step) every loss forward runs at θ_i, so ``seq.detach()`` *is* the reference and no extra
  forward is needed. Otherwise (several steps, or a model with dropout, whose forward is
  stochastic) they are computed up front in ``rz_prepare_update``, before the first step.
- ``reuse_behaviour_logprobs: true`` (default): in that up-front case, when the engine's
  behaviour log-probs *are* π_θi's (:func:`reasonzoo.pg.behaviour_is_current`: sampling at T = 1
  and top-p = 1, every token in the loss produced by the current policy version, an engine that
  declares ``logprobs_match_policy``), the reference is their masked sum and the forward is
  skipped (15% of a default iteration's time; ``docs/losses.md``). Otherwise (another
  temperature or top-p, stale segments of partial rollouts in the loss, vLLM in bf16, or
  ``false``) the forward runs. It also runs when every response in the loss has r − b = 0 (all
  groups of equal returns, e.g. a hard batch before the length reward starts): the exact update
  is then zero, since log π − log π_ref is 0 bitwise at θ_i, while the engine's ~1e-6 differences
  would give a gradient of ~1e-8 that Adam's first step (g / (|g| + ε), the optimizer being reset)
  turns into lr-sized steps. Metric ``loss/reused_behaviour_logprobs``: 1 when the reference
  came from the behaviour log-probs, 0 when from a forward.
- ``divide_by_2tau: true`` (default) divides L by 2τ so that ∇L = −(eq. 3) exactly and the
  step size does not depend on τ; ``false`` keeps the paper's L.
- The optimizer state is reset at the start of every iteration (each iteration is a new
  optimisation problem; ``reset_optimizer``).
- ``exclude_stale_segments``: with partial rollouts, tokens produced by an older policy version
  are left out of log π (the paper: "certain segments can be excluded").
- No value network; samples below the baseline are pushed down (the "negative gradient").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from reasonzoo import hookimpl, plugin, pg
from reasonzoo.pg import behaviour_is_current, has_dropout
from reasonzoo.types import LossOutput

BASELINES = ("mean", "logmeanexp")


@dataclass
class K15LossConfig:
    tau: float = 0.1  #: τ, the KL strength to the previous iterate; undisclosed in the paper
    baseline: str = "mean"  #: estimate of τ·log Z: mean (paper, in practice) or logmeanexp
    divide_by_2tau: bool = True  #: scale L by 1/(2τ) so ∇L = −eq.3 (step size independent of τ)
    reset_optimizer: bool = True  #: clear the optimizer state at every iteration (paper)
    exclude_stale_segments: bool = False  #: leave tokens from older policy versions out of log π
    reuse_behaviour_logprobs: bool = True  #: reference from the engine's log-probs where exact (reasonzoo.pg.behaviour_is_current); false = always a forward


def group_baselines(returns: torch.Tensor, group_index: torch.Tensor, tau: float, kind: str) -> torch.Tensor:
    """τ·log Z estimate per row, computed over each row's group. ``(N,)`` → ``(N,)``
    (:func:`reasonzoo.pg.group_baselines`: ``mean`` or ``logmeanexp``)."""
    return pg.group_baselines(returns, group_index, kind, tau)


def k15_loss(seq_logp: torch.Tensor, ref_logp: torch.Tensor, returns: torch.Tensor, baseline: torch.Tensor,
             tau: float, divide_by_2tau: bool) -> torch.Tensor:
    """Mean over rows of (r − b − τ(log π − log π_ref))², optionally divided by 2τ."""
    loss = (returns - baseline - tau * (seq_logp - ref_logp)).pow(2).mean()
    return loss / (2 * tau) if divide_by_2tau else loss


@plugin("loss", "k15", K15LossConfig)
class K15Loss:
    """Sequence-level mirror-descent surrogate of Kimi k1.5."""

    min_samples_per_prompt = 2  #: the group baseline of one sample is the sample: every advantage 0

    def __init__(self, cfg: K15LossConfig):
        if cfg.baseline not in BASELINES:
            raise ValueError(f"loss.baseline={cfg.baseline!r}: allowed values are {', '.join(BASELINES)}")
        if cfg.tau <= 0:
            raise ValueError(f"loss.tau={cfg.tau}: must be > 0")
        self.cfg = cfg
        self.reused_behaviour = False  # this iteration's reference is the behaviour log-probs (rz_prepare_update)

    def mask(self, ctx, batch) -> torch.Tensor:
        m = batch.response_mask
        if self.cfg.exclude_stale_segments:
            m = m * (batch.token_versions == ctx.policy_version)
        return m

    def seq_logprobs(self, ctx, batch) -> torch.Tensor:
        lp = ctx.policy.token_logprobs(batch.input_ids, batch.attention_mask)  # (N, T-1)
        return (lp * self.mask(ctx, batch)).sum(-1)  # (N,)

    @hookimpl
    def rz_iteration_start(self, ctx):
        if self.cfg.reset_optimizer and ctx.optimizer is not None:
            ctx.optimizer.state.clear()

    @hookimpl
    def rz_prepare_update(self, ctx, batch):
        out = {"k15/baseline": group_baselines(batch.returns, batch.group_index, self.cfg.tau, self.cfg.baseline)}
        train = ctx.cfg.train
        one_step = train.epochs == 1 and train.minibatch_size >= len(batch)
        self.reused_behaviour = False
        if not one_step or has_dropout(ctx.policy.model):
            mask = self.mask(ctx, batch)
            # all r − b = 0: the exact update is zero (eq. 3 at θ_i), which needs log π − log π_ref = 0
            # bitwise; the engine's ~1e-6 would be blown up to lr-sized steps by Adam's g / (|g| + ε)
            informative = bool(((batch.returns - out["k15/baseline"] != 0) & (mask.sum(-1) > 0)).any())
            if self.cfg.reuse_behaviour_logprobs and informative and behaviour_is_current(ctx, batch, mask):
                out["k15/ref_logprob"] = (batch.behaviour_logprobs * mask).sum(-1)  # the engine's, = π_θi's (N,)
                self.reused_behaviour = True
            else:
                out["k15/ref_logprob"] = self.seq_logprobs(ctx, batch)  # θ = θ_i: before any step
        return out

    @hookimpl
    def rz_loss(self, ctx, batch):
        seq = self.seq_logprobs(ctx, batch)
        # single-step update: this forward runs at θ_i, so it is its own reference (exact)
        ref = batch.extras["k15/ref_logprob"] if "k15/ref_logprob" in batch.extras else seq.detach()
        base = batch.extras["k15/baseline"]
        loss = k15_loss(seq, ref, batch.returns, base, self.cfg.tau, self.cfg.divide_by_2tau)
        with torch.no_grad():
            logratio = seq - ref
        return LossOutput(loss, {
            "loss/k15": loss.item(),
            "loss/logratio_mean": float(logratio.mean()),
            "loss/logratio_absmax": float(logratio.abs().max()),
            "loss/advantage_abs": float((batch.returns - base).abs().mean()),
            "loss/reused_behaviour_logprobs": float(self.reused_behaviour),
        })

