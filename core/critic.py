"""A learned critic for PPO (``loss/ppo``): value heads and models, generalised advantage
estimation and the clipped value loss.

- :func:`outcome_rewards`: the per-token reward of an outcome-rewarded response, the rollout's
  return on its last response token and 0 elsewhere (the RLHF convention: Ziegler et al. 2019,
  Ouyang et al. 2022; "The N implementation details of RLHF with PPO", Huang et al. 2023);
- :func:`gae`: generalised advantage estimation (Schulman et al. 2016, arXiv 1506.02438, eq. 16)
  by its backward recursion δ_t = r_t + γV(s_{t+1}) − V(s_t), Â_t = δ_t + γλÂ_{t+1}, and the
  value targets R_t = Â_t + V(s_t);
- :func:`value_loss`: PPO's value loss (Schulman et al. 2017, arXiv 1707.06347, eq. 9's L^VF) with
  the value clipping of the reference implementations, ½·max((V − R)², (V_old + clip(V − V_old,
  −ε_v, ε_v) − R)²);
- :func:`whiten`: masked standardisation of advantages;
- :class:`ValueHead` (a scalar linear head on the policy's last hidden state, shared trunk) and
  :class:`ValueModel` (a separate trunk of the policy's architecture with its own head).

Shapes: ``N`` rollouts, ``L`` columns (``T-1`` next-token targets of :class:`reasonzoo.types.TrainBatch`:
column t is the action ``input_ids[:, t + 1]`` taken in state ``input_ids[:, : t + 1]``, so its
value V(s_t) is read from the hidden state at position t).
"""
from __future__ import annotations

import copy

import torch


def outcome_rewards(returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards ``(N, L)``: ``returns[n]`` on the last column where ``mask[n]`` is 1, 0
    elsewhere (a row with no masked column gets no reward).

    :param returns: ``(N,)`` total return per rollout (outcome + length reward).
    :param mask: ``(N, L)`` 1 on response tokens (contiguous per row).
    """
    m = mask > 0
    cols = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m, cols, -1).amax(-1)  # (N,) -1 for a row with no token
    out = torch.zeros(m.shape, dtype=returns.dtype, device=returns.device)
    rows = last >= 0
    out[rows.nonzero().squeeze(-1), last[rows]] = returns[rows]
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's masked columns (Schulman et al. 2016,
    arXiv 1506.02438, eq. 16, by its recursion):

        δ_t = r_t + γ V(s_{t+1}) − V(s_t),   Â_t = δ_t + γλ Â_{t+1},   R_t = Â_t + V(s_t)

    computed backwards from the last masked column of each row, whose successor is terminal
    (V = 0, Â = 0: the response ended, by EOS or by the length limit). Unmasked columns (prompt,
    padding) get Â = R = 0 and do not carry the recursion.

    :param rewards: ``(N, L)`` per-token rewards (e.g. :func:`outcome_rewards`).
    :param values: ``(N, L)`` V(s_t) of the policy that sampled (no grad needed).
    :param mask: ``(N, L)`` 1 on the response tokens; each row's ones must be contiguous.
    :param gamma: discount γ in [0, 1].
    :param lam: λ in [0, 1] (λ = 1: Monte-Carlo returns minus V; λ = 0: one-step TD).
    :returns: ``(advantages, returns)``, both ``(N, L)``, float32, 0 off the mask.
    :raises ValueError: γ or λ outside [0, 1].
    """
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma={gamma}: out of range; allowed: [0, 1]")
    if not 0 <= lam <= 1:
        raise ValueError(f"lam={lam}: out of range; allowed: [0, 1]")
    m = (mask > 0).float()
    r, v = rewards.float() * m, values.float() * m
    adv = torch.zeros_like(v)
    next_v = v.new_zeros(v.shape[0])
    next_a = v.new_zeros(v.shape[0])
    for t in range(v.shape[1] - 1, -1, -1):
        delta = r[:, t] + gamma * next_v - v[:, t]
        a = (delta + gamma * lam * next_a) * m[:, t]
        adv[:, t] = a
        next_v, next_a = v[:, t], a  # 0 on unmasked columns: the row's successor there is terminal
    return adv, (adv + v) * m


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x − mean) / (std + eps)`` over the masked entries (unbiased std, n − 1), 0 off the mask;
    ``(N, L)`` → ``(N, L)``. Fewer than two masked entries: centred only."""
    m = (mask > 0).to(x.dtype)
    n = m.sum()
    if n < 1:
        return x * 0
    mean = (x * m).sum() / n
    dev = (x - mean) * m
    if n < 2:
        return dev
    std = ((dev * dev).sum() / (n - 1)).sqrt()
    return dev / (std + eps)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped value loss (PPO, Schulman et al. 2017, eq. 9's L^VF_t, with the value
    clipping of OpenAI baselines' ``ppo2`` and of RLHF PPO, Huang et al. 2023, detail "value
    function loss clipping"):

        ½ · max( (V − R)², (V_old + clip(V − V_old, −ε_v, ε_v) − R)² )

    :param values: ``(N, L)`` V under the current parameters (with grad).
    :param old_values: ``(N, L)`` V_old at the start of the update (no grad).
    :param returns: ``(N, L)`` value targets R (no grad).
    :param clip: ε_v ≥ 0, or ``None`` for the unclipped ½(V − R)².
    :returns: ``(loss (N, L), clipped (N, L) bool)``: ``clipped`` where the clipped branch is the
        larger (its gradient is then 0 once V is outside V_old ± ε_v).
    """
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * unclipped, torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    v_clip = old_values + (values - old_values).clamp(-clip, clip)
    clipped = (v_clip - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped), (clipped > unclipped).detach()


class ValueHead(torch.nn.Module):
    """Scalar value head on a hidden state: ``Linear(H, 1)`` with weight and bias 0, so V ≡ 0 at
    the start (the initial values are not a random function of the features) and no random
    number is drawn (the run's random streams stay those of the other losses).

    ``forward``: ``(N, T, H)`` hidden states → ``(N, T-1)`` values V(s_t), t < T-1, in float32.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden[:, :-1].float()).squeeze(-1)


class ValueModel(torch.nn.Module):
    """A separate critic: a copy of the policy's decoder trunk (its own parameters) and a
    :class:`ValueHead`.

    :param policy_model: the policy's HF causal LM; its ``get_decoder()`` module (``LlamaModel``,
        ``Qwen2Model``, ...) is deep-copied. :meth:`init_from` loads the policy trunk's weights.
    ``forward(input_ids (N, T), attention_mask (N, T))`` → ``(N, T-1)`` values.
    """

    def __init__(self, policy_model):
        super().__init__()
        self.trunk = copy.deepcopy(policy_model.get_decoder())
        self.head = ValueHead(int(policy_model.config.hidden_size))

    def init_from(self, policy_model) -> None:
        """Copy the policy trunk's current weights in place (parameter objects unchanged, so an
        optimizer holding them stays valid)."""
        self.trunk.load_state_dict(policy_model.get_decoder().state_dict())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask
        right_padded = m is None or bool(m[:, 0].all()) and bool((m[:, 1:] <= m[:, :-1]).all())
        hidden = self.trunk(input_ids=input_ids, attention_mask=None if right_padded else m).last_hidden_state
        return self.head(hidden)
