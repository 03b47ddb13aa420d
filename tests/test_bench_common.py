"""benchmarks/_common.py: the helpers the equal-work benchmarks rest on (EOS masking, the FLOP
parameter count, min/median/max) do what their figures assume."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from reasonzoo.types import SamplingParams

_spec = importlib.util.spec_from_file_location("_bench_common", Path(__file__).resolve().parent.parent / "benchmarks" / "_common.py")
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def test_eos_masked_never_samples_eos_renormalises_and_restores():
    import reasonzoo.fastdecode as fd
    import reasonzoo.plugins.engine.torch as te

    before = fd.sample_next, te.sample_next
    logits = torch.zeros(2000, 5)
    logits[:, 3] = 10.0  # EOS (id 3) would win almost always
    with common.eos_masked([3]):
        tok, lp = fd.sample_next(logits, SamplingParams(temperature=1.0), torch.Generator().manual_seed(0))
        assert not (tok == 3).any()
        assert torch.allclose(lp, torch.full_like(lp, -math.log(4)))  # uniform over the 4 others
        assert te.sample_next is fd.sample_next
    assert (fd.sample_next, te.sample_next) == before
    with pytest.raises(RuntimeError):
        with common.eos_masked([3]):
            raise RuntimeError("boom")
    assert (fd.sample_next, te.sample_next) == before  # restored after an exception too
    with pytest.raises(ValueError, match="no EOS ids"):
        with common.eos_masked([]):
            pass


def test_matmul_params_counts_linear_weights_only():
    m = torch.nn.Sequential(torch.nn.Embedding(7, 2), torch.nn.Linear(2, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 4, bias=False))
    assert common.matmul_params(m) == 2 * 3 + 3 * 4


def test_stats():
    assert common.stats([3.0, 1.0, 2.0, 10.0]) == {"min": 1.0, "median": 2.5, "max": 10.0}
    with pytest.raises(ValueError):
        common.stats([])
