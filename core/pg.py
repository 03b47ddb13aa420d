"""Policy-gradient building blocks shared by the loss plugins (``loss/reinforce``, ``loss/rloo``,
``loss/grpo``, ``loss/rest``; ``loss/k15`` takes its group baselines from here).

Each piece exists once and is composed by the plugins:

- advantage estimators (per rollout, from the returns of its group): :func:`group_baselines`
  (mean, leave-one-out, log-mean-exp), :func:`scale_advantages` (group std, batch std, none);
- the importance-ratio surrogate :func:`clipped_surrogate`, clipped PPO-style with separate lower
  and upper bounds (DAPO's clip-higher) or unclipped;
- the aggregation of per-token losses into one scalar, :func:`aggregate` (``AGGREGATIONS``, the
  names verl uses), which also returns what the scalar is a mean over (the trainer's
  micro-batch contract, :class:`reasonzoo.types.LossOutput`);
- KL estimators to a frozen reference, :func:`kl_estimate` (Schulman 2020, "Approximating KL
  divergence": k1, k2, k3);
- :func:`behaviour_is_current`: whether the engine's behaviour log-probs of a batch are π_θi's
  (so π_old / k1.5's reference can be read from the batch instead of a separate forward);
- samples from an older policy (``STALE``: ``ignore``, ``exclude``, ``truncated_is``):
  :func:`stale_choice` resolves a loss's ``stale`` option, :func:`stale_tokens` finds the tokens,
  :func:`truncated_is_weights` is the truncated importance weight min(π_θi/μ, C);
- :class:`PolicyGradientLoss`, the hook implementations common to all of them: advantages and
  π_old computed once per iteration in ``rz_prepare_update``, the frozen reference captured after
  the warm-up and checkpointed, the loss assembled per minibatch. A new estimator or surrogate
  (REINFORCE++, CISPO) is a subclass overriding one method; see ``docs/losses.md``.

Shapes: ``N`` rollouts, ``T-1`` next-token targets (see :mod:`reasonzoo.types`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .ranges import ranged
from .registry import hookimpl
from .types import LossOutput, TrainBatch

#: Baselines b_i computed over the group of rollout i (all of them see only the group's returns).
BASELINES = ("mean", "loo", "logmeanexp")
#: Advantage scales: ``group`` = group std (GRPO, DeepSeekMath §4.1.2), ``batch`` = std of the
#: batch's returns (TRL's ``scale_rewards="batch"``), ``none`` = unscaled (Dr.GRPO §3.2).
SCALES = ("group", "batch", "none")
#: Aggregation modes: see :func:`aggregate`.
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
#: KL estimators: see :func:`kl_estimate`.
KL_ESTIMATORS = ("k1", "k2", "k3")
#: How a loss treats tokens sampled by an older policy version than the one being updated
#: (``loss.stale``): ``ignore`` = as if π_θi had sampled them, ``exclude`` = out of the loss,
#: ``truncated_is`` = their loss terms weighted by min(π_θi/μ, C). See :func:`truncated_is_weights`.
STALE = ("ignore", "exclude", "truncated_is")


def _group_sums(values: torch.Tensor, group_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group sum and count, indexed by group id: ``(G,)`` each, ``G = max id + 1``."""
    n_groups = int(group_index.max()) + 1 if len(group_index) else 0
    sums = values.new_zeros(n_groups).index_add_(0, group_index, values)
    counts = values.new_zeros(n_groups).index_add_(0, group_index, torch.ones_like(values))
    return sums, counts


