"""Lean batched sampling for Llama and Qwen2 decoders: the torch engine's fast path.

At the sizes reasonzoo trains on a CPU (well under 10M parameters) a decode step costs tensor-op
dispatch, not arithmetic: the Hugging Face forward spends a few hundred ops per token for a 4-layer
model. :class:`FastDecoder` runs the same maths as ``LlamaForCausalLM`` / ``Qwen2ForCausalLM``
(``modeling_llama.py``, ``modeling_qwen2.py`` of transformers 5) in about 15 ops per layer:

- one matmul per layer gives q, k and v; RoPE on q and k is ``x * cos + rotate_half(x) * sin``
  (4 ops); the 1/sqrt(head_dim) attention scale is folded into the q rows. (rotate_half used to be
  folded into the fused weight as extra rows: one op fewer, but (H + KV) x D more matmul rows,
  ~1/5 of a layer's FLOPs at hidden 384, for no gain at the default size:
  ``benchmarks/decode_efficiency.py``);
- the cos/sin table comes from the model's own rotary module, once per call;
- a static KV cache per layer, keys and values ``(B, KV, T, D)`` (a token's write is contiguous;
  the score ``baddbmm`` reads the keys through a transposed view), allocated once per call; each
  row has its own write column and position, and an additive key bias (0 on its valid columns,
  -inf elsewhere);
- RMSNorm weights folded into the following projections (the norm itself is 5 ops), ``addmm``
  for the residual adds, a fused gate/up projection;
- continuous batching: at most ``slots`` rows decode together; waiting requests take the rows of
  finished ones (refilled once a fraction ``compact_at`` of the rows is free); with nothing
  waiting, finished rows are dropped and the cache compacted at the same threshold (compaction
  copies the cache, so it is batched). A change of batch composition changes which random draws
  a row gets; the draws stay a function of the seed;
- prefill: identical contexts (the k samples of a prompt) share one prefill, and the unique ones
  are prefilled in buckets of lengths at most 2x apart (padding costs at most 2x);
- attention per span of rows of similar length (:func:`_spans`): a 15-token prompt decoded beside a
  500-token continuation does not scan 500 columns.

Weights are read from the module at every call (only the small fused copies are made), so the
trainer's updates are seen and ``sync_weights`` stays a no-op. :func:`unsupported` names what this
path does not cover (other architectures, RoPE scaling, sliding windows, MLP biases, non-fp32);
the engine then runs the HF forward. Tokens are the HF path's (tests compare greedy output with
``generate``) and log-probs agree with a teacher-forced HF forward to ~1e-6.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .repeats import RepeatTracker
from .types import FinishReason, SamplingParams

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def sample_next(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of ``logits`` ``(B, V)``; returns ``(tokens (B,), logprobs (B,))``.

    Temperature 0 is greedy, with the log-prob of the unscaled distribution. Otherwise the
    log-prob is that of the temperature-scaled, top-p-truncated, renormalised distribution.
    One uniform draw per row from ``gen`` (inverse CDF: ~4x cheaper than ``torch.multinomial``,
    which draws an exponential per vocabulary entry). ``gen`` is a CPU generator: the draws are
    made there and moved to ``logits``' device, so a seed samples the same on CPU and GPU up to
    the logits' rounding. Tokens and log-probs come back on ``logits``' device.
    """
    logits = logits.float()
    if params.temperature == 0:
        tok = logits.argmax(-1)
        return tok, F.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
    logp = F.log_softmax(logits if params.temperature == 1.0 else logits / params.temperature, -1)
    if params.top_p < 1.0:
        sorted_lp, idx = logp.sort(-1, descending=True)
        cum = sorted_lp.exp().cumsum(-1)
        drop_sorted = cum - sorted_lp.exp() >= params.top_p  # keep the smallest prefix reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        logp = F.log_softmax(logp.masked_fill(drop, float("-inf")), -1)
    # inverse CDF with one uniform draw per row: the first token whose cumulative mass reaches
    # u' * total, u' = 1 - u in (0, 1], never picks a zero-probability token
    cum = logp.exp().cumsum(-1)  # (B, V)
    u = torch.rand((logp.shape[0], 1), generator=gen, dtype=cum.dtype).to(cum.device)
    tok = torch.searchsorted(cum, u.neg_().add_(1).mul_(cum[:, -1:]))  # (B, 1)
    return tok.squeeze(-1), logp.gather(-1, tok).squeeze(-1)


