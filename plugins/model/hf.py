"""The policy model: a local Hugging Face causal LM, or a tiny one built from config.

``path: null`` (default) builds a tiny Llama/Qwen2 from ``tiny`` with a byte-level tokenizer,
both made locally and saved under the run directory with ``save_pretrained``; nothing is
downloaded. ``path: /some/dir`` loads any local HF model folder (``local_files_only``).

Prompts: with ``chat_template: auto`` (default) a loaded model whose tokenizer has a chat
template gets each prompt as one user turn (after an optional ``system_prompt`` turn) with the
generation prompt, encoded without a second BOS (``Policy.encode_prompt``); ``none`` feeds the
raw text. The tiny tokenizer has no template.

Context: at load the trainer checks every train and eval prompt plus ``generation.max_new_tokens``
against the model's context (``Policy.fit_context``); ``overlong: error`` (default) stops with
how many problems overflow and the first one's id, ``drop`` removes them and logs the counts as
``data/dropped_overlong/<split>`` in the iteration-0 metrics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from reasonzoo import hookimpl, plugin
from reasonzoo.policy import BYTE_BASE_VOCAB, CHAT_TEMPLATE, OVERLONG, Policy, build_byte_tokenizer, build_tiny_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TinyConfig:
    arch: str = "llama"  #: llama or qwen2
    hidden_size: int = 64  #: model width
    num_layers: int = 4  #: transformer blocks
    num_heads: int = 4  #: attention heads (head dim = hidden_size / num_heads)
    intermediate_size: int = 176  #: MLP width
    max_position_embeddings: int = 256  #: longest prompt + response


@dataclass
class HFModelConfig:
    path: Optional[str] = None  #: local HF model folder; None = build the tiny model below
    dtype: str = "float32"  #: float32, bfloat16 or float16
    tiny: TinyConfig = field(default_factory=TinyConfig)  #: architecture of the built tiny model
    chat_template: str = "auto"  #: auto: prompts through the tokenizer's chat template when it has one; none: raw text
    system_prompt: Optional[str] = None  #: system turn before each prompt (needs a chat template); None = no system turn
    overlong: str = "error"  #: prompt + generation.max_new_tokens > context: error, or drop (counted in metrics)


@plugin("model", "hf", HFModelConfig)
class HFModel:
    """A Hugging Face causal LM (local folder) or a tiny one built locally."""

    def __init__(self, cfg: HFModelConfig):
        if cfg.dtype not in DTYPES:
            raise ValueError(f"model.dtype={cfg.dtype!r}: allowed values are {', '.join(DTYPES)}")
        for key, allowed in (("chat_template", CHAT_TEMPLATE), ("overlong", OVERLONG)):
            if getattr(cfg, key) not in allowed:
                raise ValueError(f"model.{key}={getattr(cfg, key)!r}: allowed values are {', '.join(allowed)}")
        if cfg.system_prompt is not None and (cfg.path is None or cfg.chat_template == "none"):
            raise ValueError(f"model.system_prompt={cfg.system_prompt!r}: needs a chat template (model.path with a "
                             "tokenizer that has one, and model.chat_template=auto)")
        self.cfg = cfg

    @hookimpl
    def rz_build_policy(self, ctx):
        if self.cfg.path:
            return Policy.load(self.cfg.path, dtype=DTYPES[self.cfg.dtype], chat_template=self.cfg.chat_template,
                               system_prompt=self.cfg.system_prompt, overlong=self.cfg.overlong)
        tok = build_byte_tokenizer()
        t = self.cfg.tiny
        model = build_tiny_model(
            vocab_size=len(tok), arch=t.arch, hidden_size=t.hidden_size, num_layers=t.num_layers,
            num_heads=t.num_heads, intermediate_size=t.intermediate_size,
            max_position_embeddings=t.max_position_embeddings, pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, seed=ctx.warmup_seed, base_vocab_size=BYTE_BASE_VOCAB,
        ).to(DTYPES[self.cfg.dtype])
        return Policy(model=model, tokenizer=tok, system_prompt=self.cfg.system_prompt, overlong=self.cfg.overlong)
