"""reasonzoo.fasttrain: the lean training forward gives the HF forward's log-probs and parameter
gradients (Llama; Qwen2 with biases and grouped-query attention), shares prompts exactly, and
hands everything it does not cover to the HF forward."""
import pytest
import torch

from reasonzoo.fasttrain import shared_prefixes, unsupported


def _batch(policy, seed=0):
    """Right-padded rows: 3 prompts of different lengths x 3 samples of varying length, plus 2
    rows that share nothing, plus one row that shares its prompt with another group's prefix."""
    g = torch.Generator().manual_seed(seed)
    prompts = [policy.encode_prompt(p) for p in ["1+2=", "3*4-5+6=", "7-7*7*7-1="]]
    rows = []
    for p in prompts:
        for _ in range(3):
            n = int(torch.randint(1, 12, (1,), generator=g))
            rows.append(list(p) + torch.randint(4, 100, (n,), generator=g).tolist())
    rows.append(torch.randint(4, 100, (9,), generator=g).tolist())
    rows.append(torch.randint(4, 100, (3,), generator=g).tolist())
    rows.append(list(prompts[1][:5]) + [7, 8, 9])  # a shorter common prefix with the second group
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), policy.pad_token_id)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return ids, mask


def _logprobs_and_grads(policy, ids, mask, fast):
    policy.fast = fast
    policy.model.zero_grad(set_to_none=True)
    lp = policy.token_logprobs(ids, mask)
    w = torch.linspace(0.5, 1.5, lp.shape[1])  # a loss that weighs every real column differently
    (lp * mask[:, 1:] * w).sum().backward()
    return lp.detach() * mask[:, 1:], [p.grad.clone() for p in policy.model.parameters()]


@pytest.mark.parametrize("arch", ["llama", "qwen2_gqa"])
@pytest.mark.parametrize("train_mode", [True, False])
def test_logprobs_and_gradients_equal_hf(tiny_policy, qwen2_gqa_policy, arch, train_mode):
    policy = tiny_policy if arch == "llama" else qwen2_gqa_policy
    policy.model.train(train_mode)
    assert unsupported(policy.model) is None
    ids, mask = _batch(policy)
    assert len(shared_prefixes(ids, mask.sum(-1))) >= 3  # the prompt-sharing path is exercised
    lp_hf, g_hf = _logprobs_and_grads(policy, ids, mask, fast=False)
    lp_fast, g_fast = _logprobs_and_grads(policy, ids, mask, fast=True)
    torch.testing.assert_close(lp_fast, lp_hf, atol=1e-5, rtol=1e-5)
    for (name, _), a, b in zip(policy.model.named_parameters(), g_fast, g_hf):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    # a row scored alone (nothing shared) gives the same log-probs as inside the batch
    policy.fast = True
    with torch.no_grad():
        alone = policy.token_logprobs(ids[1:2], mask[1:2]) * mask[1:2, 1:]
    torch.testing.assert_close(alone, lp_fast[1:2], atol=1e-5, rtol=1e-5)


def test_shared_prefixes_hand_case():
    a, b = [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9, 9]
    rows = [a, b, a[:5] + [0], [1, 2, 7, 7, 7, 7], [5, 5, 5, 5, 5, 5], b]
    ids = torch.tensor(rows)
    lengths = torch.tensor([6, 6, 5, 6, 6, 6])
    got = sorted((sorted(r), p) for r, p in shared_prefixes(ids, lengths))
    # rows 0, 1, 2, 5 share [1, 2, 3, 4] (row 2 is 5 long: its cap is 4); row 3 shares only [1, 2]:
    # adding it would save 2 more tokens but cost 3 x 2 on the others
    assert got == [([0, 1, 2, 5], 4)]
    # no row gives away its last token: identical rows share all but it
    assert shared_prefixes(torch.tensor([a, a]), torch.tensor([6, 6])) == [([0, 1], 5)]
    assert shared_prefixes(torch.tensor([a]), torch.tensor([6])) == []


def test_left_padding_and_unsupported_models_use_hf_forward(tiny_policy):
    policy = tiny_policy
    ids, mask = _batch(policy)
    # a left-padded mask goes to the HF model with its mask: same log-probs as the right-padded rows
    left_ids, left_mask = ids.clone(), mask.clone()
    n = mask.sum(-1)
    for i in range(len(ids)):
        left_ids[i] = torch.cat([ids[i, n[i]:], ids[i, : n[i]]])
        left_mask[i] = torch.cat([mask[i, n[i]:], mask[i, : n[i]]])
    with torch.no_grad():
        right = policy.token_logprobs(ids, mask)
        left = policy.token_logprobs(left_ids, left_mask)
    for i in range(len(ids)):
        k = int(n[i]) - 1
        torch.testing.assert_close(left[i, -k:], right[i, :k], atol=1e-5, rtol=1e-5)
    # attention dropout in train mode, non-fp32 weights: named, and the HF forward runs
    policy.model.config.attention_dropout = 0.1
    policy.model.train()
    assert "attention dropout" in unsupported(policy.model)
    policy.model.eval()
    assert unsupported(policy.model) is None
    policy.model.config.attention_dropout = 0.0
    policy.model.double()
    assert "float32" in unsupported(policy.model)
    with torch.no_grad():
        lp = policy.token_logprobs(ids, mask)
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