def unsupported(model) -> str | None:
    """Why :class:`FastDecoder` cannot run ``model`` exactly, or ``None`` when it can."""
    name = type(model).__name__
    if name not in ARCHITECTURES:
        return f"{name} is not one of {', '.join(ARCHITECTURES)}"
    c = model.config
    rope = getattr(c, "rope_parameters", None) or {}
    checks = {
        "hidden_act is not silu": getattr(c, "hidden_act", "silu") != "silu",
        "RoPE scaling": rope.get("rope_type", "default") != "default",
        "MLP biases": bool(getattr(c, "mlp_bias", False)),
        "sliding-window attention": bool(getattr(c, "use_sliding_window", False)),
        "dtype is not float32": model.dtype != torch.float32,
    }
    bad = [k for k, v in checks.items() if v]
    return f"{name} with {', '.join(bad)}" if bad else None


def _spans(cols: Sequence[int], alive: Sequence[bool], most: int = 4, min_rows: int = 8) -> list[tuple[int, int, int]]:
    """Split batch rows into at most ``most`` contiguous spans ``(a, b, n)`` of similar cache
    length: rows ``a..b-1`` attend to their first ``n`` columns (``n`` = the span's largest
    ``col`` + 1). One attention over the whole batch would cost ``rows x longest``: with a few
    500-token continuations among 15-token prompts (partial rollouts) that is most of a decode
    step. A span ends where the next live row's length is over 2x off the span's range (spans of
    at least ``min_rows``); then the adjacent pair whose merge costs least is merged until
    ``most`` remain. Finished rows fit any span: their output is never read (the caller opens
    their column 0 so that it stays finite)."""
    spans: list[list[int]] = []  # [a, b, lo, hi]: the live rows' range of columns
    for i, (c, live) in enumerate(zip(cols, alive)):
        sp = spans[-1] if spans else None
        if sp is None or live and sp[1] - sp[0] >= min_rows and sp[3] >= sp[2] and (c + 1 > 2 * (sp[2] + 1) or 2 * (c + 1) < sp[3] + 1):
            spans.append([i, i + 1, c, c] if live else [i, i + 1, 1 << 30, 0])
        else:
            sp[1] = i + 1
            if live:
                sp[2], sp[3] = min(sp[2], c), max(sp[3], c)

    def cost(sp):
        return (sp[1] - sp[0]) * (sp[3] + 1)

    while len(spans) > most:
        j = min(range(len(spans) - 1), key=lambda j: cost([spans[j][0], spans[j + 1][1], 0, max(spans[j][3], spans[j + 1][3])])
                - cost(spans[j]) - cost(spans[j + 1]))
        a, b = spans[j], spans.pop(j + 1)
        a[1], a[2], a[3] = b[1], min(a[2], b[2]), max(a[3], b[3])
    return [(a, b, hi + 1) for a, b, _, hi in spans]


