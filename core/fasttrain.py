"""Lean training forward for Llama and Qwen2: the log-probs every loss differentiates.

:func:`token_logprobs` computes what ``Policy.token_logprobs`` returns from the Hugging Face module,
``log softmax(logits[:, t])[input_ids[:, t + 1]]`` for right-padded rows, with the same maths as
``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` (``modeling_llama.py``, ``modeling_qwen2.py`` of
transformers 5) written as a few functional ops per layer over the module's own parameters, so
autograd flows back into them exactly as through the module:

- fused q/k/v and gate/up projections (``torch.cat`` of the weights: the gradient is split back),
  RoPE from the model's own rotary module, ``F.rms_norm``, ``F.scaled_dot_product_attention``
  (GQA by ``enable_gqa``), the 1/sqrt(head_dim) scale of the HF attention;
- **shared prompts**: rows that begin with the same tokens (the k samples of a prompt) run that
  prefix once. The prefix is a causal forward of its own; every row's suffix attends to its
  prefix's keys/values (gathered per row, so the gradient of each sample flows back into the one
  shared prefix) and then to its own tokens, at positions continuing the prefix's. Exact:
  causal attention makes the prefix's states independent of what follows it. Which rows share
  which prefix is read off the ids alone (:func:`shared_prefixes`);
- **packed rows**: the projections, norms and MLP run on one flat sequence of tokens (each
  shared prefix once, then every row's own suffix); only attention sees padded blocks, the
  suffixes sorted by length and cut where padding would cost more than another SDPA call
  (``block_cost``), so right padding costs next to nothing;
- the LM head and log-softmax run only on columns whose target is a real token (the pad columns
  of a right-padded row are returned as 0, which callers mask out anyway).

:func:`unsupported` names what this path does not cover (everything
:func:`reasonzoo.fastdecode.unsupported` excludes, plus attention dropout in train mode, and
masks that are not right padding); ``Policy.token_logprobs`` then runs the HF forward.
Log-probs agree with the HF forward to ~1e-6 and parameter gradients to float rounding
(``tests/test_fasttrain.py``, Llama and a Qwen2 with biases and grouped-query attention).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fastdecode


def unsupported(model) -> str | None:
    """Why :func:`token_logprobs` cannot run ``model`` exactly, or ``None`` when it can."""
    why = fastdecode.unsupported(model)
    if why is None and model.training and float(getattr(model.config, "attention_dropout", 0.0) or 0.0) > 0:
        why = f"{type(model).__name__} with attention dropout in train mode"
    return why


def shared_prefixes(ids: torch.Tensor, lengths: torch.Tensor) -> list[tuple[list[int], int]]:
    """Disjoint clusters of rows that share their first ``P`` tokens: ``[(rows, P), ...]``, chosen
    to maximise the tokens saved, ``sum (len(rows) - 1) * P`` (every row keeps >= 1 own token).

    Rows sorted lexicographically have their common prefixes as ranges: the longest common prefix
    of a range is the minimum of its neighbours' (the LCP-interval tree). A range either shares
    its common prefix or is split where that minimum is reached; each node keeps the better.
    """
    n = len(lengths)
    if n < 2:
        return []
    seqs = [r[:l] for r, l in zip(ids.tolist(), lengths.tolist())]
    order = sorted(range(n), key=lambda i: seqs[i])
    adj = []  # capped LCP of neighbours in sorted order
    for a, b in zip(order, order[1:]):
        x, y = seqs[a], seqs[b]
        cap = min(len(x), len(y)) - 1
        p = 0
        while p < cap and x[p] == y[p]:
            p += 1
        adj.append(p)

    def best(lo: int, hi: int) -> tuple[int, list[tuple[list[int], int]]]:  # sorted rows lo..hi (hi > lo)
        m = min(adj[lo:hi])
        gain, pick = 0, []
        s = lo
        for k in range(lo, hi + 1):  # split at the minima; ranges of >= 2 rows recurse
            if k == hi or adj[k] == m:
                if k > s:
                    g, p = best(s, k)
                    gain, pick = gain + g, pick + p
                s = k + 1
        if m > 0 and (hi - lo) * m >= gain:
            return (hi - lo) * m, [([order[i] for i in range(lo, hi + 1)], m)]
        return gain, pick

    return best(0, n - 1)[1]


def _weights(model):
    layers = []
    for layer in model.model.layers:
        a, p = layer.self_attn, layer.mlp
        w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        b = None if a.q_proj.bias is None else torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
        wgu = torch.cat([p.gate_proj.weight, p.up_proj.weight])
        layers.append((layer.input_layernorm.weight, w, b, a.o_proj.weight, a.o_proj.bias,
                       layer.post_attention_layernorm.weight, wgu, p.down_proj.weight))
    m = model.model
    return m.embed_tokens.weight, layers, m.norm.weight, model.lm_head.weight


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF ``apply_rotary_pos_emb`` on ``x (M, heads, D)`` with ``cos, sin (M, 1, D)``."""
    d = x.shape[-1] // 2
    return torch.addcmul(x * cos, torch.cat([-x[..., d:], x[..., :d]], -1), sin)


