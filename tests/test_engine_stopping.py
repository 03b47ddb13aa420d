"""Stopping rules of the engines (issue 8 items 12-13): several EOS ids (the tokenizer's and the
model's ``generation_config.eos_token_id`` list) each stop a row, as HF ``generate`` does; a stop
string completed inside a token stops the row and the text is cut right after it. Checked on the
torch engine's two decode paths against HF ``generate``, and (``-m vllm``) on engine=vllm against
the torch engine.

The models here are built so that greedy decoding follows a fixed chain of tokens: one layer whose
attention and MLP outputs are zeroed, a one-hot embedding and an untied ``lm_head`` with
``lm_head[nxt[i], i] = 1``, so the logits after token ``i`` peak at ``nxt[i]`` (by sqrt(hidden) ~ 18
nats: also at T=1 the chain is followed with probability ~1 - 1e-5 per token).
"""
import pytest
import torch

from reasonzoo.engine import StopStrings
from reasonzoo.plugins.engine.torch import TorchEngine, TorchEngineConfig
from reasonzoo.policy import Policy, build_char_tokenizer
from reasonzoo.trainer import make_rollout
from reasonzoo.types import FinishReason, Generation, GenerationRequest, Problem, SamplingParams

GREEDY = dict(temperature=0, max_new_tokens=12)