def group_mean(values: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over each row's group: ``(N,)``, ``(N,)`` long → ``(N,)``."""
    sums, counts = _group_sums(values, group_index)
    return (sums / counts.clamp(min=1))[group_index]


def group_std(values: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """Standard deviation (unbiased, n−1, as ``torch.std``, TRL and verl use) over each row's
    group, 0 for a group of one: ``(N,)`` → ``(N,)``."""
    dev = values - group_mean(values, group_index)
    sq, counts = _group_sums(dev * dev, group_index)
    return (sq / (counts - 1).clamp(min=1)).sqrt()[group_index]


def group_baselines(returns: torch.Tensor, group_index: torch.Tensor, kind: str = "mean", tau: float = 1.0) -> torch.Tensor:
    """Baseline b_i for each rollout from the returns of its group ``(N,)`` → ``(N,)``.

    - ``mean``: the group mean r̄ (REINFORCE with a mean baseline; GRPO's centring; k1.5's
      τ·log Z in practice, §2.3.2);
    - ``loo``: leave-one-out, b_i = (Σ_j r_j − r_i)/(k − 1) (RLOO, Ahmadian et al. 2024,
      arXiv 2402.14740, its RLOO estimator), so r_i − b_i = k/(k−1)·(r_i − r̄); 0 for a group of one;
    - ``logmeanexp``: τ·log mean_j exp(r_j/τ) (k1.5 §2.3.2, the sample estimate of τ·log Z).

    :raises ValueError: unknown ``kind``.
    """
    if kind == "mean":
        return group_mean(returns, group_index)
    if kind == "loo":
        sums, counts = _group_sums(returns, group_index)
        k = counts[group_index]
        return torch.where(k > 1, (sums[group_index] - returns) / (k - 1).clamp(min=1), returns)
    if kind == "logmeanexp":
        out = torch.empty_like(returns)
        for g in group_index.unique():
            rows = group_index == g
            out[rows] = tau * (torch.logsumexp(returns[rows] / tau, 0) - math.log(int(rows.sum())))
        return out
    raise ValueError(f"baseline {kind!r}: allowed values are {', '.join(BASELINES)}")


def scale_advantages(adv: torch.Tensor, returns: torch.Tensor, group_index: torch.Tensor, scale: str,
                     eps: float = 1e-6) -> torch.Tensor:
    """Divide centred advantages ``(N,)`` by a spread of the returns ``(N,)``: ``group`` → the
    group's std + eps (GRPO), ``batch`` → the std of all returns + eps, ``none`` → unchanged
    (Dr.GRPO: the std division biases toward easy and hard prompts).

    :raises ValueError: unknown ``scale``.
    """
    if scale == "group":
        return adv / (group_std(returns, group_index) + eps)
    if scale == "batch":
        return adv / ((returns.std() if len(returns) > 1 else returns.new_zeros(())) + eps)
    if scale == "none":
        return adv
    raise ValueError(f"advantage scale {scale!r}: allowed values are {', '.join(SCALES)}")


def uniform_groups(returns: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: the row's group has every return equal (no reward variance: a zero
    group-centred advantage for every row; DAPO's dynamic sampling drops such groups)."""
    dev = (returns - group_mean(returns, group_index)).abs()
    spread, _ = _group_sums(dev, group_index)
    return spread[group_index] <= 1e-12


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                      clip_low: float | None, clip_high: float | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token policy-gradient loss ``−min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A)``, ρ = π/π_old.

    PPO's clipped objective (Schulman et al. 2017, eq. 7) as GRPO uses it (DeepSeekMath eq. 3),
    with DAPO's decoupled bounds (Yu et al. 2025, arXiv 2503.14476 §3.1, clip-higher). With both
    bounds ``None`` it is the unclipped ``−ρ·A``, whose gradient at π = π_old is REINFORCE's
    ``−A·∇log π``.

    :param logp: ``(N, T-1)`` log π of each target under the current parameters (with grad).
    :param old_logp: ``(N, T-1)`` log π_old (no grad).
    :param adv: ``(N,)`` per-rollout or ``(N, T-1)`` per-token advantages.
    :param clip_low: ε_low in [0, 1) or ``None`` (no lower clip).
    :param clip_high: ε_high ≥ 0 or ``None`` (no upper clip).
    :returns: ``(loss (N, T-1), stats)``; ``stats`` holds ``(N, T-1)`` bool ``clipped_low`` /
        ``clipped_high`` (where the clipped branch is taken and its gradient is zero) and
        ``ratio`` (detached).
    """
    a = adv[:, None] if adv.dim() == 1 else adv
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * a
    lo = 1.0 - clip_low if clip_low is not None else -math.inf
    hi = 1.0 + clip_high if clip_high is not None else math.inf
    clipped = ratio.clamp(lo, hi) * a
    loss = -torch.minimum(unclipped, clipped)
    r = ratio.detach()
    stats = {"ratio": r, "clipped_low": (r < lo) & (a < 0), "clipped_high": (r > hi) & (a > 0)}
    return loss, stats


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π (Schulman 2020, "Approximating KL
    divergence"); with x = log π_ref − log π at the sampled token:

    - ``k1`` = −x (unbiased, high variance, may be negative);
    - ``k2`` = x²/2 (biased, low variance);
    - ``k3`` = exp(x) − 1 − x (unbiased, ≥ 0, low variance; GRPO's estimator, DeepSeekMath eq. 4).

    ``(N, T-1)``, ``(N, T-1)`` → ``(N, T-1)``. :raises ValueError: unknown ``kind``.
    """
    x = ref_logp - logp
    if kind == "k1":
        return -x
    if kind == "k2":
        return 0.5 * x * x
    if kind == "k3":
        return torch.exp(x) - 1 - x
    raise ValueError(f"KL estimator {kind!r}: allowed values are {', '.join(KL_ESTIMATORS)}")


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, mode: str, norm_length: float = 1.0) -> tuple[torch.Tensor, float]:
    """Reduce a per-token loss ``(N, T-1)`` over the tokens where ``mask`` ``(N, T-1)`` is 1.

    Rows with no token in ``mask`` are left out (a filtered rollout, a ReST row not chosen).

    - ``token-mean``: Σ loss / Σ mask, every token weighs the same (DAPO §3.3, verl's default);
      a mean over tokens;
    - ``seq-mean-token-mean``: mean over rows of each row's token mean (GRPO, DeepSeekMath eq. 3:
      (1/G) Σ_i (1/|o_i|) Σ_t); a mean over rows;
    - ``seq-mean-token-sum``: mean over rows of each row's token sum (the sequence log-prob of
      REINFORCE and RLOO, one action per response); a mean over rows;
    - ``seq-mean-token-sum-norm``: seq-mean-token-sum / ``norm_length``, a constant (Dr.GRPO
      §3.2: the generation budget, not the response length); a mean over rows. verl's version
      divides by the padded width of the batch instead, which changes from batch to batch.

    :returns: ``(loss, denominator)``: the scalar and the number of units (tokens or rows) it is a
        mean over, for :class:`reasonzoo.types.LossOutput`. With no unit the loss is a zero that
        keeps the graph, denominator 0.
    :raises ValueError: unknown ``mode``.
    """
    m = mask.to(token_loss.dtype)
    summed = (token_loss * m).sum(-1)  # (N,)
    n_tok = m.sum(-1)  # (N,)
    rows = n_tok > 0
    if mode == "token-mean":
        d = float(n_tok.sum())
        return summed.sum() / max(d, 1.0), d
    d = float(rows.sum())
    if mode == "seq-mean-token-mean":
        per_row = summed / n_tok.clamp(min=1)
    elif mode == "seq-mean-token-sum":
        per_row = summed
    elif mode == "seq-mean-token-sum-norm":
        per_row = summed / norm_length
    else:
        raise ValueError(f"aggregation {mode!r}: allowed values are {', '.join(AGGREGATIONS)}")
    return (per_row * rows).sum() / max(d, 1.0), d


@dataclass
class SequencePGConfig:
    """Options of an unclipped sequence-level policy-gradient loss (``loss/reinforce``,
    ``loss/rloo``): they differ only in the baseline, so they share this config."""

    aggregation: str = "seq-mean-token-sum"  #: how token losses are reduced (sequence log-prob: the papers')
    norm_length: int = ranged(0, ge=0)  #: seq-mean-token-sum-norm's constant; 0 = generation.max_new_tokens
    kl_coef: float = ranged(0.0, ge=0)  #: weight of the KL to the frozen post-warm-up policy; 0 = no reference
    kl_estimator: str = "k3"  #: k1, k2 or k3 (Schulman 2020)
    stale: str = "truncated_is"  #: tokens from older policy versions: ignore, exclude or truncated_is (weight min(π_θi/μ, C))
    stale_is_cap: float = ranged(2.0, gt=0)  #: C of truncated_is (verl's truncated IS: 2.0)
    exclude_stale_segments: bool = False  #: old name of stale: exclude (true = exclude)
    reuse_behaviour_logprobs: bool = True  #: π_old from the engine's log-probs where exact (behaviour_is_current); false = always a forward


def stale_choice(cfg: Any, default: str) -> tuple[str, float]:
    """Resolve a loss config's ``stale`` and ``stale_is_cap`` (with the old key
    ``exclude_stale_segments: true`` read as ``stale: exclude``).

    :param cfg: the loss's config dataclass (fields ``stale``, ``stale_is_cap``,
        ``exclude_stale_segments``; a missing one takes ``default``, 2.0, False).
    :param default: the loss's default ``stale``: ``exclude_stale_segments: true`` replaces it;
        with any other explicit value the two keys conflict.
    :returns: ``(stale, cap)``.
    :raises ValueError: an unknown ``stale``, ``stale_is_cap <= 0``, or
        ``exclude_stale_segments: true`` beside ``stale`` set to neither ``exclude`` nor the default.
    """
    stale = getattr(cfg, "stale", default)
    cap = getattr(cfg, "stale_is_cap", 2.0)
    if stale not in STALE:
        raise ValueError(f"loss.stale={stale!r}: allowed values are {', '.join(STALE)}")
    if not cap > 0:
        raise ValueError(f"loss.stale_is_cap={cap}: out of range; allowed: > 0")
    if getattr(cfg, "exclude_stale_segments", False):
        if stale not in ("exclude", default):
            raise ValueError(f"loss.exclude_stale_segments=true (the old name of loss.stale=exclude) conflicts with "
                             f"loss.stale={stale}: set only loss.stale")
        stale = "exclude"
    return stale, float(cap)


def stale_tokens(ctx, batch: TrainBatch, mask: torch.Tensor) -> torch.Tensor:
    """``(N, T-1)`` bool: the tokens in ``mask`` ``(N, T-1)`` sampled by an older policy version than
    ``ctx.policy_version`` (``TrainBatch.token_versions`` < it: segments of partial rollouts started
    by an earlier policy, rollouts generated ahead in an asynchronous run)."""
    return (mask > 0) & (batch.token_versions < ctx.policy_version)


def truncated_is_weights(prox_logp: torch.Tensor, behaviour_logp: torch.Tensor, stale: torch.Tensor, cap: float
                         ) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance weights of stale tokens: w = min(π_θi(a_t) / μ(a_t), C) where ``stale``,
    1 elsewhere; no gradient flows through w.

    The weight moves a token sampled by an older behaviour policy μ onto the policy the update's
    expectation is over, π_θi (the iterate the update starts from): AReaL's decoupled PPO
    objective (Fu et al. 2025, arXiv 2505.24298; its decoupled PPO objective), whose behaviour-to-proximal ratio
    π_prox/π_behav is this w with π_prox = π_θi, here truncated at C as IMPALA's ρ̄ (Espeholt et
    al. 2018, arXiv 1802.01561, eq. 1: ρ_t = min(ρ̄, π/μ)) and as verl's truncated rollout IS
    (``rollout_is_threshold: 2.0``, token level, truncate mode). μ is what the engine recorded,
    the log-prob of the *sampling* distribution: at ``generation.temperature != 1`` or
    ``top_p != 1`` that is the scaled / truncated distribution while π_θi is the trainer's
    unscaled forward, so the ratio would mix staleness with the temperature (it would not be 1
    even for a current token); the losses refuse ``truncated_is`` there once a batch holds stale
    tokens in the loss (:func:`check_truncated_is_sampling`).

    :param prox_logp: ``(N, T-1)`` log π_θi of each target (detached: the prepare forward at the
        iteration's start weights, or the loss's own forward in a single-step update).
    :param behaviour_logp: ``(N, T-1)`` log μ, ``TrainBatch.behaviour_logprobs``.
    :param stale: ``(N, T-1)`` bool, the tokens to weight (:func:`stale_tokens`).
    :param cap: C > 0.
    :returns: ``(w (N, T-1), stats)``; ``stats``: ``stale_is_weight_mean`` (mean w over stale
        tokens; 1.0 when none) and ``stale_is_clipped_frac`` (share of stale tokens with
        π_θi/μ > C; 0.0 when none).
    """
    ratio = torch.exp(prox_logp.detach().float() - behaviour_logp.float())  # (N, T-1)
    w = torch.where(stale, ratio.clamp(max=cap), torch.ones_like(ratio))
    n = int(stale.sum())
    stats = {"stale_is_weight_mean": float(w[stale].mean()) if n else 1.0,
             "stale_is_clipped_frac": float((ratio[stale] > cap).sum()) / n if n else 0.0}
    return w, stats


def check_truncated_is_sampling(ctx) -> None:
    """Refuse ``stale: truncated_is`` when the behaviour log-probs are not of π itself; the losses
    call it in ``rz_prepare_update`` when the batch holds stale tokens in the loss (a run with none,
    e.g. synchronous rollouts, may sample at any temperature).

    :raises ValueError: ``generation.temperature != 1`` or ``generation.top_p != 1`` (one line
        naming both keys and the alternatives).
    """
    gen = ctx.cfg.generation
    if float(gen.temperature) != 1.0 or float(gen.top_p) != 1.0:
        raise ValueError(f"loss.stale=truncated_is needs generation.temperature=1 and generation.top_p=1 (got "
                         f"{gen.temperature}, {gen.top_p}): the engine's behaviour log-probs are of the scaled "
                         f"distribution, not of π; set loss.stale=ignore or loss.stale=exclude")


def has_dropout(model) -> bool:
    """True when a forward in train mode is stochastic (a dropout module or attention dropout > 0)."""
    if float(getattr(getattr(model, "config", None), "attention_dropout", 0.0) or 0.0) > 0:
        return True
    return any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def single_step(ctx, batch: TrainBatch) -> bool:
    """True when the update of ``batch`` is one optimizer step at θ_old with a deterministic
    forward (``train.epochs == 1``, ``train.minibatch_size >= N``, no dropout): every loss
    forward then runs at θ_old, so its detached log-probs are π_old's exactly."""
    train = ctx.cfg.train
    return train.epochs == 1 and train.minibatch_size >= len(batch) and not has_dropout(ctx.policy.model)


