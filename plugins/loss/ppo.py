"""PPO with a learned critic: the clipped surrogate (Schulman et al. 2017, arXiv 1707.06347, eq. 7)
on per-token GAE advantages (Schulman et al. 2016, arXiv 1506.02438, eq. 16) from a value
function trained with the clipped value loss, as RLHF applies PPO to language models (Ziegler et
al. 2019; Ouyang et al. 2022; "The N implementation details of RLHF with PPO", Huang et al. 2023).
The contrast to k1.5, whose §2.3.2 argues that a value network is not needed.

For response token t of rollout i (state s_t = prompt + response tokens before t), with
ρ_t = π_θ(a_t|s_t) / π_θold(a_t|s_t), rewards r_t = 0 except on the last response token, where
it is the rollout's total return (outcome + length reward),

    δ_t = r_t + γ V_old(s_{t+1}) − V_old(s_t),   Â_t = δ_t + γλ Â_{t+1},   R_t = Â_t + V_old(s_t)
    L(θ) = mean_t [ −min(ρ_t Â_t, clip(ρ_t, 1−ε, 1+ε) Â_t) ]
           + c_v · mean_t [ ½ max((V_θ(s_t) − R_t)², (V_old + clip(V_θ − V_old, −ε_v, ε_v) − R_t)²) ]
           (+ β · mean_t KL_t to the frozen post-warm-up policy, optional)

i.e. eq. 9 without the entropy bonus (c_2 = 0, as in RLHF PPO), and Â whitened over the batch.

Options, each one config key:

- ``critic``: ``head`` = a scalar linear head on the policy's last hidden state (shared trunk: one
  forward gives log-probs and values, one backward trains both, the value loss weighted by
  ``vf_coef``); ``model`` = a separate value model, a copy of the policy's decoder trunk with its
  own head, initialised from the policy after the warm-up (as RLHF initialises its critic from a
  trained model, not at random), trained by the same backward (its parameters get only the
  value loss's gradient).
- ``critic_lr``: the critic param group's learning rate (0 = ``train.lr``).
- ``critic_warmup``: the first ``critic_warmup`` iterations train only the critic (the policy
  gets no gradient and is not stepped; with ``critic: head`` the head fits the frozen trunk's
  features).
- ``gamma``, ``lam``: GAE's γ and λ, both 1 (Open-Reasoner-Zero, Hu et al. 2025, arXiv 2503.24290:
  PPO for reasoning from rule-based outcome rewards). λ < 1 decays the one outcome reward
  towards the first tokens of a long response (VC-PPO, Yuan et al. 2025, arXiv 2503.01491); with
  RLHF's λ = 0.95 held-out accuracy fell on the default task (docs/losses.md, measured).
- ``value_clip``: ε_v (0.2), ``null`` = unclipped; ``clip_low`` / ``clip_high``: the surrogate's ε.
- ``whiten_advantages``: standardise Â over the batch's response tokens (mean 0, std 1).
- ``aggregation``, ``kl_coef``, ``kl_estimator``, ``stale``, ``stale_is_cap``,
  ``reuse_behaviour_logprobs``: as in every policy-gradient loss
  (:class:`reasonzoo.pg.PolicyGradientLoss`; the last reads π_old from the engine's behaviour
  log-probs where they are π_θold's, :func:`reasonzoo.pg.behaviour_is_current`, instead of a
  forward). V_old always comes from the critic's own no-grad forward: the engine has no values.
- Samples from an older policy (``stale``): ``truncated_is`` (default) weights each stale token's
  surrogate term by min(π_θi/μ, C) (AReaL's decoupled PPO, arXiv 2505.24298, with
  π_prox = π_θi, truncated as IMPALA's ρ̄); the value loss is not weighted (its targets R are
  the GAE returns of the data as collected). ``exclude`` takes stale tokens out of the
  surrogate and the value loss (GAE still runs over the whole response); ``ignore`` treats
  them as π_θi's. ``exclude_stale_segments: true`` is the old name of ``stale: exclude``.

Implementation details:

- Composed from :mod:`reasonzoo.pg` (``clipped_surrogate``, ``aggregate``, ``kl_estimate``, the
  π_old and reference machinery of ``PolicyGradientLoss``, whose ``advantages()`` returns the
  ``(N, T-1)`` GAE advantages here) and :mod:`reasonzoo.critic` (``outcome_rewards``, ``gae``,
  ``whiten``, ``value_loss``, ``ValueHead``, ``ValueModel``).
- V_old, Â and R come from one no-grad critic forward over the full batch in
  ``rz_prepare_update`` (``ppo/old_value``, ``ppo/return``), before any optimizer step.
- The value loss is aggregated like the surrogate (same mask and mode), so the sum is one mean
  over the same units and micro-batches stay exact; ``vf_coef`` 0.1 (TRL's PPO default).
- The critic's parameters join the one optimizer through ``rz_trainable_parameters`` (param
  group ``critic``; AdamW, the run's betas and weight decay); the trainer clips its gradient
  norm separately from the policy's (``train/grad_norm/critic``). Its weights are saved with
  every checkpoint (this plugin's ``loss/ppo`` state) and loaded in place on resume; its
  optimizer state is in the core's optimizer state.
- A truncated response (the length limit) is treated as terminal: its successor value is 0.
- ``critic: head`` runs the HF forward with hidden states (``Policy.logprobs_and_hidden``)
  instead of the lean log-prob forward of :mod:`reasonzoo.fasttrain`.
- The optimizer is not reset between iterations (unlike loss/k15).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch

from reasonzoo import plugin
from reasonzoo.critic import ValueHead, ValueModel, gae, outcome_rewards, value_loss, whiten
from reasonzoo.pg import PolicyGradientLoss, aggregate
from reasonzoo.ranges import ranged
from reasonzoo.registry import hookimpl
from reasonzoo.types import LossOutput

CRITICS = ("head", "model")  #: loss.critic values


@dataclass
class PPOLossConfig:
    critic: str = "head"  #: head (scalar head on the policy's trunk) or model (a separate copy of the trunk)
    critic_lr: float = ranged(0.0, ge=0)  #: learning rate of the critic's param group; 0 = train.lr
    critic_warmup: int = ranged(0, ge=0)  #: first iterations in which only the critic learns
    vf_coef: float = ranged(0.1, gt=0)  #: c_v, weight of the value loss (TRL's PPO default 0.1)
    value_clip: Optional[float] = 0.2  #: ε_v, V clipped to V_old ± ε_v in the value loss; null = unclipped
    gamma: float = ranged(1.0, ge=0, le=1)  #: GAE discount γ
    lam: float = ranged(1.0, ge=0, le=1)  #: GAE λ (1: the outcome reward reaches every token undecayed)
    whiten_advantages: bool = True  #: standardise Â over the batch's response tokens
    aggregation: str = "token-mean"  #: token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm
    norm_length: int = ranged(0, ge=0)  #: seq-mean-token-sum-norm's constant; 0 = generation.max_new_tokens
    clip_low: Optional[float] = 0.2  #: ε_low of the surrogate; null = no lower clip
    clip_high: Optional[float] = 0.2  #: ε_high of the surrogate; null = no upper clip
    kl_coef: float = ranged(0.0, ge=0)  #: β, weight of the KL to the frozen post-warm-up policy (a loss term); 0 = none
    kl_estimator: str = "k3"  #: k1, k2 or k3 (Schulman 2020)
    stale: str = "truncated_is"  #: tokens from older policy versions: ignore, exclude or truncated_is (weight min(π_θi/μ, C)); docs/losses.md
    stale_is_cap: float = ranged(2.0, gt=0)  #: C of truncated_is (verl's truncated IS: 2.0)
    exclude_stale_segments: bool = False  #: old name of stale: exclude (true = exclude)
    reuse_behaviour_logprobs: bool = True  #: π_old from the engine's log-probs where exact (reasonzoo.pg.behaviour_is_current); false = always a forward


class _SharedForward:
    """Stands in for ``ctx.policy`` in the base class's ``rz_loss``: its ``token_logprobs`` returns
    the log-probs already computed by the shared value-head forward (one forward, not two)."""

    def __init__(self, policy, input_ids: torch.Tensor, logp: torch.Tensor):
        self._policy, self._ids, self._logp = policy, input_ids, logp

    def token_logprobs(self, input_ids, attention_mask):
        if input_ids is not self._ids:
            raise RuntimeError("loss/ppo: log-probs requested for another batch than the shared forward's")
        return self._logp

    def __getattr__(self, name):
        return getattr(self._policy, name)


@plugin("loss", "ppo", PPOLossConfig)
class PPOLoss(PolicyGradientLoss):
    """PPO's clipped surrogate on GAE advantages from a learned critic (value head or value model)."""

    name = "ppo"

    def __init__(self, cfg: PPOLossConfig):
        if cfg.critic not in CRITICS:
            raise ValueError(f"loss.critic={cfg.critic!r}: allowed values are {', '.join(CRITICS)}")
        if cfg.value_clip is not None and not cfg.value_clip >= 0:
            raise ValueError(f"loss.value_clip={cfg.value_clip}: out of range; allowed: >= 0 or null (no clip)")
        super().__init__(cfg)
        self.critic: torch.nn.Module | None = None  # built in rz_trainable_parameters
        self.critic_initialised = False  # critic=model: trunk copied from the post-warm-up policy
        self._prepared: dict[str, torch.Tensor] = {}

    # ---- the critic ----------------------------------------------------------------------------

    def values(self, ctx, batch, with_logprobs: bool = False):
        """``(N, T-1)`` V(s_t) of every column; with ``with_logprobs`` (``critic: head``) also the
        policy's ``(N, T-1)`` log-probs of the same forward, else ``None``."""
        if self.cfg.critic == "head":
            logp, hidden = ctx.policy.logprobs_and_hidden(batch.input_ids, batch.attention_mask)
            return self.critic(hidden), (logp if with_logprobs else None)
        self.critic.train(ctx.policy.model.training)
        return self.critic(batch.input_ids, batch.attention_mask), None

    @hookimpl
    def rz_trainable_parameters(self, ctx, policy):
        if self.cfg.critic == "head":
            self.critic = ValueHead(int(policy.model.config.hidden_size)).to(policy.device)
        else:
            self.critic = ValueModel(policy.model)  # a copy of the trunk: on the policy's device
        group = {"params": list(self.critic.parameters()), "name": "critic"}
        if self.cfg.critic_lr > 0:
            group["lr"] = self.cfg.critic_lr
        return [group]

    @hookimpl
    def rz_iteration_start(self, ctx):
        super().rz_iteration_start(ctx)
        if self.cfg.critic == "model" and not self.critic_initialised:  # first iteration of a fresh run
            self.critic.init_from(ctx.policy.model)
            self.critic_initialised = True

    @hookimpl
    def rz_checkpoint_state(self, ctx):
        out = super().rz_checkpoint_state(ctx)
        out[f"loss/{self.name}"].update(critic_kind=self.cfg.critic, critic=self.critic.state_dict(),
                                        critic_initialised=self.critic_initialised)
        return out

    @hookimpl
    def rz_load_state(self, ctx, state):
        super().rz_load_state(ctx, state)
        s = state[f"loss/{self.name}"]
        if s.get("critic_kind") != self.cfg.critic:
            raise ValueError(f"loss.critic={self.cfg.critic!r}: the checkpoint's critic is {s.get('critic_kind')!r}; "
                             f"resume with loss.critic={s.get('critic_kind')}")
        self.critic.load_state_dict(s["critic"])  # in place: the optimizer's parameters stay the same objects
        self.critic_initialised = bool(s["critic_initialised"])

    # ---- advantages (full batch, no grad) and the loss (per minibatch) ---------------------------

    def advantages(self, ctx, batch) -> torch.Tensor:
        """``(N, T-1)`` GAE advantages (whitened by default) from V_old; V_old and the value targets
        R are kept for ``rz_prepare_update``."""
        mask = batch.response_mask
        old_values, _ = self.values(ctx, batch)
        adv, ret = gae(outcome_rewards(batch.returns, mask), old_values, mask, self.cfg.gamma, self.cfg.lam)
        self._prepared = {"ppo/old_value": old_values.float() * (mask > 0), "ppo/return": ret}
        return whiten(adv, mask) if self.cfg.whiten_advantages else adv

    @hookimpl
    def rz_prepare_update(self, ctx, batch):
        out = super().rz_prepare_update(ctx, batch)  # calls advantages()
        out.update(self._prepared)
        self._prepared = {}
        return out

    @hookimpl
    def rz_loss(self, ctx, batch):
        warmup = ctx.iteration <= self.cfg.critic_warmup
        mask = self.mask(ctx, batch)
        if warmup and self.cfg.critic == "head":  # only the head learns: no gradient into the trunk
            with torch.no_grad():
                _, hidden = ctx.policy.logprobs_and_hidden(batch.input_ids, batch.attention_mask)
            values, logp = self.critic(hidden), None
        else:
            values, logp = self.values(ctx, batch, with_logprobs=not warmup)
        old, ret = batch.extras["ppo/old_value"], batch.extras["ppo/return"]
        vf_tok, clipped = value_loss(values, old, ret, self.cfg.value_clip)
        vf, denom = aggregate(vf_tok, mask, self.s["aggregation"], self.norm_length(ctx))
        with torch.no_grad():
            sel = mask > 0
            n_tok = max(float(sel.sum()), 1.0)
            err = (values.detach() - ret)[sel]
            vmetrics = {"loss/value": float(vf.detach()), "loss/value_clipfrac": float(clipped[sel].sum()) / n_tok,
                        "loss/value_mean": float(values.detach()[sel].mean()) if err.numel() else 0.0,
                        "loss/value_error_abs": float(err.abs().mean()) if err.numel() else 0.0}
        if warmup:
            return LossOutput(self.cfg.vf_coef * vf, vmetrics, denominator=denom)
        pg_ctx = ctx
        if logp is not None:  # critic: head: the base's surrogate reads the shared forward's log-probs
            pg_ctx = copy.copy(ctx)
            pg_ctx.policy = _SharedForward(ctx.policy, batch.input_ids, logp)
        pg = super().rz_loss(pg_ctx, batch)
        return LossOutput(pg.loss + self.cfg.vf_coef * vf, {**pg.metrics, **vmetrics}, denominator=pg.denominator)
