"""The default rollout engine: batched sampling in plain PyTorch with a KV cache.

Two forwards:
- ``fast: true`` (default) for Llama and Qwen2 models: :class:`reasonzoo.fastdecode.FastDecoder`,
  the same maths in ~15 ops per layer with a static KV cache, and continuous batching: at most
  ``max_batch`` sequences decode together, a finished one frees its row for the next waiting
  request (rows are refilled, or dropped when nothing waits, once a fraction ``compact_at`` of
  them is free); prompts of mixed lengths are prefilled in length buckets and attend per span of
  similar lengths. ~1.5x HF ``generate`` at batch 64 on the tiny default model at equal
  work (EOS masked on both sides; ``benchmarks/rollout_throughput.py``).
  ``compile: true`` runs its decode step through ``torch.compile`` (same tokens; off by default:
  the compilation is repaid only in long runs, ``benchmarks/README.md``).
- otherwise (other architectures, or ``fast: false``) the Hugging Face module itself, token by
  token with its cache, as ``generate`` does, in static chunks of ``max_batch`` (no continuous
  batching: a finished row idles until its chunk ends).

The sampled tokens' log-probs under the sampling distribution are recorded; with an fp32 model
the engine declares them equal to the trainer's forward (``logprobs_match_policy``).

Stopping rules, checked after every token, the same in both paths:

- EOS: any of ``Policy.eos_token_ids`` (the tokenizer's EOS and every id of the model's
  ``generation_config.eos_token_id``, as HF ``generate`` stops on a list), kept as the last token;
- stop strings (:class:`reasonzoo.engine.StopStrings`): the token whose text completes one ends
  the row, also when the string ends inside the token; the tokens keep it, ``Generation.text`` is
  the text cut right after the string (kept in the text, which reward plugins may parse; vLLM's
  default drops it, ``engine/vllm`` asks it to keep it). Only a tail window is decoded per token;
  a continued request's ``prefix_ids`` count (a string may start in them);
- repeat detection (``SamplingParams.repeat``, :mod:`reasonzoo.repeats`) over the request's
  ``prefix_ids`` plus the new tokens: a looping row ends with ``FinishReason.REPEAT``.

Precedence when several fire on one token: EOS / stop string, then repeat, then the length limit.

Both read the trainer's ``nn.Module`` at every call, so ``sync_weights`` has nothing to copy.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from reasonzoo import hookimpl, plugin
from reasonzoo.engine import StopStrings
from reasonzoo.fastdecode import FastDecoder, sample_next, unsupported
from reasonzoo.repeats import RepeatTracker
from reasonzoo.types import FinishReason, Generation, GenerationRequest, SamplingParams

__all__ = ["TorchEngine", "TorchEngineConfig", "TorchEnginePlugin", "sample_next"]
log = logging.getLogger("reasonzoo")


@dataclass
class TorchEngineConfig:
    max_batch: int = 256  #: rows decoded together (fast path: continuous batching; HF path: chunks)
    fast: bool = True  #: lean decode path for Llama/Qwen2 (reasonzoo.fastdecode); false = HF forward
    compact_at: float = 0.25  #: fast path: refill (or drop) finished rows once this fraction of the batch is free
    #: fast path: torch.compile the decode step (off: ~1.2x per step on the tiny model for 10 s to
    #: ~3.5 min of compilation per process; pays in runs of more than ~100-1200 iterations;
    #: benchmarks/README.md, decode_efficiency.py)
    compile: bool = False


class TorchEngine:
    #: decodes with the policy module itself, on the policy's device: an engine actor holding a GPU
    #: (``launcher.engine_gpus > 0``) moves its policy there (reasonzoo.ray_engines.EngineActor)
    runs_policy_module = True

    def __init__(self, cfg: TorchEngineConfig, policy):
        self.cfg, self.policy = cfg, policy
        params = inspect.signature(policy.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.fast = None
        if cfg.fast:
            why = unsupported(policy.model)
            if why is None:
                self.fast = FastDecoder(policy.model, compact_at=cfg.compact_at, compile=cfg.compile)
            else:
                log.info("engine/torch: fast path off (%s); using the Hugging Face forward", why)

    @property
    def logprobs_match_policy(self) -> bool:
        """True when every parameter is float32: the engine runs the trainer's own module, so at
        T = 1, top-p = 1 its log-probs equal the trainer's forward to ~1e-6
        (``tests/test_engine_torch.py::test_logprobs_equal_teacher_forced``; losses may then reuse
        them, :func:`reasonzoo.pg.behaviour_is_current`). False in bf16 / fp16, where the
        KV-cached decode and the full forward round differently."""
        return all(p.dtype == torch.float32 for p in self.policy.model.parameters())

    def sync_weights(self) -> None:
        """Nothing to do: the engine runs the trainer's module itself."""

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams, generator: torch.Generator) -> list[Generation]:
        """See :class:`reasonzoo.engine.Engine` and the module docstring (stopping rules)."""
        stops = StopStrings(self.policy.decode, params.stop_strings) if params.stop_strings else None
        if self.fast is not None:  # continuous batching over max_batch rows
            out = self._generate_fast(requests, params, generator, stops)
        else:
            out = []
            for s in range(0, len(requests), self.cfg.max_batch):
                out += self._generate(requests[s : s + self.cfg.max_batch], params, generator, stops)
        if stops is None:
            return out
        eos = set(self.policy.eos_token_ids)  # a STOP row not ending on EOS was ended by a stop string: cut its text
        return [Generation(g.token_ids, g.logprobs, g.finish_reason, stops.cut(g.token_ids, r.prefix_ids))
                if g.finish_reason is FinishReason.STOP and g.token_ids[-1] not in eos else g for g, r in zip(out, requests)]

    def _generate_fast(self, reqs, params, gen, stops) -> list[Generation]:
        rows = self.fast.generate([tuple(r.prompt_ids) + tuple(r.prefix_ids) for r in reqs],
                                  [r.max_new_tokens or params.max_new_tokens for r in reqs], params, gen,
                                  self.policy.pad_token_id, self.policy.eos_token_ids, stops and stops.fires,
                                  [r.prefix_ids for r in reqs], slots=self.cfg.max_batch)
        return [Generation(tuple(ids), tuple(lps), reason) for ids, lps, reason in rows]

    @torch.inference_mode()
    def _generate(self, reqs, params, gen, stops) -> list[Generation]:
        model, pad = self.policy.model, self.policy.pad_token_id
        eos = torch.tensor(self.policy.eos_token_ids, dtype=torch.long)
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
        tracker = None if params.repeat is None else RepeatTracker(params.repeat, [r.prefix_ids for r in reqs])
        seqs = [list(r.prefix_ids) for r in reqs]
        dev = self.policy.device  # the model's inputs go there; the bookkeeping stays on the CPU
        res = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), use_cache=True, logits_to_keep=1)
        for t in range(steps):
            cache = res.cache if hasattr(res, "cache") and res.cache is not None else res.past_key_values
            tok, lp = sample_next(res.logits[:, -1], params, gen)
            tok, lp = tok.cpu(), lp.cpu()
            active = ~done
            toks[active, t], lps[active, t] = tok[active], lp[active]
            n_out += active.long()
            stop = active & torch.isin(tok, eos)
            if stops is not None:  # seqs: each row's response so far (prefix included), for the tail-window check
                going = (active & ~stop).tolist()
                for i, t in zip(active.nonzero().flatten().tolist(), tok[active].tolist()):
                    seqs[i].append(t)
                    if going[i] and stops.fires(seqs[i]):
                        stop[i] = True
            for i in stop.nonzero().flatten().tolist():
                reason[i] = FinishReason.STOP
            if tracker is not None:  # repeat detection on the rows that took this token and go on
                cand = (active & ~stop).nonzero().squeeze(1)
                hit = cand[tracker.update(tok[cand], cand)]
                for i in hit.tolist():
                    reason[i] = FinishReason.REPEAT
                stop[hit] = True
            done = done | stop | (n_out >= limit)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.long)], 1)
            pos = pos[:, -1:] + 1
            res = model(input_ids=torch.where(done, pad, tok)[:, None].to(dev), attention_mask=mask.to(dev),
                        position_ids=pos.to(dev), use_cache=True, logits_to_keep=1, **{self._cache_kw: cache})
        model.train(was_training)
        return [Generation(tuple(toks[i, : n_out[i]].tolist()), tuple(lps[i, : n_out[i]].tolist()), reason[i]) for i in range(b)]


@plugin("engine", "torch", TorchEngineConfig)
class TorchEnginePlugin:
    """Batched KV-cached sampling in PyTorch (no extra dependency)."""

    def __init__(self, cfg: TorchEngineConfig):
        if cfg.max_batch < 1:
            raise ValueError(f"engine.max_batch={cfg.max_batch}: must be >= 1")
        if not 0 < cfg.compact_at <= 1:
            raise ValueError(f"engine.compact_at={cfg.compact_at}: must be in (0, 1]")
        if not isinstance(cfg.compile, bool):
            raise ValueError(f"engine.compile={cfg.compile!r}: must be true or false")
        self.cfg = cfg

    @hookimpl
    def rz_build_engine(self, ctx, policy):
        return TorchEngine(self.cfg, policy)