def chain_model(tok, chain: dict[int, int], default: int, eos_ids=None):
    """A Llama whose greedy next token after ``i`` is ``chain.get(i, default)`` (see the module
    docstring); ``eos_ids`` becomes ``generation_config.eos_token_id``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    v = len(tok)
    h = -(-v // 64) * 64  # one-hot embedding; head size 64 (vLLM's CPU attention supports it)
    cfg = LlamaConfig(vocab_size=v, hidden_size=h, intermediate_size=64, num_hidden_layers=1, num_attention_heads=h // 64,
                      num_key_value_heads=h // 64, max_position_embeddings=128, tie_word_embeddings=False,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(v, h))
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        head = torch.zeros(v, h)
        for i in range(v):
            head[chain.get(i, default), i] = 1.0
        model.lm_head.weight.copy_(head)
    if eos_ids is not None:
        model.generation_config.eos_token_id = eos_ids
    return model


def _id(tok, s):
    (i,) = tok.convert_tokens_to_ids([s]) if s.startswith("<") else tok(s, add_special_tokens=False)["input_ids"]
    return i


# ---- item 12: several EOS ids --------------------------------------------------------------------

@pytest.fixture
def two_eos_policy():
    """Tokenizer EOS ``</s>`` (2) and a second EOS ``<unk>`` (3) listed only in the model's
    generation config (as Qwen2.5 lists ``[151645, 151643]``): after '1' the chain is 2 3 </s>,
    after 'a' it is b c <unk>; everything else (EOS ids included) leads to 'z' forever."""
    tok = build_char_tokenizer()
    c = {s: _id(tok, s) for s in "123abcz"}
    eos, unk = tok.eos_token_id, tok.unk_token_id
    chain = {c["1"]: c["2"], c["2"]: c["3"], c["3"]: eos, c["a"]: c["b"], c["b"]: c["c"], c["c"]: unk}
    return Policy(model=chain_model(tok, chain, c["z"], eos_ids=[eos, unk]), tokenizer=tok)


def test_eos_token_ids_union(two_eos_policy):
    p = two_eos_policy
    assert p.eos_token_ids == (2, 3)
    p.model.generation_config.eos_token_id = 3  # an int
    assert p.eos_token_ids == (2, 3)
    p.model.generation_config.eos_token_id = [3, 2, 3]  # repeats, the tokenizer's listed too
    assert p.eos_token_ids == (2, 3)
    p.model.generation_config.eos_token_id = None
    assert p.eos_token_ids == (2,)


@pytest.mark.parametrize("fast", [True, False])
def test_every_eos_id_stops_a_row_like_hf_generate(two_eos_policy, fast):
    policy = two_eos_policy
    eng = TorchEngine(TorchEngineConfig(fast=fast), policy)
    assert (eng.fast is not None) == fast
    prompts = ["1", "a", "z"]
    reqs = [GenerationRequest(policy.encode_prompt(s)) for s in prompts]
    for params in (SamplingParams(**GREEDY), SamplingParams(temperature=1.0, max_new_tokens=12)):
        outs = eng.generate(reqs, params, torch.Generator().manual_seed(0))
        assert [policy.tokenizer.convert_ids_to_tokens(list(o.token_ids)) for o in outs] == [
            ["2", "3", "</s>"], ["b", "c", "<unk>"], ["z"] * 12]
        assert [o.finish_reason for o in outs] == [FinishReason.STOP, FinishReason.STOP, FinishReason.LENGTH]
    for r, o in zip(reqs, eng.generate(reqs, SamplingParams(**GREEDY), torch.Generator())):
        ids = torch.tensor([r.prompt_ids])  # HF generate, stopping on the generation config's list
        hf = policy.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                                   pad_token_id=policy.pad_token_id)[0, ids.shape[1]:].tolist()
        ends = [n + 1 for n, t in enumerate(hf) if t in policy.eos_token_ids]
        assert list(o.token_ids) == hf[: ends[0] if ends else len(hf)]


def test_eos_in_continued_batch_rows(two_eos_policy):
    """Continuous batching with refills (one row, requests of both chains): each stops on its own EOS id."""
    policy = two_eos_policy
    reqs = [GenerationRequest(policy.encode_prompt(s)) for s in "1a1a"]
    outs = TorchEngine(TorchEngineConfig(max_batch=1), policy).generate(reqs, SamplingParams(**GREEDY), torch.Generator())
    assert [o.token_ids[-1] for o in outs] == [2, 3, 2, 3] and all(o.finish_reason is FinishReason.STOP for o in outs)


# ---- item 13: a stop string completed inside a token ---------------------------------------------

def multichar_tokenizer():
    """Characters plus a few multi-character tokens (``</answer``, ``>\\n``, ``ab>c``), as
    subword vocabularies have; encodes text one character at a time, decodes tokens joined."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for t in [c for c in string.printable if c not in "\t\r\x0b\x0c"] + ["</answer", ">\n", "ab>c"]:
        vocab.setdefault(t, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", padding_side="left", clean_up_tokenization_spaces=False)


@pytest.fixture
def answer_policy():
    """After 'q': 4 ``</answer`` ``>\\n`` x x x ...; after 'w': ``ab>c`` y y ...; otherwise 'x'."""
    tok = multichar_tokenizer()
    v = tok.get_vocab()
    chain = {v["q"]: v["4"], v["4"]: v["</answer"], v["</answer"]: v[">\n"], v["w"]: v["ab>c"], v["ab>c"]: v["y"],
             v["y"]: v["y"]}
    return Policy(model=chain_model(tok, chain, v["x"]), tokenizer=tok)


def test_stop_strings_unit(answer_policy):
    tok = answer_policy.tokenizer
    v = tok.get_vocab()
    s = StopStrings(answer_policy.decode, ("</answer>",))
    ids = [v["4"], v["</answer"], v[">\n"], v["x"]]
    assert [s.fires(ids[:n]) for n in range(1, 5)] == [False, False, True, False]  # only the completing token fires
    assert s.cut(ids[:3]) == "4</answer>" and s.cut(ids[:2]) is None
    assert s.cut(ids[2:3], prefix=ids[:2]) == ">"  # the string started in the prefix: only the new text is returned
    two = StopStrings(answer_policy.decode, ("x", "b>"))
    assert two.fires([v["ab>c"]]) and two.cut([v["ab>c"], v["x"]]) == "ab>"  # the earliest-ending string cuts
    # a long window: the string starts many tokens back
    long = StopStrings(answer_policy.decode, ("0123456789",))
    digits = [v[c] for c in "990123456789"]
    assert [long.fires(digits[:n]) for n in range(1, 13)] == [False] * 11 + [True]
    with pytest.raises(ValueError, match=r"SamplingParams.stop_strings=\(''\,\): needs at least one string and no empty"):
        StopStrings(answer_policy.decode, ("",))


@pytest.mark.parametrize("fast", [True, False])
def test_stop_string_inside_a_token_stops_and_cuts(answer_policy, fast, make_ctx):
    policy = answer_policy
    eng = TorchEngine(TorchEngineConfig(fast=fast), policy)
    reqs = [GenerationRequest(policy.encode_prompt(s)) for s in "qwx"]
    params = SamplingParams(**GREEDY, stop_strings=("</answer>", "b>"))
    outs = eng.generate(reqs, params, torch.Generator())
    toks = [policy.tokenizer.convert_ids_to_tokens(list(o.token_ids)) for o in outs]
    assert toks[:2] == [["4", "</answer", ">\n"], ["ab>c"]] and toks[2] == ["x"] * 12
    assert [o.finish_reason for o in outs] == [FinishReason.STOP, FinishReason.STOP, FinishReason.LENGTH]
    assert [o.text for o in outs] == ["4</answer>", "ab>", None]  # cut right after the stop string, which is kept
    # the rollout (what rewards read) carries the cut text
    ctx = make_ctx(policy=policy)
    prob = Problem(uid="p", prompt="q", answer="4")
    assert make_rollout(ctx, prob, reqs[0].prompt_ids, outs[0]).text == "4</answer>"
    assert make_rollout(ctx, prob, reqs[2].prompt_ids, outs[2]).text == "x" * 12
    # a continued request whose prefix holds the start of the stop string
    v = policy.tokenizer.get_vocab()
    cont = eng.generate([GenerationRequest(reqs[0].prompt_ids, prefix_ids=(v["4"], v["</answer"]))], params,
                        torch.Generator())[0]
    assert cont == Generation((v[">\n"],), cont.logprobs, FinishReason.STOP, ">")


def test_make_rollout_without_cut_decodes(tiny_policy, make_ctx):
    ctx = make_ctx(policy=tiny_policy)
    ids = tiny_policy.encode_response("12", eos=True)
    r = make_rollout(ctx, Problem(uid="p", prompt="1", answer="2"), (1,), Generation(ids, (0.0,) * len(ids), FinishReason.STOP))
    assert r.text == "12"


# ---- engine=vllm: the same stopping rules (pytest -m vllm) --------------------------------------

@pytest.mark.vllm
def test_vllm_stops_like_torch_engine(two_eos_policy, answer_policy, tmp_path):
    """engine=vllm on the two chain models: every EOS id stops a row, and a stop string completed
    inside a token stops it with vLLM's own cut text (the stop string kept), equal to engine/torch's
    tokens, end states and text; a stop string starting in a continued request's prefix too."""
    from reasonzoo.plugins.engine.vllm import VllmEngine, VllmEngineConfig

    cases = [(two_eos_policy, "1az", ()), (answer_policy, "qwx", ("</answer>", "b>"))]
    engines = []
    try:
        for n, (policy, prompts, stops) in enumerate(cases):
            eng = VllmEngine(VllmEngineConfig(max_model_len=64, kv_cache_memory_bytes=16 << 20), policy, tmp_path / f"e{n}")
            engines.append(eng)
            reqs = [GenerationRequest(policy.encode_prompt(s)) for s in prompts]
            if stops:
                v = policy.tokenizer.get_vocab()
                reqs.append(GenerationRequest(reqs[0].prompt_ids, prefix_ids=(v["4"], v["</answer"])))
            params = SamplingParams(**GREEDY, stop_strings=stops)
            ours = eng.generate(reqs, params, torch.Generator())
            ref = TorchEngine(TorchEngineConfig(), policy).generate(reqs, params, torch.Generator())
            assert [(o.token_ids, o.finish_reason, o.text) for o in ours] == [(o.token_ids, o.finish_reason, o.text) for o in ref]
            assert [o.finish_reason for o in ours[:3]] == [FinishReason.STOP, FinishReason.STOP, FinishReason.LENGTH]
        assert engines[1].generate([GenerationRequest(answer_policy.encode_prompt("q"))],
                                   SamplingParams(**GREEDY, stop_strings=("</answer>",)), torch.Generator())[0].text == "4</answer>"
    finally:
        for eng in engines:
            eng.close()


def test_vllm_prefix_stop_cut_unit(answer_policy):
    """engine=vllm's after-the-fact cut for a stop string starting in a continued request's prefix
    (vLLM searches only the new text); runs without vLLM."""
    from reasonzoo.plugins.engine.vllm import cut_prefix_stops

    v = answer_policy.tokenizer.get_vocab()
    stops = StopStrings(answer_policy.decode, ("</answer>",))
    gens = [Generation((v[">\n"], v["x"], v["x"]), (-0.1, -0.2, -0.3), FinishReason.LENGTH),  # completes on its first token
            Generation((v["x"], v["x"]), (-0.1, -0.2), FinishReason.LENGTH),  # prefix without the string's start
            Generation((v[">\n"],), (-0.1,), FinishReason.LENGTH)]  # completes on the limit: STOP wins
    out = cut_prefix_stops(gens, [(v["4"], v["</answer"]), (v["4"],), (v["</answer"],)], stops)
    assert out == [Generation((v[">\n"],), (-0.1,), FinishReason.STOP, ">"), gens[1],
                   Generation((v[">\n"],), (-0.1,), FinishReason.STOP, ">")]


def test_partial_rollout_text_cut_at_stop_string_across_segments(answer_policy, make_ctx):
    """rollout=partial: a stop string that starts in one iteration's segment and is completed (inside
    a token) in the next stops the response and its rollout text is cut right after it, as a single
    engine call's is."""
    from reasonzoo.plugins.rollout.partial import Partial, PartialConfig

    policy = answer_policy
    ctx = make_ctx(policy=policy)
    eng = TorchEngine(TorchEngineConfig(), policy)
    part = Partial(PartialConfig(segment_tokens=2))
    params = SamplingParams(**GREEDY, stop_strings=("</answer>",))
    prob = Problem(uid="q", prompt="q", answer="4")
    first = part.rz_rollout(ctx=ctx, problems=[prob], engine=eng, samples_per_problem=1, sampling=params)
    assert first == []  # "4</answer" so far: carried over
    ctx.iteration, ctx.policy_version = 2, 1
    (group,) = part.rz_rollout(ctx=ctx, problems=[], engine=eng, samples_per_problem=1, sampling=params)
    (r,) = group.rollouts
    assert policy.tokenizer.convert_ids_to_tokens(list(r.response_ids)) == ["4", "</answer", ">\n"]
    assert r.finish_reason is FinishReason.STOP and r.text == "4</answer>"