class FastDecoder:
    """Batched KV-cached sampling for one Llama/Qwen2 module (see the module docstring)."""

    def __init__(self, model, compact_at: float = 0.25, compile: bool = False):
        """``compile``: run the decode step through ``torch.compile(dynamic=True)`` (the same
        tokens; log-probs within float rounding, ``tests/test_compile_paths.py``). Off by default:
        on the CPU it gains ~1.2x per decode step on the default tiny model (~1.04x at 12.9M
        parameters) for 10-22 s of compilation per process when every row has the same length,
        and ~3.5 CPU-minutes when lengths vary (one graph per number of attention spans, 8 in
        all), i.e. it is repaid after ~100-1200 ``generate`` calls of 64-128 rows
        (``benchmarks/README.md``, ``decode_efficiency.py`` section): long runs only."""
        c = model.config
        self.model, self.compact_at = model, compact_at
        self.H, self.KV = c.num_attention_heads, c.num_key_value_heads
        self.D = getattr(c, "head_dim", None) or c.hidden_size // self.H
        self.NH = self.H + 2 * self.KV  # q, k, v heads of the fused projection
        self.eps = c.rms_norm_eps
        #: counters of the last :meth:`generate` call: decode steps, admissions (prefill rounds),
        #: prefill forwards (buckets), rows decoded (sum over steps of the batch size)
        self.stats: dict[str, int] = {}
        if compile:  # an instance attribute shadows the method; the graph is built at the first call
            self._decode = torch.compile(self._decode, dynamic=True)

    # ---- weights and tables, rebuilt from the live module at every call ----
    def _weights(self):
        H, KV, D = self.H, self.KV, self.D
        s = D**-0.5  # Llama/Qwen2 attention scaling, folded into q
        layers = []
        for layer in self.model.model.layers:
            a, p = layer.self_attn, layer.mlp
            # the input RMSNorm's weight is folded into the projection's columns (as is the MLP's below)
            w = torch.cat([a.q_proj.weight * s, a.k_proj.weight, a.v_proj.weight]) * layer.input_layernorm.weight
            b = None
            if a.q_proj.bias is not None:  # Qwen2 (and Llama with attention_bias)
                b = torch.cat([a.q_proj.bias * s, a.k_proj.bias, a.v_proj.bias])
            wgu = torch.cat([p.gate_proj.weight, p.up_proj.weight]) * layer.post_attention_layernorm.weight
            layers.append((w, b, a.o_proj.weight.t(), a.o_proj.bias, wgu.t(), p.down_proj.weight.t()))
        m = self.model.model
        return m.embed_tokens.weight, layers, self.model.lm_head.weight * m.norm.weight

    def _norm(self, x):
        """RMSNorm without its weight (folded into the next projection): 5 small ops where
        ``F.rms_norm`` dispatches ~10."""
        return x * x.square().mean(-1, keepdim=True).add_(self.eps).rsqrt_()

    def _rope(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``(n, H + KV, D)`` for positions ``0..n-1``: the model's RoPE, per q and k head."""
        rot, dev = self.model.model.rotary_emb, self.model.lm_head.weight.device
        cos, sin = rot(torch.zeros(1, dtype=torch.float32, device=dev), torch.arange(n, device=dev)[None])  # (1, n, D)
        qk = (n, self.H + self.KV, self.D)
        return cos[0, :, None].expand(qk).contiguous(), sin[0, :, None].expand(qk).contiguous()

    def _qk(self, y: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """RoPE'd q and k heads ``(..., H + KV, D)`` of the fused projection ``y (..., NH, D)``:
        ``x * cos + rotate_half(x) * sin`` (HF ``apply_rotary_pos_emb``), rotate_half = [-x2, x1]."""
        x, d = y[..., : self.H + self.KV, :], self.D // 2
        return torch.addcmul(x * c, torch.cat([-x[..., d:], x[..., :d]], -1), s)

    # ---- forward passes ----
    def _act(self, x, wgu):
        """SiLU(gate) * up of the MLP, before the down projection."""
        gu = self._norm(x) @ wgu
        i = gu.shape[-1] // 2
        return F.silu(gu[..., :i]).mul_(gu[..., i:])

    def _prefill(self, W, ids, pos, keymask, cos, sin, cache):
        """Forward of the left-padded prompts ``ids (B, T)``; fills ``cache[:, :, :T]``; logits ``(B, V)`` of the last column."""
        emb, layers, head = W
        B, T = ids.shape
        H, KV, D = self.H, self.KV, self.D
        x = F.embedding(ids, emb)  # (B, T, C)
        c, s = cos[pos], sin[pos]  # (B, T, H+KV, D)
        eye = torch.eye(T, dtype=torch.bool, device=ids.device)
        mask = ((torch.ones(T, T, dtype=torch.bool, device=ids.device).tril() & keymask[:, None, :]) | eye)[:, None]  # (B, 1, T, T)
        for (w, b, wo, bo, wgu, wd), kv in zip(layers, cache):
            h = self._norm(x)
            y = F.linear(h, w, b).view(B, T, self.NH, D)
            r = self._qk(y, c, s).transpose(1, 2)  # (B, H+KV, T, D)
            q, k, v = r[:, :H], r[:, H:], y[:, :, H + KV : H + 2 * KV].transpose(1, 2)
            kc, vc = kv
            kc[:, :, :T], vc[:, :, :T] = k, v
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0, enable_gqa=KV != H)
            x = x + F.linear(o.transpose(1, 2).reshape(B, T, H * D), wo.t(), bo)
            x = x + self._act(x, wgu) @ wd
        return F.linear(self._norm(x[:, -1]), head)

    def _decode(self, W, tok, c, s, cache, col, spans, kbias):
        """One token per row: ``tok (B,)`` written at each row's cache column ``col (B,)``, rope
        ``c, s (B, H+KV, D)``; ``kbias (B*KV, 1, T)`` is the additive key mask (0 on a row's valid
        columns, -inf elsewhere; this token's column is opened here). Attention runs per span
        ``(a, b, n)`` of rows ``a..b-1`` over their first ``n`` columns (see :func:`_spans`).
        Returns logits ``(B, V)``."""
        emb, layers, head = W
        B = tok.shape[0]
        H, KV, D = self.H, self.KV, self.D
        G = H // KV
        rows = torch.arange(B, device=tok.device)
        kbias.view(B, KV, 1, -1)[rows, :, 0, col] = 0.0
        x = F.embedding(tok, emb)  # (B, C)
        for (w, b, wo, bo, wgu, wd), kv in zip(layers, cache):
            h = self._norm(x)
            y = F.linear(h, w, b).view(B, self.NH, D)
            r = self._qk(y, c, s)  # (B, H+KV, D)
            kc, vc = kv  # (B, KV, T, D) each
            kc[rows, :, col], vc[rows, :, col] = r[:, H:], y[:, H + KV : H + 2 * KV]
            q = r[:, :H].reshape(B * KV, G, D)
            parts = []
            for a, b_, n in spans:  # rows of similar length together: a short row does not scan a long row's columns
                att = torch.baddbmm(kbias[a * KV : b_ * KV, :, :n], q[a * KV : b_ * KV], kc[a:b_, :, :n].flatten(0, 1).transpose(1, 2))
                parts.append(torch.bmm(att.softmax(-1), vc[a:b_, :, :n].flatten(0, 1)))  # (rows*KV, G, D)
            o = (parts[0] if len(parts) == 1 else torch.cat(parts)).view(B, H * D)
            x = torch.addmm(x, o, wo) if bo is None else torch.addmm(x + bo, o, wo)
            x = torch.addmm(x, self._act(x, wgu), wd)
        return F.linear(self._norm(x), head)

    # ---- sampling loop ----
    def _admit(self, W, contexts, reqs, rows, cos, sin, cache, kbias, pad):
        """Prefill requests ``reqs`` (indices into ``contexts``) into batch rows ``rows``.

        Identical contexts share one prefill; the unique ones are prefilled in buckets of similar
        length (at most 2x apart, so padding costs at most 2x), each row's context written
        left-padded at cache columns ``0..w-1`` of its bucket's width ``w``. Returns the rows'
        first logits ``(R, V)`` (on the model's device), rope positions and next cache columns
        ``(R,)`` (on the CPU, as ``rows``: the sampling loop's bookkeeping stays there).
        """
        dev = kbias.device
        unique: dict[tuple, int] = {}
        inv = [unique.setdefault(tuple(contexts[i]), len(unique)) for i in reqs]
        ctxs = list(unique)
        order = sorted(range(len(ctxs)), key=lambda j: len(ctxs[j]))
        buckets: list[list[int]] = []
        for j in order:
            if buckets and len(ctxs[j]) <= 2 * len(ctxs[buckets[-1][0]]):
                buckets[-1].append(j)
            else:
                buckets.append([j])
        R = len(reqs)
        self.stats["admissions"] += 1
        self.stats["prefills"] += len(buckets)
        logits = torch.zeros(R, W[2].shape[0], device=dev)
        pos, col = torch.empty(R, dtype=torch.long), torch.empty(R, dtype=torch.long)
        inv_t = torch.tensor(inv)
        kb = kbias.view(len(kbias) // self.KV, self.KV, 1, -1)
        for bucket in buckets:
            w = len(ctxs[bucket[-1]])
            ids = torch.full((len(bucket), w), pad, dtype=torch.long)
            keymask = torch.zeros((len(bucket), w), dtype=torch.bool)
            for i, j in enumerate(bucket):
                ids[i, w - len(ctxs[j]):] = torch.tensor(ctxs[j], dtype=torch.long)
                keymask[i, w - len(ctxs[j]):] = True
            tmp = [(torch.empty(len(bucket), self.KV, w, self.D, device=dev), torch.empty(len(bucket), self.KV, w, self.D, device=dev))
                   for _ in cache]
            upos = (keymask.long().cumsum(-1) - 1).clamp(min=0)
            keymask_d = keymask.to(dev)
            ulogits = self._prefill(W, ids.to(dev), upos.to(dev), keymask_d, cos, sin, tmp)
            slot = torch.full((len(ctxs),), -1, dtype=torch.long)
            slot[torch.tensor(bucket)] = torch.arange(len(bucket))
            mine = (slot[inv_t] >= 0).nonzero().squeeze(1)  # requests of this bucket
            src, dst = slot[inv_t[mine]], rows[mine]
            src_d, dst_d = src.to(dev), dst.to(dev)
            for (kc, vc), (tk, tv) in zip(cache, tmp):
                kc[dst_d, :, :w], vc[dst_d, :, :w] = tk[src_d], tv[src_d]
            kb[dst_d] = float("-inf")
            kb[dst_d, :, 0, :w] = torch.where(keymask_d[src_d], 0.0, float("-inf"))[:, None]
            logits[mine.to(dev)], pos[mine], col[mine] = ulogits[src_d], upos[src, -1], w - 1
        return logits, pos, col

    @torch.inference_mode()
    def generate(self, contexts: Sequence[Sequence[int]], limits: Sequence[int], params: SamplingParams,
                 gen: torch.Generator, pad: int, eos: int | Sequence[int],
                 stop: Callable[[list[int]], bool] | None = None,
                 prefixes: Sequence[Sequence[int]] | None = None,
                 slots: int | None = None) -> list[tuple[list[int], list[float], FinishReason]]:
        """Sample continuations of ``contexts`` (at most ``limits[i]`` tokens each).

        Continuous batching: at most ``slots`` rows (default: all) decode together; the others wait,
        in order, and take the rows of finished ones. Rows are refilled (or, with nothing waiting,
        the batch compacted) once a fraction ``compact_at`` of them is free. Each row keeps its own
        cache columns and position, so rows admitted at different steps decode side by side.

        :param eos: the token id(s) that end a row (``Policy.eos_token_ids``: any of them stops it).
        :param stop: optional test on a row's response so far (its prefix and new tokens; stop
            strings); True ends the row.
        :param prefixes: the response tokens at the end of each context (a continued partial
            rollout), seen by repeat detection (``params.repeat``) and ``stop``; default none.
        :returns: per row ``(token ids, log-probs, finish reason)``: STOP on EOS or ``stop``,
            REPEAT when ``params.repeat`` fired, LENGTH at the row's limit.
        """
        b = len(contexts)
        self.stats = {"decode_steps": 0, "admissions": 0, "prefills": 0, "rows_decoded": 0}
        limit_all = torch.tensor(list(limits), dtype=torch.long)
        waiting = [i for i in range(b) if limits[i] > 0]
        if not waiting:
            return [([], [], FinishReason.LENGTH)] * b
        S = min(slots or b, len(waiting))
        # a row's context sits left-padded to its prefill bucket's width: up to the longest context
        tcap = max(len(contexts[i]) for i in waiting) + max(limits[i] for i in waiting)
        W = self._weights()
        dev = W[0].device  # the model's: weights, caches and logits; the loop's bookkeeping stays on the CPU
        cos, sin = self._rope(tcap)
        # zeros, not empty: a row reads columns it never wrote (masked, weight 0, but 0 * NaN = NaN)
        cache = [(torch.zeros(S, self.KV, tcap, self.D, device=dev), torch.zeros(S, self.KV, tcap, self.D, device=dev)) for _ in W[1]]
        kbias = torch.full((S * self.KV, 1, tcap), float("-inf"), device=dev)
        tracker = None if params.repeat is None else RepeatTracker(params.repeat, prefixes or [()] * b)
        repeated, stopped_by = set(), set()
        eos_ids = torch.tensor([eos] if isinstance(eos, int) else list(eos), dtype=torch.long)
        eos_set = set(eos_ids.tolist())
        seqs: list[list[int]] = [list(prefixes[i]) if prefixes and stop is not None else [] for i in range(b)]

        orig = torch.tensor(waiting[:S])  # request held by each batch row
        logits, pos, col = self._admit(W, contexts, waiting[:S], torch.arange(S), cos, sin, cache, kbias, pad)
        waiting = waiting[S:]
        alive = torch.ones(S, dtype=torch.bool)
        nout = torch.zeros(S, dtype=torch.long)  # tokens produced by each row's request
        limit = limit_all[orig]
        spans = None  # attention spans, recomputed when the batch changes (admission, compaction)
        hist = []  # per step: (request of each row, token index, tokens, log-probs, which rows took it)
        while True:
            tok, lp = sample_next(logits, params, gen)
            tok, lp = tok.cpu(), lp.cpu()
            hist.append((orig.clone(), nout.clone(), tok, lp, alive.clone()))
            nout += alive
            alive &= ~torch.isin(tok, eos_ids)
            going = alive.clone() if tracker is not None else alive  # took this token, did not end on EOS
            if stop is not None:
                toks = tok.tolist()
                for j in hist[-1][4].nonzero().squeeze(1).tolist():
                    i = int(orig[j])
                    seqs[i].append(toks[j])
                    if bool(alive[j]) and stop(seqs[i]):
                        alive[j] = going[j] = False
                        stopped_by.add(i)
            if tracker is not None:  # repeat detection (after EOS / stop strings, before the limit)
                cand = going.nonzero().squeeze(1)
                hit = cand[tracker.update(tok[cand], orig[cand])]
                alive[hit] = False
                repeated.update(orig[hit].tolist())
            alive &= nout < limit  # last: a stop or repeat on the row's final token still counts
            n_alive = int(alive.sum())
            if n_alive == 0 and not waiting:
                break
            free = len(alive) - n_alive
            if not waiting and free >= self.compact_at * len(alive):  # drop finished rows, compact the cache
                keep = alive.nonzero().squeeze(1)
                orig, nout, alive, tok, pos, col, limit = (x[keep] for x in (orig, nout, alive, tok, pos, col, limit))
                keep = keep.to(dev)
                cache = [(kc[keep], vc[keep]) for kc, vc in cache]
                kbias = kbias.view(-1, self.KV, 1, tcap)[keep].view(-1, 1, tcap)
                spans = None
            if n_alive:
                pos, col = pos + alive, col + alive  # finished rows stay put (their writes are never read)
                if spans is None:
                    spans = _spans(col.tolist(), alive.tolist())
                    # finished rows may now scan fewer columns than they wrote: give them column 0 (finite)
                    kbias.view(-1, self.KV, 1, tcap)[(~alive).to(dev), :, 0, 0] = 0.0
                else:
                    spans = [(a, b_, min(n + 1, tcap)) for a, b_, n in spans]
                pos_d = pos.to(dev)
                logits = self._decode(W, tok.to(dev), cos[pos_d], sin[pos_d], cache, col.to(dev), spans, kbias)
                self.stats["decode_steps"] += 1
                self.stats["rows_decoded"] += len(tok)
            if waiting and free >= min(len(waiting), self.compact_at * len(alive)):  # refill free rows
                rows = (~alive).nonzero().squeeze(1)[: len(waiting)]
                reqs, waiting = waiting[: len(rows)], waiting[len(rows):]
                new_logits, new_pos, new_col = self._admit(W, contexts, reqs, rows, cos, sin, cache, kbias, pad)
                if not n_alive:
                    logits = torch.zeros(len(alive), new_logits.shape[1], device=dev)
                logits[rows.to(dev)], pos[rows], col[rows] = new_logits, new_pos, new_col
                spans = None
                orig[rows] = torch.tensor(reqs)
                limit[rows], nout[rows], alive[rows] = limit_all[orig[rows]], 0, True

        width = int(limit_all.max())
        toks = torch.full((b, width), pad, dtype=torch.long)
        lps = torch.zeros((b, width))
        took = torch.cat([h[4] for h in hist])  # the rows that took a token at each step
        rows_, cols_ = torch.cat([h[0] for h in hist])[took], torch.cat([h[1] for h in hist])[took]
        toks.index_put_((rows_, cols_), torch.cat([h[2] for h in hist])[took])
        lps.index_put_((rows_, cols_), torch.cat([h[3] for h in hist])[took])
        n, toks, lps = torch.bincount(rows_, minlength=b).tolist(), toks.tolist(), lps.tolist()
        out = []
        for i in range(b):
            ids_i = toks[i][: n[i]]
            if i in stopped_by or (n[i] > 0 and ids_i[-1] in eos_set):
                reason = FinishReason.STOP
            else:
                reason = FinishReason.REPEAT if i in repeated else FinishReason.LENGTH
            out.append((ids_i, lps[i][: n[i]], reason))
        return out
