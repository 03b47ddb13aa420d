"""The default rollout engine: batched sampling in plain PyTorch with the model's KV cache.

All requests of a call are decoded together (left-padded, chunks of ``max_batch``): one prefill,
then one forward of one token per step for the whole batch, reusing the KV cache. A finished
sequence stops recording tokens (its slot idles until the batch ends; continuous batching is a
later addition). The sampled tokens' log-probs under the sampling distribution are recorded.

The engine shares the trainer's ``nn.Module``, so ``sync_weights`` has nothing to copy.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from reasonzoo import hookimpl, plugin
from reasonzoo.types import FinishReason, Generation, GenerationRequest, SamplingParams


@dataclass
class TorchEngineConfig:
    max_batch: int = 256  #: sequences decoded together; larger requests are chunked


def sample_next(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of ``logits`` ``(B, V)``; returns ``(tokens (B,), logprobs (B,))``.

    Temperature 0 is greedy, with the log-prob of the unscaled distribution. Otherwise the
    log-prob is that of the temperature-scaled, top-p-truncated, renormalised distribution.
    """
    logits = logits.float()
    if params.temperature == 0:
        tok = logits.argmax(-1)
        return tok, F.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
    logp = F.log_softmax(logits / params.temperature, -1)
    if params.top_p < 1.0:
        sorted_lp, idx = logp.sort(-1, descending=True)
        cum = sorted_lp.exp().cumsum(-1)
        drop_sorted = cum - sorted_lp.exp() >= params.top_p  # keep the smallest prefix reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        logp = F.log_softmax(logp.masked_fill(drop, float("-inf")), -1)
    tok = torch.multinomial(logp.exp(), 1, generator=gen).squeeze(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


class TorchEngine:
    def __init__(self, cfg: TorchEngineConfig, policy):
        self.cfg, self.policy = cfg, policy
        params = inspect.signature(policy.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def sync_weights(self) -> None:
        """Nothing to do: the engine runs the trainer's module itself."""

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams, generator: torch.Generator) -> list[Generation]:
        out: list[Generation] = []
        for s in range(0, len(requests), self.cfg.max_batch):
            out += self._generate(requests[s : s + self.cfg.max_batch], params, generator)
        return out

    @torch.inference_mode()
    def _generate(self, reqs, params, gen) -> list[Generation]:
        model, pad, eos = self.policy.model, self.policy.pad_token_id, self.policy.eos_token_id
        was_training = model.training
        model.eval()
        ctxs = [tuple(r.prompt_ids) + tuple(r.prefix_ids) for r in reqs]
        b, width = len(reqs), max(len(c) for c in ctxs)
        ids = torch.full((b, width), pad, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, c in enumerate(ctxs):
            ids[i, width - len(c):] = torch.tensor(c)
            mask[i, width - len(c):] = 1
        limit = torch.tensor([r.max_new_tokens or params.max_new_tokens for r in reqs])
        steps = int(limit.max())
        toks = torch.full((b, steps), pad, dtype=torch.long)
        lps = torch.zeros((b, steps))
        n_out = torch.zeros(b, dtype=torch.long)
        reason = [FinishReason.LENGTH] * b
        done = limit <= 0
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        for t in range(steps):
            cache = res.cache if hasattr(res, "cache") and res.cache is not None else res.past_key_values
            tok, lp = sample_next(res.logits[:, -1], params, gen)
            active = ~done
            toks[active, t], lps[active, t] = tok[active], lp[active]
            n_out += active.long()
            stop = active & (tok == eos)
            if params.stop_strings:
                for i in active.nonzero().flatten().tolist():
                    text = self.policy.decode(toks[i, : n_out[i]].tolist())
                    if any(text.endswith(s) for s in params.stop_strings):
                        stop[i] = True
            for i in stop.nonzero().flatten().tolist():
                reason[i] = FinishReason.STOP
            done = done | stop | (n_out >= limit)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.long)], 1)
            pos = pos[:, -1:] + 1
            res = model(input_ids=torch.where(done, pad, tok)[:, None], attention_mask=mask, position_ids=pos,
                        use_cache=True, logits_to_keep=1, **{self._cache_kw: cache})
        model.train(was_training)
        return [Generation(tuple(toks[i, : n_out[i]].tolist()), tuple(lps[i, : n_out[i]].tolist()), reason[i]) for i in range(b)]


@plugin("engine", "torch", TorchEngineConfig)
class TorchEnginePlugin:
    """Batched KV-cached sampling in PyTorch (no extra dependency)."""

    def __init__(self, cfg: TorchEngineConfig):
        if cfg.max_batch < 1:
            raise ValueError(f"engine.max_batch={cfg.max_batch}: must be >= 1")
        self.cfg = cfg

    @hookimpl
    def rz_build_engine(self, ctx, policy):
        return TorchEngine(self.cfg, policy)