def behaviour_is_current(ctx, batch: TrainBatch, mask: torch.Tensor | None = None) -> bool:
    """True when the batch's behaviour log-probs (``TrainBatch.behaviour_logprobs``, the engine's)
    are the current policy π_θi's own on every token that enters the loss, so they may stand in
    for the trainer's no-grad forward at θ_i (π_old of the PPO-style ratio; k1.5's reference,
    §2.3.2). All of these must hold:

    - sampling at ``generation.temperature == 1`` and ``generation.top_p == 1`` (otherwise the
      engine records the log-probs of the temperature-scaled, renormalised distribution, which is
      not π_θi);
    - every token in ``mask`` was produced by the current ``ctx.policy_version``
      (``TrainBatch.token_versions``): no stale segment of a partial rollout, sampled by an older
      policy, enters the loss;
    - the engine declares its log-probs equal to the trainer's forward
      (``ctx.engine.logprobs_match_policy``, see :class:`reasonzoo.engine.Engine`; an engine
      without the attribute, or no engine, counts as False).

    The trainer's forward and the engine both run the model in eval mode (no dropout), so a model
    with dropout does not change the answer. The agreement this relies on is tested per engine:
    ``tests/test_engine_torch.py::test_logprobs_equal_teacher_forced`` (fp32, ~1e-6) and
    ``tests/test_engine_vllm.py`` (``engine.dtype=float32``, within ``TOL`` = 1e-4).

    :param mask: ``(N, T-1)`` the tokens that enter the loss; default ``batch.response_mask``.
    :returns: a Python bool (one decision for the whole batch).
    """
    gen = ctx.cfg.generation
    if float(gen.temperature) != 1.0 or float(gen.top_p) != 1.0:
        return False
    if not bool(getattr(ctx.engine, "logprobs_match_policy", False)):
        return False
    m = batch.response_mask if mask is None else mask
    return bool(((batch.token_versions == ctx.policy_version) | (m <= 0)).all())