def _layout(input_ids: torch.Tensor, lengths: torch.Tensor, clusters, block_cost: int):
    """Where every token lives: a flat sequence of padded attention blocks, first the clusters'
    shared prefixes ``(U, Pm)`` (each once), then the rows' own suffixes, sorted by length, in
    blocks ``(B, S)`` (S: the block's longest) cut to minimise padding slots + ``block_cost`` per block. Every op but attention runs on
    the flat sequence; padding slots hold garbage that only later slots of the same row see.

    :returns: ``tokens (M,)``, ``pos (M,)``, ``blocks`` (per block ``(start, B, S, rows)``,
        ``rows`` None for the prefix block), ``src (N, T-1)`` (slot of the state that scores
        column t), ``P (N,)`` shared prefix length per row, ``cl (N,)`` its cluster, ``Pm``.
    """
    n, T = input_ids.shape
    L = lengths.tolist()
    P, cl = [0] * n, [0] * n
    for j, (rows, p) in enumerate(clusters):
        for i in rows:
            P[i], cl[i] = p, j
    Pm = max((p for _, p in clusters), default=0)
    tok, pos, blocks = [], [], []  # tok: index into input_ids.flatten(), n*T = padding slot
    src = torch.zeros(n, T - 1, dtype=torch.long)
    if clusters:
        for j, (rows, p) in enumerate(clusters):
            tok += list(range(rows[0] * T, rows[0] * T + p)) + [n * T] * (Pm - p)
            pos += list(range(Pm))
            for i in rows:
                src[i, :p] = torch.arange(j * Pm, j * Pm + p)
        blocks.append((0, len(clusters), Pm, None))
    order = sorted(range(n), key=lambda i: L[i] - P[i], reverse=True)
    m = [L[i] - P[i] for i in order]
    # cut the sorted rows into blocks minimising padded slots + block_cost per block
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for e in range(1, n + 1):
        for a in range(e):
            c = best[a] + (e - a) * m[a] + block_cost
            if c < best[e]:
                best[e], cut[e] = c, a
    ends, e = [], n
    while e:
        ends.append((cut[e], e))
        e = cut[e]
    for a, e in reversed(ends):
        rows = order[a:e]
        S = L[rows[0]] - P[rows[0]]
        blocks.append((len(tok), len(rows), S, torch.tensor(rows)))
        for i in rows:
            m = L[i] - P[i]
            src[i, P[i] : L[i] - 1] = torch.arange(len(tok), len(tok) + m - 1)
            tok += list(range(i * T + P[i], i * T + L[i])) + [n * T] * (S - m)
            pos += list(range(P[i], P[i] + S))
    return torch.tensor(tok), torch.tensor(pos), blocks, src, torch.tensor(P), torch.tensor(cl), Pm


