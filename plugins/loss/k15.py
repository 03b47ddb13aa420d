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
- Samples from an older policy (``stale``; tokens whose ``token_versions`` < ``ctx.policy_version``:
  segments of partial rollouts begun by an earlier policy, §2.6.2, or rollouts generated one
  iteration ahead). §2.3.2's objective at iteration i is an expectation over y ~ π_θi (the
  reference is the policy being improved, and the closed form π* ∝ π_θi·exp(r/τ) it regresses
  to), so a response whose tokens an older policy μ sampled is a sample from the wrong
  distribution:

  - ``truncated_is`` (default): row j's squared term is weighted by
    w_j = min(exp(Σ_{stale t} (log π_θi(y_t) − log μ(y_t))), C), C = ``stale_is_cap`` (2.0),
    no gradient through w. The loss is a sequence-level regression, so the weight is the
    sequence's importance ratio π_θi(y)/μ(y); its current-version tokens contribute a factor
    of exactly 1 (μ = π_θi for them) and are left out of the sum, so a row without stale tokens
    has w = 1 bitwise. Truncated as IMPALA's ρ̄ (Espeholt et al. 2018, eq. 1) and verl's
    truncated IS (C = 2.0); the decoupled objective of AReaL (Fu et al. 2025, arXiv 2505.24298,
    its decoupled PPO objective) with π_θi as its proximal policy. π_θi is the trainer's forward at θ_i (the
    prepare forward, or the loss's own in a single-step update), μ the engine's
    ``behaviour_logprobs``. The group baseline stays the unweighted mean of the group's returns.
    Refused at ``generation.temperature != 1`` or ``top_p != 1`` once a batch holds stale
    tokens (μ is then the scaled distribution's).
  - ``exclude``: stale tokens are left out of log π and log π_ref (the paper, §2.6.2: earlier
    segments "can be excluded" from the loss); a response then counts only its current tokens.
  - ``ignore``: they enter log π as if π_θi had sampled them.

  With no stale token the three give the same loss bit for bit. ``exclude_stale_segments: true``
  is the old name of ``stale: exclude``. Metrics ``loss/stale_frac`` (share of the batch's
  response tokens from older versions), and with ``truncated_is`` ``loss/stale_is_weight_mean``
  (mean w over rows with a stale token, 1 when none) and ``loss/stale_is_clipped_frac`` (share
  of those rows whose ratio exceeds C).
- No value network; samples below the baseline are pushed down (the "negative gradient").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from reasonzoo import hookimpl, plugin, pg
from reasonzoo.pg import behaviour_is_current, check_truncated_is_sampling, has_dropout, stale_choice, stale_tokens
from reasonzoo.ranges import ranged
from reasonzoo.types import LossOutput

BASELINES = ("mean", "logmeanexp")


@dataclass
class K15LossConfig:
    tau: float = 0.1  #: τ, the KL strength to the previous iterate; undisclosed in the paper
    baseline: str = "mean"  #: estimate of τ·log Z: mean (paper, in practice) or logmeanexp
    divide_by_2tau: bool = True  #: scale L by 1/(2τ) so ∇L = −eq.3 (step size independent of τ)
    reset_optimizer: bool = True  #: clear the optimizer state at every iteration (paper)
    stale: str = "truncated_is"  #: tokens from older policy versions: ignore, exclude or truncated_is (row weight min(π_θi(y)/μ(y), C))
    stale_is_cap: float = ranged(2.0, gt=0)  #: C of truncated_is (verl's truncated IS: 2.0)
    exclude_stale_segments: bool = False  #: old name of stale: exclude (true = exclude)
    reuse_behaviour_logprobs: bool = True  #: reference from the engine's log-probs where exact (reasonzoo.pg.behaviour_is_current); false = always a forward


def group_baselines(returns: torch.Tensor, group_index: torch.Tensor, tau: float, kind: str) -> torch.Tensor:
    """τ·log Z estimate per row, computed over each row's group. ``(N,)`` → ``(N,)``
    (:func:`reasonzoo.pg.group_baselines`: ``mean`` or ``logmeanexp``)."""
    return pg.group_baselines(returns, group_index, kind, tau)


def k15_loss(seq_logp: torch.Tensor, ref_logp: torch.Tensor, returns: torch.Tensor, baseline: torch.Tensor,
             tau: float, divide_by_2tau: bool, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of w·(r − b − τ(log π − log π_ref))², optionally divided by 2τ. All ``(N,)``;
    ``weight`` w (no grad; ``None`` = 1 for every row, the unweighted loss)."""
    sq = (returns - baseline - tau * (seq_logp - ref_logp)).pow(2)
    loss = (sq * weight).mean() if weight is not None else sq.mean()
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
        self.stale, self.stale_is_cap = stale_choice(cfg, "truncated_is")
        self.reused_behaviour = False  # this iteration's reference is the behaviour log-probs (rz_prepare_update)

    def mask(self, ctx, batch) -> torch.Tensor:
        """``(N, T-1)`` float: the response tokens in log π (current-version ones only with ``stale: exclude``)."""
        m = batch.response_mask
        if self.stale == "exclude":
            m = m * ~stale_tokens(ctx, batch, m)
        return m

    def seq_logprobs(self, ctx, batch) -> torch.Tensor:
        lp = ctx.policy.token_logprobs(batch.input_ids, batch.attention_mask)  # (N, T-1)
        return (lp * self.mask(ctx, batch)).sum(-1)  # (N,)

    def stale_weights(self, ctx, batch, token_logp: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """``truncated_is``'s row weights w ``(N,)`` (``None`` when no row has a stale token: the
        unweighted loss) and their metrics. The stale log-ratio sum comes from
        ``k15/stale_logratio`` (prepared) or from ``token_logp`` ``(N, T-1)``, detached log π_θi."""
        stale = stale_tokens(ctx, batch, self.mask(ctx, batch))  # (N, T-1)
        rows = stale.any(-1)
        if "k15/stale_logratio" in batch.extras:
            logratio = batch.extras["k15/stale_logratio"]
        else:
            logratio = ((token_logp.detach() - batch.behaviour_logprobs) * stale).sum(-1)  # (N,)
        ratio = torch.exp(logratio)
        w = torch.where(rows, ratio.clamp(max=self.stale_is_cap), torch.ones_like(ratio))
        n = int(rows.sum())
        metrics = {"loss/stale_is_weight_mean": float(w[rows].mean()) if n else 1.0,
                   "loss/stale_is_clipped_frac": float((ratio[rows] > self.stale_is_cap).sum()) / n if n else 0.0}
        return (w if n else None), metrics

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
        mask = self.mask(ctx, batch)
        weighs_stale = self.stale == "truncated_is" and bool(stale_tokens(ctx, batch, mask).any())
        if weighs_stale:
            check_truncated_is_sampling(ctx)
        if not one_step or has_dropout(ctx.policy.model):
            # all r − b = 0: the exact update is zero (eq. 3 at θ_i), which needs log π − log π_ref = 0
            # bitwise; the engine's ~1e-6 would be blown up to lr-sized steps by Adam's g / (|g| + ε)
            informative = bool(((batch.returns - out["k15/baseline"] != 0) & (mask.sum(-1) > 0)).any())
            if self.cfg.reuse_behaviour_logprobs and informative and behaviour_is_current(ctx, batch, mask):
                out["k15/ref_logprob"] = (batch.behaviour_logprobs * mask).sum(-1)  # the engine's, = π_θi's (N,)
                self.reused_behaviour = True
            else:
                lp = ctx.policy.token_logprobs(batch.input_ids, batch.attention_mask)  # (N, T-1) at θ = θ_i: before any step
                out["k15/ref_logprob"] = (lp * mask).sum(-1)
                if weighs_stale:  # Σ over stale tokens of log π_θi − log μ (N,)
                    out["k15/stale_logratio"] = ((lp - batch.behaviour_logprobs) * stale_tokens(ctx, batch, mask)).sum(-1)
        return out

    @hookimpl
    def rz_loss(self, ctx, batch):
        lp = ctx.policy.token_logprobs(batch.input_ids, batch.attention_mask)  # (N, T-1)
        seq = (lp * self.mask(ctx, batch)).sum(-1)  # (N,)
        # single-step update: this forward runs at θ_i, so it is its own reference (exact)
        ref = batch.extras["k15/ref_logprob"] if "k15/ref_logprob" in batch.extras else seq.detach()
        base = batch.extras["k15/baseline"]
        weight, stale_metrics = None, {}
        if self.stale == "truncated_is":
            weight, stale_metrics = self.stale_weights(ctx, batch, lp)
        loss = k15_loss(seq, ref, batch.returns, base, self.cfg.tau, self.cfg.divide_by_2tau, weight)
        with torch.no_grad():
            logratio = seq - ref
            n_resp = max(float((batch.response_mask > 0).sum()), 1.0)
            stale_frac = float(stale_tokens(ctx, batch, batch.response_mask).sum()) / n_resp
        return LossOutput(loss, {
            "loss/k15": loss.item(),
            "loss/logratio_mean": float(logratio.mean()),
            "loss/logratio_absmax": float(logratio.abs().max()),
            "loss/advantage_abs": float((batch.returns - base).abs().mean()),
            "loss/reused_behaviour_logprobs": float(self.reused_behaviour),
            "loss/stale_frac": stale_frac,
            **stale_metrics,
        })

