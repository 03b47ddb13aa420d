"""The tiny model's byte-level tokenizer: any Unicode text round-trips exactly (issue 8, item 10),
and the warm-up cache is keyed on the tokenizer."""
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from reasonzoo.policy import Policy, build_byte_tokenizer, build_tiny_model, tokenizer_fingerprint

TOK = build_byte_tokenizer()


def _policy(tok=TOK):
    model = build_tiny_model(len(tok), "llama", 16, 1, 2, 32, 64, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, seed=0)
    return Policy(model=model, tokenizer=tok)


POLICY = _policy()


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_unicode_round_trips(text):
    ids = POLICY.encode_prompt(text)
    assert ids[0] == TOK.bos_token_id and TOK.unk_token_id not in ids
    assert len(ids) == 1 + len(text.encode("utf-8"))  # one token per byte
    assert POLICY.decode(ids) == text
    assert POLICY.decode(POLICY.encode_response(text)) == text


@pytest.mark.parametrize("text", ["a\n\nb", "a\tb\r\n", "£3 × 4 ÷ 2", "x² + ∑ 😀", "<s>1</s><pad><unk>", " a . b , c ! "])
def test_examples_round_trip(text):
    assert POLICY.decode(POLICY.encode_prompt(text)) == text


def test_printable_ascii_one_token_per_character_with_the_old_ids():
    # the earlier character tokenizer's ids: 4 specials, then string.printable without \t\r\x0b\x0c
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    assert [TOK(c, add_special_tokens=False)["input_ids"] for c in chars] == [[4 + i] for i in range(len(chars))]
    assert len(POLICY.encode_prompt("3a+4b*2c-2=")) == 12 and len(TOK) == 4 + 256


def test_round_trip_survives_save_and_load(tmp_path):
    POLICY.save(tmp_path)
    loaded = Policy.load(tmp_path)
    text = "a\n\nb £×÷ <s>"
    assert loaded.encode_prompt(text) == POLICY.encode_prompt(text) and loaded.decode(loaded.encode_prompt(text)) == text
    assert tokenizer_fingerprint(loaded.tokenizer) == tokenizer_fingerprint(TOK)


def test_warmup_cache_key_changes_with_the_tokenizer():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from reasonzoo.plugins.warmup.sft import SFTConfig, SFTWarmup

    class Ctx:
        cfg = OmegaConf.create({"model": {"name": "hf"}, "task": {"name": "modarith"}, "warmup": {"name": "sft"}})
        seed = warmup_seed = data_seed = 0

    other = Tokenizer.from_str(TOK.backend_tokenizer.to_str())
    other.add_tokens(["<extra>"])  # one more vocabulary entry: a different tokenizer under the same config
    other = PreTrainedTokenizerFast(tokenizer_object=other, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    sft = SFTWarmup(SFTConfig())
    assert sft.cache_key(Ctx, POLICY) == sft.cache_key(Ctx, _policy(build_byte_tokenizer()))  # deterministic
    assert sft.cache_key(Ctx, POLICY) != sft.cache_key(Ctx, Policy(model=POLICY.model, tokenizer=other))


def test_default_model_keeps_the_character_model_initialisation(make_ctx):
    import torch

    from reasonzoo.plugins.model.hf import HFModel, HFModelConfig

    policy = HFModel(HFModelConfig()).rz_build_policy(make_ctx())
    t = HFModelConfig().tiny
    ref = build_tiny_model(100, t.arch, t.hidden_size, t.num_layers, t.num_heads, t.intermediate_size,
                           t.max_position_embeddings, 0, 1, 2, seed=0)
    got, want = policy.model.state_dict(), ref.state_dict()
    assert got["model.embed_tokens.weight"].shape == (260, t.hidden_size)
    torch.testing.assert_close(got["model.embed_tokens.weight"][:100], want["model.embed_tokens.weight"], rtol=0, atol=0)
    assert not got["model.embed_tokens.weight"][100:].any()  # the byte rows start at zero
    for k in want:
        if "embed_tokens" not in k and "lm_head" not in k:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    assert policy.model.lm_head.weight.data_ptr() == policy.model.model.embed_tokens.weight.data_ptr()  # still tied
