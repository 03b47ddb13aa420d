"""engine/torch with ``compile: true``: the compiled decode step (``torch.compile(dynamic=True)`` of
``FastDecoder._decode``) gives the eager path's tokens and finish reasons, and its log-probs
within 1e-5, through refills, compaction and early stops; a bad value names the key.

The training forward is not compiled anywhere (measured in ``benchmarks/decode_efficiency.py``:
1.00-1.15x by CPU time for 21-34 s of compilation), so there is no compiled training path to test.
The first compilation takes ~10-20 s on the CPU (less with inductor's on-disk cache), once for
this file: one engine serves every test.
"""
import pytest
import torch

from reasonzoo.plugins.engine.torch import TorchEngine, TorchEngineConfig, TorchEnginePlugin
from reasonzoo.types import GenerationRequest, SamplingParams

PROMPTS = ["1+2=", "3*4-5+6=", "7=", "9-9*9=", "8*8="]


@pytest.fixture(scope="module")
def engines():
    from reasonzoo.policy import Policy, build_char_tokenizer, build_tiny_model

    tok = build_char_tokenizer()  # conftest's tiny_policy, built once for the module
    model = build_tiny_model(len(tok), "llama", 32, 2, 2, 64, 128, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, seed=0)
    policy = Policy(model=model.eval(), tokenizer=tok)
    # max_batch 6 < 15 requests: rows are refilled, then the batch compacts as rows end
    cfg = dict(max_batch=6, compact_at=0.25)
    return policy, TorchEngine(TorchEngineConfig(**cfg), policy), TorchEngine(TorchEngineConfig(compile=True, **cfg), policy)


def _reqs(policy, k=3):
    """k samples per prompt, limits 8..40 tokens: rows end at different steps (refill, compaction)."""
    return [GenerationRequest(policy.encode_prompt(p), max_new_tokens=8 + (7 * i) % 33)
            for i, p in enumerate(p for p in PROMPTS for _ in range(k))]


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_compiled_decode_matches_eager(engines, temperature):
    policy, eager, compiled = engines
    assert compiled.fast is not None and compiled.fast._decode is not eager.fast._decode
    params = SamplingParams(temperature=temperature, max_new_tokens=40)
    a = eager.generate(_reqs(policy), params, torch.Generator().manual_seed(3))
    b = compiled.generate(_reqs(policy), params, torch.Generator().manual_seed(3))
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.finish_reason for g in a] == [g.finish_reason for g in b]
    for x, y in zip(a, b):
        torch.testing.assert_close(torch.tensor(y.logprobs), torch.tensor(x.logprobs), atol=1e-5, rtol=1e-5)
    assert len({len(g.token_ids) for g in a}) > 5  # rows ended at many different steps
    assert compiled.fast.stats["admissions"] > 1  # finished rows were refilled


def test_bad_compile_value_names_the_key():
    with pytest.raises(ValueError, match=r"engine.compile='yes': must be true or false"):
        TorchEnginePlugin(TorchEngineConfig(compile="yes"))
