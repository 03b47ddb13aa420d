"""Typed data that flows between hooks.

Everything a hook receives or returns is one of these dataclasses (or a list of them).
They are frozen: a hook that wants to change a value returns a new object
(``dataclasses.replace``) instead of mutating its input.

Shapes: ``N`` = number of rollouts in a batch, ``T`` = padded sequence length
(prompt + response), ``T-1`` = number of next-token targets.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import torch

from .repeats import RepeatRule


class FinishReason(str, enum.Enum):
    """How a response ended (the paper's end states, §2.6.2)."""

    STOP = "stop"  #: the model emitted EOS or a stop string
    LENGTH = "length"  #: cut at the maximum response length
    REPEAT = "repeat"  #: stopped early by repeat detection
    PENDING = "pending"  #: unfinished; a partial-rollout scheduler continues it later


@dataclass(frozen=True)
class Problem:
    """One prompt with a verifiable answer.

    :ivar uid: stable identifier (samplers key their statistics on it; checkpoints store it).
    :ivar prompt: the text given to the policy.
    :ivar answer: the reference answer the reward compares against.
    :ivar difficulty: integer difficulty label (higher = harder) or ``None`` when unknown.
    :ivar solutions: reference responses (e.g. a worked solution and a direct answer), used by
        supervised warm-up and distillers; may be empty.
    :ivar meta: task-specific data (test cases for code, the generator entry for reasoning-gym).
    """

    uid: str
    prompt: str
    answer: str
    difficulty: int | None = None
    solutions: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Segment:
    """A contiguous run of response tokens produced by one policy version.

    ``response_ids[start:end]`` were sampled by the policy at ``policy_version``.
    Synchronous rollouts have one segment; partial rollouts may have several.
    """

    start: int
    end: int
    policy_version: int


@dataclass(frozen=True)
class Rollout:
    """One sampled response to a problem.

    :ivar problem: the problem it answers.
    :ivar prompt_ids: token ids of the prompt, as fed to the policy.
    :ivar response_ids: sampled token ids (without padding; includes EOS when it stopped on EOS).
    :ivar logprobs: behaviour log-prob of each sampled token under the sampling distribution,
        ``len(logprobs) == len(response_ids)``.
    :ivar finish_reason: end state.
    :ivar segments: which policy version produced which tokens (covers ``response_ids``).
    :ivar text: decoded response (special tokens removed).
    """

    problem: Problem
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishReason
    segments: tuple[Segment, ...]
    text: str

    def __post_init__(self) -> None:
        if len(self.logprobs) != len(self.response_ids):
            raise ValueError(
                f"Rollout for {self.problem.uid!r}: {len(self.response_ids)} tokens but "
                f"{len(self.logprobs)} log-probs"
            )

    @property
    def length(self) -> int:
        """Response length in tokens (what the length penalty measures)."""
        return len(self.response_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not FinishReason.PENDING


@dataclass(frozen=True)
class RewardResult:
    """The reward of one rollout.

    :ivar score: outcome reward r (the k1.5 recipe uses r in {0, 1}).
    :ivar correct: whether the answer is judged correct (the length penalty and
        prioritized sampling read this, not the score).
    :ivar token_rewards: optional dense rewards, ``((position_in_response, value), ...)``,
        e.g. a process reward model's per-step scores. Losses that do not use dense rewards
        ignore it.
    :ivar info: free-form diagnostics (extracted answer, verdicts, error message).
    :ivar in_loss: False leaves the rollout out of the loss: ``collate`` zeroes its
        ``response_mask`` row (e.g. ``reward.truncated=mask``, DAPO's overlong filtering); its
        score still enters the group baseline.
    """

    score: float
    correct: bool
    token_rewards: tuple[tuple[int, float], ...] | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    in_loss: bool = True


@dataclass(frozen=True)
class RolloutGroup:
    """The k rollouts of one problem, with their rewards once scored.

    :ivar rewards: set after the reward hook, one per rollout.
    :ivar length_rewards: set after the length-penalty hook: the already-weighted term added
        to each score (``w * len_reward``), one per rollout.
    """

    problem: Problem
    rollouts: tuple[Rollout, ...]
    rewards: tuple[RewardResult, ...] | None = None
    length_rewards: tuple[float, ...] | None = None

    @property
    def returns(self) -> tuple[float, ...]:
        """Total reward per rollout: ``r + w * len_reward`` (§2.3.3)."""
        if self.rewards is None:
            raise ValueError(f"group {self.problem.uid!r} has not been scored yet")
        extra = self.length_rewards or (0.0,) * len(self.rewards)
        return tuple(r.score + e for r, e in zip(self.rewards, extra))


@dataclass(frozen=True)
class SamplingParams:
    """How an engine samples.

    :ivar temperature: softmax temperature; 0 means greedy decoding.
    :ivar top_p: nucleus sampling threshold (1.0 = off).
    :ivar max_new_tokens: maximum response length in tokens.
    :ivar stop_strings: generation stops (``FinishReason.STOP``) at the token whose decoded text
        completes any of these strings, also when the string ends inside that token (``</answer>``
        completed by a ``>\n`` token); the tokens keep that token, ``Generation.text`` is cut right
        after the string (the string kept).
    :ivar repeat: repeat detection (:mod:`reasonzoo.repeats`): a response that starts looping is
        stopped with ``FinishReason.REPEAT``; ``None`` (default) = off.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop_strings: tuple[str, ...] = ()
    repeat: RepeatRule | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate.

    :ivar prompt_ids: the prompt's token ids.
    :ivar prefix_ids: response tokens already generated (a partial rollout being continued);
        the engine conditions on ``prompt_ids + prefix_ids`` and returns only new tokens.
    :ivar max_new_tokens: overrides ``SamplingParams.max_new_tokens`` for this request.
    """

    prompt_ids: tuple[int, ...]
    prefix_ids: tuple[int, ...] = ()
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class Generation:
    """What an engine returns for one request: new tokens, their log-probs, end state.

    :ivar text: the response text when a stop string ended it: the decoded ``token_ids`` cut right
        after the stop string (kept; what follows it inside the last token dropped). ``None``
        otherwise: the text is ``policy.decode(token_ids)``.
    :ivar policy_version: the policy version whose weights produced the tokens, when the engine
        knows it (engines in other processes, :mod:`reasonzoo.ray_engines`, set the version they
        served); ``None``: the engine runs the trainer's current weights (``ctx.policy_version``).
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishReason
    text: str | None = None
    policy_version: int | None = None


@dataclass(frozen=True)
class TrainBatch:
    """Rollouts collated into padded tensors for the update.

    Row ``n`` is rollout ``n`` (groups concatenated in order). Targets are shifted by one:
    column ``t`` of ``response_mask`` refers to the token at ``input_ids[:, t + 1]``.

    :ivar input_ids: ``(N, T)`` prompt + response, right-padded.
    :ivar attention_mask: ``(N, T)`` 1 for real tokens.
    :ivar response_mask: ``(N, T-1)`` 1 where the target is a response token.
    :ivar token_versions: ``(N, T-1)`` policy version that sampled each response target, -1 elsewhere.
    :ivar behaviour_logprobs: ``(N, T-1)`` log-probs recorded at sampling time, 0 elsewhere.
    :ivar returns: ``(N,)`` total reward per rollout.
    :ivar correct: ``(N,)`` bool.
    :ivar group_index: ``(N,)`` index of the rollout's group; rows of a group are contiguous.
    :ivar extras: tensors added by ``rz_prepare_update`` implementations, keyed by name, each
        with leading dimension N: per-row ``(N,)`` / ``(N, ...)``, or per-token ``(N, T-1)``
        (aligned with ``response_mask``; any extra of two or more dimensions whose second one is
        ``T-1`` is treated as per-token by :meth:`select`).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    token_versions: torch.Tensor
    behaviour_logprobs: torch.Tensor
    returns: torch.Tensor
    correct: torch.Tensor
    group_index: torch.Tensor
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor) -> "TrainBatch":
        """Rows ``index`` (a 1-D long tensor), trimmed to the longest selected sequence. Per-token
        extras (second dimension ``T-1``) are trimmed to the same columns as ``response_mask``,
        so they stay aligned with it; other extras are row-sliced."""
        t = int(self.attention_mask[index].sum(-1).max())
        width = self.response_mask.shape[1]

        def rows(v: torch.Tensor) -> torch.Tensor:
            return v[index, : t - 1] if v.dim() >= 2 and v.shape[1] == width else v[index]

        return TrainBatch(
            input_ids=self.input_ids[index, :t],
            attention_mask=self.attention_mask[index, :t],
            response_mask=self.response_mask[index, : t - 1],
            token_versions=self.token_versions[index, : t - 1],
            behaviour_logprobs=self.behaviour_logprobs[index, : t - 1],
            returns=self.returns[index],
            correct=self.correct[index],
            group_index=self.group_index[index],
            extras={k: rows(v) for k, v in self.extras.items()},
        )

    def to(self, device: torch.device | str) -> "TrainBatch":
        """The batch with every tensor (extras included) on ``device`` (``train.device``); itself
        when they are all there already (the CPU case)."""
        device = torch.device(device)
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extras"}
        if all(t.device == device for t in (*own.values(), *self.extras.values())):
            return self
        return TrainBatch(**{k: v.to(device) for k, v in own.items()}, extras={k: v.to(device) for k, v in self.extras.items()})


@dataclass(frozen=True)
class LossOutput:
    """What a loss plugin returns for one minibatch.

    :ivar loss: scalar tensor to minimise (the core calls ``backward`` on it).
    :ivar metrics: floats to log, keyed ``loss/<name>``.
    :ivar denominator: how many units ``loss`` is a mean over: response tokens for a token-mean
        (DAPO), rows for a row mean; ``None`` = the minibatch's row count. The trainer weights
        micro-batches by it, so accumulation is exact (see ``rz_loss``). 0 when there is no unit
        (``loss`` then a zero that keeps the graph).
    """

    loss: torch.Tensor
    metrics: Mapping[str, float] = field(default_factory=dict)
    denominator: float | None = None