def token_logprobs(model, input_ids: torch.Tensor, lengths: torch.Tensor, block_cost: int = 32) -> torch.Tensor:
    """Log-prob of each next token of right-padded rows: ``(N, T)`` ids, ``lengths (N,)`` real
    tokens per row → ``(N, T-1)``; column t scores ``input_ids[:, t + 1]``, 0 where that is padding.
    ``block_cost``: padding slots one more attention block is worth (the cost of a call)."""
    c = model.config
    N, T = input_ids.shape
    H, KV = c.num_attention_heads, c.num_key_value_heads
    D = getattr(c, "head_dim", None) or c.hidden_size // H
    NH = H + 2 * KV
    eps = c.rms_norm_eps
    emb, layers, nw, head = _weights(model)
    padding_idx = model.model.embed_tokens.padding_idx

    clusters = shared_prefixes(input_ids, lengths)
    tok, pos, blocks, src, P, cl, Pm = _layout(input_ids, lengths, clusters, block_cost)  # index tables, built on the CPU
    dev = input_ids.device
    if dev.type != "cpu":  # moved once, to the model's device
        tok, pos, src, P, cl = (t.to(dev) for t in (tok, pos, src, P, cl))
        blocks = [(start, B, S, None if rows is None else rows.to(dev)) for start, B, S, rows in blocks]
    ids = torch.cat([input_ids.flatten(), input_ids.new_tensor([padding_idx or 0])])[tok]  # (M,)
    x = F.embedding(ids, emb, padding_idx)  # (M, C); no gradient to the pad row, as nn.Embedding
    cos, sin = (t[0, :, None] for t in model.model.rotary_emb(emb[:1], pos[None]))  # (M, 1, D)
    masks = []
    for _, B, S, rows in blocks:  # suffix blocks: the row's own prefix, then causal
        if rows is None or not clusters:
            masks.append(None)
            continue
        pre = torch.arange(Pm, device=dev)[None, None, :] < P[rows][:, None, None]  # (B, 1, Pm)
        causal = torch.ones(S, S, dtype=torch.bool, device=dev).tril()
        masks.append(torch.cat([pre.expand(-1, S, -1), causal.expand(B, -1, -1)], -1)[:, None])
    gqa = KV != H

    for n1, w, b, wo, bo, n2, wgu, wd in layers:
        y = F.linear(F.rms_norm(x, (x.shape[-1],), n1, eps), w, b).view(-1, NH, D)  # (M, H+2KV, D)
        y = torch.cat([_rope(y[:, : H + KV], cos, sin), y[:, H + KV :]], 1)
        outs, kvp = [], None
        for (start, B, S, rows), mask in zip(blocks, masks):
            qkv = y[start : start + B * S].view(B, S, NH, D).transpose(1, 2)  # (B, NH, S, D)
            q, k, v = qkv[:, :H], qkv[:, H : H + KV], qkv[:, H + KV :]
            if rows is None:  # the shared prefixes
                kvp = k, v
            if mask is None:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            else:
                ci = cl[rows]
                k, v = torch.cat([kvp[0][ci], k], 2), torch.cat([kvp[1][ci], v], 2)  # (B, KV, Pm+S, D)
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
            outs.append(o.transpose(1, 2).reshape(B * S, H * D))
        x = x + F.linear(torch.cat(outs), wo, bo)
        gu = F.linear(F.rms_norm(x, (x.shape[-1],), n2, eps), wgu)
        i = gu.shape[-1] // 2
        x = x + F.linear(F.silu(gu[:, :i]) * gu[:, i:], wd)

    # ---- log-probs of the real targets only ----
    real = torch.arange(T - 1, device=dev)[None] < (lengths.to(dev) - 1)[:, None]  # (N, T-1): target t+1 is a real token
    h = F.rms_norm(x[src[real]], (x.shape[-1],), nw, eps)  # (R, C)
    lp = -F.cross_entropy(F.linear(h, head), input_ids[:, 1:][real], reduction="none")  # (R,)
    return torch.zeros(N, T - 1, dtype=lp.dtype, device=dev).masked_scatter(real, lp)
