"""The policy: a Hugging Face causal LM plus its tokenizer, and the log-prob computation every
loss uses. Also builds the tiny default model and a byte-level tokenizer locally (nothing is
downloaded), saved with ``save_pretrained`` so they reload like any HF model.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast

from .types import Problem

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}
CHAT_TEMPLATE = ("auto", "none")  #: model.chat_template values
OVERLONG = ("error", "drop")  #: model.overlong values


def byte_to_unicode() -> dict[int, str]:
    """The byte → printable character map of byte-level BPE (GPT-2, Radford et al. 2019, §2.2;
    the alphabet of ``tokenizers.pre_tokenizers.ByteLevel``): printable Latin-1 bytes map to
    themselves, the other 68 (controls, space, 0x7f-0xa0, 0xad) to U+0100 onwards in byte order."""
    keep = {*range(33, 127), *range(161, 173), *range(174, 256)}
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny default model's tokenizer: one token per UTF-8 byte, so any Unicode text
    round-trips exactly (``decode(encode(s)) == s``: newlines, tabs, ``£``, ``×``, emoji).

    Vocabulary (260 ids): ``<pad> <s> </s> <unk>`` (0-3), then printable ASCII and newline in
    ``string.printable`` order (4-99: one token per character, the ids the earlier character
    tokenizer gave them, so ASCII prompts keep their lengths), then the other 160 bytes in byte
    order. Built locally with the ``tokenizers`` library (ByteLevel pre-tokenizer without its
    regex split, one word per byte, ByteLevel decoder); BOS is added to every encoded text.
    Special-token strings in the text (a literal ``"<s>"``) are encoded as plain bytes
    (``split_special_tokens``), so they round-trip too; ``<unk>`` is never produced.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    to_char = byte_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for c in string.printable:
        if c not in "\t\r\x0b\x0c":
            vocab.setdefault(to_char[ord(c)], len(vocab))
    for b in range(256):
        vocab.setdefault(to_char[b], len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),  # bytes → 256 printable chars
        pre_tokenizers.Split(Regex("."), behavior="isolated"),  # one word (= one token) per byte
    ])
    tok.decoder = decoders.ByteLevel()
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
        clean_up_tokenization_spaces=False,
        split_special_tokens=True,
    )


#: printable ASCII and newline plus the 4 special tokens: the byte tokenizer's first ids, the
#: vocabulary of the earlier character tokenizer (``build_tiny_model(base_vocab_size=...)``)
BYTE_BASE_VOCAB = 100

#: the earlier name, kept for callers (tests, benchmarks): the tiny model's tokenizer
build_char_tokenizer = build_byte_tokenizer


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """A 16-hex-digit hash of everything that decides how a tokenizer maps text to ids: its
    ``tokenizers`` JSON (vocabulary, merges, pre-tokenizer, post-processor, added tokens), its
    chat template and ``split_special_tokens``. Caches keyed on a model config include it, so a
    cached model trained with another vocabulary never loads."""
    import hashlib

    parts = [tokenizer.backend_tokenizer.to_str(), str(getattr(tokenizer, "chat_template", None)),
             str(getattr(tokenizer, "split_special_tokens", False))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def build_tiny_model(vocab_size: int, arch: str, hidden_size: int, num_layers: int, num_heads: int,
                     intermediate_size: int, max_position_embeddings: int, pad_token_id: int,
                     bos_token_id: int, eos_token_id: int, seed: int, base_vocab_size: Optional[int] = None
                     ) -> PreTrainedModel:
    """A small randomly initialised causal LM (``arch``: ``llama`` or ``qwen2``) with tied
    embeddings, its weights a function of ``seed``.

    ``base_vocab_size`` (< ``vocab_size``): every weight is drawn exactly as for a model of
    ``base_vocab_size`` tokens, and the embedding rows of the tokens after it start at zero
    (tied: their logits start at 0). The default model passes :data:`BYTE_BASE_VOCAB`, so the
    byte tokens added to the 100-token character vocabulary leave the initialisation of the rest
    unchanged. Why, measured on the default main job (seed 0): the tiny model's warm-up is
    sensitive to its initialisation (see ``warmup/sft``); with all 260 rows drawn afresh it
    under-learned (SFT loss 0.32; held-out accuracy 0.246 → 0.241 after RL); with the extra rows
    drawn N(0, 0.02) it reached 0.095 but left 7- and 8-step chains near chance; with zero rows
    it reached 0.067, as the character model did (~0.07).
    """
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
    base = vocab_size if base_vocab_size is None else base_vocab_size
    if not 0 < base <= vocab_size:
        raise ValueError(f"base_vocab_size={base_vocab_size}: must be in 1..vocab_size ({vocab_size})")
    config.vocab_size = base
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(config)
        if base < vocab_size:
            old = model.get_input_embeddings()
            new = torch.nn.Embedding(vocab_size, hidden_size, padding_idx=old.padding_idx)
            with torch.no_grad():
                new.weight.zero_()
                new.weight[:base] = old.weight
            model.set_input_embeddings(new)
            model.config.vocab_size = vocab_size
            model.lm_head.out_features = vocab_size
            model.tie_weights()
    return model


@dataclass
class Policy:
    """A causal LM and its tokenizer.

    :ivar model: the trainable ``PreTrainedModel`` (float32 on the CPU by default; the trainer
        moves it to ``train.device``, :attr:`device`).
    :ivar tokenizer: its tokenizer; ``pad_token_id`` and ``eos_token_id`` are set.
    :ivar fast: compute :meth:`token_logprobs` with :func:`reasonzoo.fasttrain.token_logprobs`
        where it is exact (Llama/Qwen2, fp32, right padding); ``False``: always the HF forward.
    :ivar chat: encode prompts through the tokenizer's chat template (one user turn and the
        generation prompt; see :meth:`encode_prompt`); needs ``tokenizer.chat_template``.
    :ivar system_prompt: a system turn put before the user turn when ``chat`` is on.
    :ivar overlong: what :meth:`fit_context` does with problems whose prompt plus response limit
        exceed the context: ``"error"`` or ``"drop"``.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    fast: bool = True
    chat: bool = False
    system_prompt: Optional[str] = None
    overlong: str = "error"

    def __post_init__(self):
        if self.chat and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("model.chat_template: this tokenizer has no chat template (set model.chat_template=none)")
        if self.system_prompt is not None and not self.chat:
            raise ValueError(f"model.system_prompt={self.system_prompt!r}: needs a chat template "
                             "(the tokenizer has none, or model.chat_template=none)")
        if self.overlong not in OVERLONG:
            raise ValueError(f"model.overlong={self.overlong!r}: allowed values are {', '.join(OVERLONG)}")

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters (``train.device``, :mod:`reasonzoo.device`):
        inputs to :meth:`token_logprobs` and the engines' tensors go there."""
        return next(self.model.parameters()).device

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every token id that ends a response: the tokenizer's EOS, then those of the model's
        ``generation_config.eos_token_id`` (an int or a list, e.g. Qwen2.5's ``[151645, 151643]``),
        without repeats. HF ``generate`` stops on the generation config's; the engines stop on any
        of these."""
        ids = [self.tokenizer.eos_token_id]
        cfg = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids += list(cfg) if isinstance(cfg, (list, tuple)) else [cfg]
        return tuple(dict.fromkeys(int(i) for i in ids if i is not None))

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def encode_prompt(self, text: str) -> tuple[int, ...]:
        """The prompt's token ids, as every rollout and evaluation feeds them to the model.

        Without ``chat``: the tokenizer's own encoding (the tiny tokenizer adds BOS). With
        ``chat``: ``apply_chat_template`` renders ``[system?, user: text]`` with the generation
        prompt, and the rendered text is encoded with ``add_special_tokens=False``, since a
        template writes its own BOS (``{{ bos_token }}``): encoding it with special tokens would
        give two (the convention of HF's ``apply_chat_template(tokenize=True)`` and vLLM's chat).
        """
        if not self.chat:
            return tuple(self.tokenizer(text)["input_ids"])
        messages = [{"role": "user", "content": text}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # the template's special-token strings are tokens, also for a tokenizer that splits them in text
        return tuple(self.tokenizer(rendered, add_special_tokens=False, split_special_tokens=False)["input_ids"])

    @property
    def context_length(self) -> Optional[int]:
        """Longest prompt + response in tokens: the model's ``max_position_embeddings``, or the
        tokenizer's ``model_max_length`` where that is smaller (unset, HF's 1e30, is ignored);
        ``None`` when neither is known."""
        sizes = [getattr(self.model.config, "max_position_embeddings", None),
                 getattr(self.tokenizer, "model_max_length", None)]
        sizes = [int(n) for n in sizes if isinstance(n, int) and 0 < n < 10**9]
        return min(sizes) if sizes else None

    def fit_context(self, splits: dict[str, Sequence[Problem]], max_new_tokens: int
                    ) -> tuple[dict[str, list[Problem]], dict[str, float]]:
        """Check, before any work starts, that every problem's encoded prompt plus
        ``max_new_tokens`` fits :attr:`context_length` (an overlong one would run silently
        past the positions the model was trained on).

        :param splits: problems per split name (``{"train": [...], "eval": [...]}``).
        :param max_new_tokens: the response limit (``generation.max_new_tokens``).
        :returns: the problems kept per split, and metrics ``data/dropped_overlong/<split>``
            (problems dropped) and ``data/max_prompt_tokens``.
        :raises ValueError: with ``overlong="error"`` and any problem too long: how many per
            split, and the first one's id and length; or a prompt the chat template rejects.
        """
        limit = self.context_length
        kept: dict[str, list[Problem]] = {}
        metrics: dict[str, float] = {}
        longest, over = 0, {}
        for name, problems in splits.items():
            try:
                if self.chat:
                    lengths = [len(self.encode_prompt(p.prompt)) for p in problems]
                else:
                    lengths = [len(x) for x in self.tokenizer([p.prompt for p in problems])["input_ids"]]
            except Exception as exc:  # a template that rejects the turns (e.g. no system role)
                raise ValueError(f"model.chat_template / model.system_prompt: the chat template failed on "
                                 f"the {name} prompts: {exc}") from None
            longest = max([longest, *lengths])
            bad = [i for i, n in enumerate(lengths) if limit is not None and n + max_new_tokens > limit]
            if bad:
                over[name] = (len(bad), len(problems), problems[bad[0]].uid, lengths[bad[0]])
            drop = set(bad) if self.overlong == "drop" else set()
            kept[name] = [p for i, p in enumerate(problems) if i not in drop]
            metrics[f"data/dropped_overlong/{name}"] = float(len(drop))
            if problems and not kept[name]:
                raise ValueError(f"model.overlong=drop: every one of the {len(problems)} {name} problems is longer "
                                 f"than the context ({limit} tokens) minus generation.max_new_tokens={max_new_tokens}")
        if over and self.overlong == "error":
            parts = "; ".join(f"{n} of {tot} {name} problems (first: id {uid!r}, {k} prompt tokens)"
                              for name, (n, tot, uid, k) in over.items())
            raise ValueError(f"prompt + generation.max_new_tokens={max_new_tokens} exceeds the model's context of "
                             f"{limit} tokens for {parts}; shorten the prompts, lower generation.max_new_tokens, "
                             f"or set model.overlong=drop")
        metrics["data/max_prompt_tokens"] = float(longest)
        return kept, metrics

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
            lengths = torch.full(input_ids.shape[:1], input_ids.shape[1], device=input_ids.device) if m is None else m.sum(-1)
            return token_logprobs(self.model, input_ids, lengths)
        logits = self.model(input_ids=input_ids, attention_mask=None if right_padded else m).logits[:, :-1]  # (N, T-1, V)
        n, t, v = logits.shape
        nll = F.cross_entropy(logits.float().reshape(n * t, v), input_ids[:, 1:].reshape(n * t), reduction="none")
        return -nll.view(n, t)  # = log_softmax(logits).gather(targets)

    def logprobs_and_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and last hidden states from one forward of the HF module (for a value head on
        the policy's trunk, ``loss/ppo`` with ``critic: head``).

        :param input_ids: ``(N, T)`` ids, right-padded as for :meth:`token_logprobs`.
        :param attention_mask: ``(N, T)``; right padding runs the causal kernel with no mask.
        :returns: ``(logp, hidden)``: ``logp`` ``(N, T-1)`` as :meth:`token_logprobs` (column t
            scores ``input_ids[:, t + 1]``; pad columns finite, to be masked), ``hidden``
            ``(N, T, H)`` the states the LM head reads (``hidden_states[-1]``: after the final
            norm), with grad when grad is enabled. Always the HF forward (the lean forward of
            :mod:`reasonzoo.fasttrain` returns no hidden states); log-probs agree with
            :meth:`token_logprobs` to float rounding.
        """
        m = attention_mask
        right_padded = m is None or bool(m[:, 0].all()) and bool((m[:, 1:] <= m[:, :-1]).all())
        out = self.model(input_ids=input_ids, attention_mask=None if right_padded else m, output_hidden_states=True)
        logits = out.logits[:, :-1]  # (N, T-1, V)
        n, t, v = logits.shape
        nll = F.cross_entropy(logits.float().reshape(n * t, v), input_ids[:, 1:].reshape(n * t), reduction="none")
        return -nll.view(n, t), out.hidden_states[-1]

    def save(self, path: str | Path) -> None:
        """Save model and tokenizer with ``save_pretrained`` (reloadable with ``from_pretrained``)."""
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype = torch.float32, chat_template: str = "auto",
             system_prompt: Optional[str] = None, overlong: str = "error") -> "Policy":
        """Load a local HF model folder (``local_files_only``). ``chat_template``: ``"auto"``
        encodes prompts through the tokenizer's chat template when it has one, ``"none"``
        never; ``system_prompt`` and ``overlong``: see the class. ``FileNotFoundError`` when
        the folder has no ``config.json``; ``ValueError`` naming the config key otherwise."""
        if chat_template not in CHAT_TEMPLATE:
            raise ValueError(f"model.chat_template={chat_template!r}: allowed values are {', '.join(CHAT_TEMPLATE)}")
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.path={str(path)!r}: no Hugging Face model there (config.json missing)")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        chat = chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))
        return cls(model=model, tokenizer=tokenizer, chat=chat, system_prompt=system_prompt, overlong=overlong)
