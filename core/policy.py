"""The policy: a Hugging Face causal LM plus its tokenizer, and the log-prob computation every
loss uses. Also builds the tiny default model and a character tokenizer locally (nothing is
downloaded), saved with ``save_pretrained`` so they reload like any HF model.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII and newline, with BOS added to every
    encoded text. Built locally with the ``tokenizers`` library."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    bos = SPECIAL_TOKENS["bos"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=bos,
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        padding_side="left",
    )


def build_tiny_model(vocab_size: int, arch: str, hidden_size: int, num_layers: int, num_heads: int,
                     intermediate_size: int, max_position_embeddings: int, pad_token_id: int,
                     bos_token_id: int, eos_token_id: int, seed: int) -> PreTrainedModel:
    """A small randomly initialised causal LM (``arch``: ``llama`` or ``qwen2``)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    if arch not in classes:
        raise ValueError(f"model.tiny.arch={arch!r}: allowed values are {', '.join(classes)}")
    config_cls, model_cls = classes[arch]
    config = config_cls(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
        pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_cls(config)


@dataclass
class Policy:
    """A causal LM and its tokenizer.

    :ivar model: the trainable ``PreTrainedModel`` (float32 on the CPU by default).
    :ivar tokenizer: its tokenizer; ``pad_token_id`` and ``eos_token_id`` are set.
    :ivar fast: compute :meth:`token_logprobs` with :func:`reasonzoo.fasttrain.token_logprobs`
        where it is exact (Llama/Qwen2, fp32, right padding); ``False``: always the HF forward.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    fast: bool = True

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def encode_prompt(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text)["input_ids"])

    def encode_response(self, text: str, eos: bool = True) -> tuple[int, ...]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return tuple(ids) + ((self.eos_token_id,) if eos else ())

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Log-prob of each next token: ``(N, T)`` ids → ``(N, T-1)``; column t scores
        ``input_ids[:, t + 1]``. Sequences are right-padded (positions count from 0); columns
        whose target is padding hold finite values that callers mask out.

        Under right padding a real token attends only to real tokens, so no mask is needed. Then
        Llama/Qwen2 in fp32 (see :func:`reasonzoo.fasttrain.unsupported`) take the lean forward of
        :mod:`reasonzoo.fasttrain` (same maths and gradients; rows sharing a prompt run it once);
        other models run the HF module with SDPA's causal kernel. Any other mask is passed to the
        HF model as is.
        """
        from .fasttrain import token_logprobs, unsupported

        m = attention_mask
        right_padded = m is None or bool(m[:, 0].all()) and bool((m[:, 1:] <= m[:, :-1]).all())
        if right_padded and self.fast and unsupported(self.model) is None:
            lengths = torch.full(input_ids.shape[:1], input_ids.shape[1]) if m is None else m.sum(-1)
            return token_logprobs(self.model, input_ids, lengths)
        logits = self.model(input_ids=input_ids, attention_mask=None if right_padded else m).logits[:, :-1]  # (N, T-1, V)
        n, t, v = logits.shape
        nll = F.cross_entropy(logits.float().reshape(n * t, v), input_ids[:, 1:].reshape(n * t), reduction="none")
        return -nll.view(n, t)  # = log_softmax(logits).gather(targets)

    def save(self, path: str | Path) -> None:
        """Save model and tokenizer with ``save_pretrained`` (reloadable with ``from_pretrained``)."""
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "Policy":
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.path={str(path)!r}: no Hugging Face model there (config.json missing)")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        return cls(model=model, tokenizer=tokenizer)