class PolicyGradientLoss:
    """Hook implementations shared by the policy-gradient losses (a base for loss plugins).

    Per iteration (``rz_prepare_update``, full batch, no grad): ``pg/advantage`` ``(N,)`` from
    :meth:`advantages`, ``pg/keep`` ``(N,)`` from :meth:`keep_rows`, ``pg/old_logprob``
    ``(N, T-1)`` (π_old: skipped when the update is a single step, :func:`single_step`, where the
    loss's own detached forward is π_old; else, with ``reuse_behaviour_logprobs`` and
    :func:`behaviour_is_current`, the batch's behaviour log-probs, which then are π_old's; else
    the trainer's no-grad forward, exact at any sampling temperature and for stale segments)
    and, with ``kl_coef > 0``, ``pg/ref_logprob`` ``(N, T-1)`` under the frozen reference. Per minibatch (``rz_loss``): :meth:`token_loss` + kl_coef·KL per token, reduced by
    :func:`aggregate` over the response tokens of kept rows.

    Samples from an older policy (tokens whose ``TrainBatch.token_versions`` < ``ctx.policy_version``:
    partial-rollout segments begun by an earlier policy, rollouts generated one iteration ahead),
    option ``stale``:

    - ``ignore``: they enter the loss as if π_θi had sampled them (the surrogate's ratio is
      π_θ/π_θi, the behaviour policy μ plays no part);
    - ``exclude``: they leave the loss (mask, KL term and, for ``loss/ppo``, the value loss);
    - ``truncated_is``: each one's :meth:`token_loss` term is multiplied by
      w = min(π_θi/μ, ``stale_is_cap``) (:func:`truncated_is_weights`, no gradient through w);
      π_θi is the forward at the iteration's start weights (``pg/old_logprob``, or the loss's own
      detached forward in a single-step update), never the behaviour log-probs (which are μ's
      for these tokens); μ = ``TrainBatch.behaviour_logprobs``. So the surrogate is AReaL's
      decoupled objective, E_μ[w · min(ρA, clip(ρ)A)] with ρ = π_θ/π_θi, truncated. The KL term
      is not weighted (as in verl, whose rollout IS weights only the policy loss). Refused at
      ``generation.temperature != 1`` or ``top_p != 1`` once a batch holds stale tokens in the
      loss (:func:`check_truncated_is_sampling`).

    With no stale token in the loss the three give the same loss bit for bit (the loss of
    ``ignore``, no weight multiplied in).

    The frozen reference is the policy after the warm-up: captured (a state-dict copy) at the first
    ``rz_iteration_start`` of a fresh run, saved with every checkpoint and restored on resume.

    Settings are read from the subclass's config dataclass when it has the field, else the class
    default below: ``aggregation``, ``norm_length`` (0 = ``generation.max_new_tokens``),
    ``clip_low``, ``clip_high``, ``kl_coef``, ``kl_estimator``, ``reuse_behaviour_logprobs``;
    ``stale``, ``stale_is_cap`` and ``exclude_stale_segments`` through :func:`stale_choice`
    (default ``stale``: the class attribute ``stale_default``).

    Metrics: ``loss/reused_behaviour_logprobs`` (losses that read π_old): 1 when the iteration's
    π_old was read from the behaviour log-probs, 0 when it came from a forward (the prepare
    forward, or the loss's own in a single-step update). ``loss/stale_frac``: share of the
    response tokens of kept rows (the loss's tokens before any exclusion) from older versions.
    With ``truncated_is``, ``loss/stale_is_weight_mean`` (mean w over those stale tokens, 1 when
    none) and ``loss/stale_is_clipped_frac`` (share of them where the cap binds).
    """

    name = "pg"  #: key prefix of the plugin's metrics and checkpoint state (subclasses: their name)
    needs_old_logprobs = True  #: False for a loss that never reads π_old (plain NLL, ReST)
    stale_default = "truncated_is"  #: ``stale`` when the config has no such field; the default the old key may replace
    _defaults = {"aggregation": "token-mean", "norm_length": 0, "clip_low": None, "clip_high": None,
                 "kl_coef": 0.0, "kl_estimator": "k3", "reuse_behaviour_logprobs": True}

    def __init__(self, cfg: Any):
        self.cfg = cfg
        s = {k: getattr(cfg, k, v) for k, v in self._defaults.items()}
        if s["aggregation"] not in AGGREGATIONS:
            raise ValueError(f"loss.aggregation={s['aggregation']!r}: allowed values are {', '.join(AGGREGATIONS)}")
        if s["kl_estimator"] not in KL_ESTIMATORS:
            raise ValueError(f"loss.kl_estimator={s['kl_estimator']!r}: allowed values are {', '.join(KL_ESTIMATORS)}")
        if s["clip_low"] is not None and not 0 <= s["clip_low"] < 1:
            raise ValueError(f"loss.clip_low={s['clip_low']}: out of range; allowed: [0, 1) or null (no clip)")
        if s["clip_high"] is not None and not s["clip_high"] >= 0:
            raise ValueError(f"loss.clip_high={s['clip_high']}: out of range; allowed: >= 0 or null (no clip)")
        if not s["kl_coef"] >= 0:
            raise ValueError(f"loss.kl_coef={s['kl_coef']}: out of range; allowed: >= 0")
        if not s["norm_length"] >= 0:
            raise ValueError(f"loss.norm_length={s['norm_length']}: out of range; allowed: >= 0 (0 = generation.max_new_tokens)")
        s["stale"], s["stale_is_cap"] = stale_choice(cfg, self.stale_default)
        self.s = s
        self.reference: dict[str, torch.Tensor] | None = None  # frozen π_ref weights (kl_coef > 0)
        self.reused_behaviour = False  # this iteration's π_old is the batch's behaviour log-probs (set in rz_prepare_update)

    # ---- what subclasses define -----------------------------------------------------------------

    def advantages(self, ctx, batch: TrainBatch) -> torch.Tensor:
        """``(N,)`` (or ``(N, T-1)``) advantages of the full batch; called once per iteration."""
        raise NotImplementedError

    def keep_rows(self, ctx, batch: TrainBatch) -> torch.Tensor:
        """``(N,)`` bool: rows that enter the loss (all by default)."""
        return torch.ones(len(batch), dtype=torch.bool, device=batch.returns.device)

    def token_loss(self, logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor):
        """Per-token loss ``(N, T-1)`` and stats; the (clipped) surrogate by default."""
        return clipped_surrogate(logp, old_logp, adv, self.s["clip_low"], self.s["clip_high"])

    # ---- shared machinery ----------------------------------------------------------------------

    def mask(self, ctx, batch: TrainBatch) -> torch.Tensor:
        """``(N, T-1)`` float: response tokens of kept rows (current-version tokens only with
        ``stale: exclude``)."""
        return self._version_mask(ctx, batch) * batch.extras["pg/keep"][:, None]

    def _version_mask(self, ctx, batch: TrainBatch) -> torch.Tensor:
        """``(N, T-1)`` float: the response tokens that may enter the loss before ``pg/keep`` is
        known (current-version ones only with ``stale: exclude``)."""
        m = batch.response_mask
        if self.s["stale"] == "exclude":
            m = m * ~stale_tokens(ctx, batch, m)
        return m

    def norm_length(self, ctx) -> float:
        """``seq-mean-token-sum-norm``'s constant: ``norm_length``, or ``generation.max_new_tokens`` when 0."""
        return float(self.s["norm_length"] or ctx.cfg.generation.max_new_tokens)

    def reference_logprobs(self, ctx, batch: TrainBatch) -> torch.Tensor:
        """``(N, T-1)`` log-probs under the frozen reference: its weights are swapped into the
        model for one forward and the current ones put back (exact, no second model kept)."""
        model = ctx.policy.model
        current = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.reference)
        try:
            return ctx.policy.token_logprobs(batch.input_ids, batch.attention_mask)
        finally:
            model.load_state_dict(current)

    @hookimpl
    def rz_iteration_start(self, ctx):
        if self.s["kl_coef"] > 0 and self.reference is None:  # first iteration of a fresh run: after the warm-up
            self.reference = {k: v.detach().clone() for k, v in ctx.policy.model.state_dict().items()}

    @hookimpl
    def rz_checkpoint_state(self, ctx):
        return {f"loss/{self.name}": {"reference": self.reference}}

    @hookimpl
    def rz_load_state(self, ctx, state):
        s = state.get(f"loss/{self.name}")
        if s is None:
            raise KeyError(f"checkpoint holds no loss/{self.name} state (was the run started with another loss?)")
        self.reference = s["reference"]

    @hookimpl
    def rz_prepare_update(self, ctx, batch):
        out = {"pg/advantage": self.advantages(ctx, batch).float(),
               "pg/keep": self.keep_rows(ctx, batch).float()}
        self.reused_behaviour = False
        loss_mask = self._version_mask(ctx, batch) * out["pg/keep"][:, None]  # = mask() of the full batch
        weighs_stale = self.s["stale"] == "truncated_is" and bool(stale_tokens(ctx, batch, loss_mask).any())
        if weighs_stale:
            check_truncated_is_sampling(ctx)
        if (self.needs_old_logprobs or weighs_stale) and not single_step(ctx, batch):  # π_θi: the surrogate's π_old, truncated_is's numerator
            if self.s["reuse_behaviour_logprobs"] and behaviour_is_current(ctx, batch, self._version_mask(ctx, batch)):
                out["pg/old_logprob"] = batch.behaviour_logprobs  # the engine's, = π_θold's (no forward)
                self.reused_behaviour = True
            else:
                out["pg/old_logprob"] = ctx.policy.token_logprobs(batch.input_ids, batch.attention_mask)  # θ_old
        if self.s["kl_coef"] > 0:
            if self.reference is None:
                raise RuntimeError(f"loss/{self.name}: kl_coef > 0 but no reference captured (rz_iteration_start not called)")
            out["pg/ref_logprob"] = self.reference_logprobs(ctx, batch)
        return out

    @hookimpl
    def rz_loss(self, ctx, batch):
        logp = ctx.policy.token_logprobs(batch.input_ids, batch.attention_mask)  # (N, T-1)
        old = batch.extras["pg/old_logprob"] if "pg/old_logprob" in batch.extras else logp.detach()  # π_θi
        adv = batch.extras["pg/advantage"]
        mask = self.mask(ctx, batch)
        tok, stats = self.token_loss(logp, old, adv)
        metrics: dict[str, float] = {}
        candidates = batch.response_mask * batch.extras["pg/keep"][:, None]  # the loss's tokens before any exclusion
        stale = stale_tokens(ctx, batch, candidates)
        metrics["loss/stale_frac"] = float(stale.sum()) / max(float((candidates > 0).sum()), 1.0)
        if self.s["stale"] == "truncated_is":
            stale_in = stale & (mask > 0)
            w, wstats = truncated_is_weights(old, batch.behaviour_logprobs, stale_in, self.s["stale_is_cap"])
            if bool(stale_in.any()):  # none: the loss stays ignore's bit for bit
                tok = tok * w
            metrics.update({f"loss/{k}": v for k, v in wstats.items()})
        pg_loss, denom = aggregate(tok, mask, self.s["aggregation"], self.norm_length(ctx))
        loss = pg_loss
        if self.s["kl_coef"] > 0:
            kl = kl_estimate(logp, batch.extras["pg/ref_logprob"], self.s["kl_estimator"])
            kl_loss, _ = aggregate(kl, mask, self.s["aggregation"], self.norm_length(ctx))
            loss = pg_loss + self.s["kl_coef"] * kl_loss
            metrics["loss/kl"] = float(kl_loss.detach())
        with torch.no_grad():  # every key on every call: the trainer combines micro-batch metrics key by key
            sel = mask > 0
            rows = sel.any(-1)
            n_tok = max(float(sel.sum()), 1.0)
            a = adv.abs() if adv.dim() == 1 else adv.abs().mean(-1)
            metrics[f"loss/{self.name}"] = float(pg_loss.detach())
            if self.needs_old_logprobs:
                metrics["loss/reused_behaviour_logprobs"] = float(self.reused_behaviour)
            metrics["loss/advantage_abs"] = float(a[rows].mean()) if bool(rows.any()) else 0.0
            if "ratio" in stats:
                r = stats["ratio"][sel]
                metrics["loss/ratio_max"] = float(r.max()) if r.numel() else 1.0
                metrics["loss/ratio_min"] = float(r.min()) if r.numel() else 1.0
                metrics["loss/clipfrac_low"] = float(stats["clipped_low"][sel].sum()) / n_tok
                metrics["loss/clipfrac_high"] = float(stats["clipped_high"][sel].sum()) / n_tok
        return LossOutput(loss, metrics, denominator=denom)
