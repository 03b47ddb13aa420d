"""train.device (reasonzoo.device): the trainer on cpu / cuda.

On every machine: validation names ``train.device`` in one line (a CUDA device this torch cannot
see included), ``auto`` and per-rank resolution, ``TrainBatch.to``, and a resumed run may change
``train.device`` (where it runs, not what it computes).

Marked ``gpu`` (skipped where torch sees no CUDA device; ``benchmarks/gpu_check.sh`` runs them on a
GPU machine): the lean forward's log-probs and gradients on CUDA against the CPU (tolerance 1e-4:
other kernels, other summation order), greedy decoding on CUDA gives the CPU's tokens (continuous
batching, a refill and a compaction included), and a ``train.device=cuda`` run (warm-up, rollouts,
update, evaluation, checkpoint) completes and resumes on the CPU.
"""
import copy
import json
import math
import sys

import pytest
import torch
from omegaconf import OmegaConf

from reasonzoo import device as rzdevice
from reasonzoo.config import validate
from reasonzoo.registry import PluginError
from reasonzoo.train import compose
from reasonzoo.trainer import CONFIG_FILE, collate, train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device (gpu: benchmarks/gpu_check.sh)")


@pytest.mark.parametrize("value, words", [
    ("tpu", "allowed values are cpu, cuda, cuda:N"),
    ("cuda:x", "allowed values are cpu, cuda, cuda:N"),
    ("CPU", "allowed values are cpu, cuda, cuda:N"),
])
def test_bad_device_is_one_line_naming_the_key(tiny_overrides, value, words):
    with pytest.raises(PluginError) as e:
        validate(compose([*tiny_overrides, f"train.device={value}"]))
    msg = str(e.value)
    assert msg.startswith(f"train.device={value!r}") and words in msg and "\n" not in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("value", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_refused_before_any_work(tiny_overrides, value):
    with pytest.raises(PluginError, match=rf"^train.device={value}: torch .* sees no CUDA GPU .*use train.device=cpu$"):
        validate(compose([*tiny_overrides, f"train.device={value}"]))


def test_cuda_index_beyond_the_visible_gpus_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    rzdevice.check("cuda:1")
    with pytest.raises(ValueError, match=r"^train.device=cuda:2: torch sees 2 CUDA GPU\(s\), numbered 0..1$"):
        rzdevice.check("cuda:2")


def test_resolve_auto_and_ranks(monkeypatch):
    assert rzdevice.resolve("cpu", 3) == torch.device("cpu")
    assert rzdevice.resolve("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu", 0 if torch.cuda.is_available() else None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [rzdevice.resolve("cuda", r) for r in range(4)] == [torch.device("cuda", i) for i in (0, 1, 0, 1)]
    assert rzdevice.resolve("cuda:1", 0) == torch.device("cuda", 1)  # an explicit index is every rank's
    assert rzdevice.resolve("auto", 1) == torch.device("cuda", 1)


def test_train_batch_to_moves_every_tensor_extras_included(tiny_policy):
    from dataclasses import fields, replace

    from reasonzoo.testing import scored_group

    batch = collate([scored_group(tiny_policy, [1, 0], ["1+2=3;#3", "#7"])], tiny_policy.pad_token_id)
    batch = replace(batch, extras={"pg/advantage": torch.ones(len(batch)), "pg/old_logprob": torch.zeros(batch.response_mask.shape)})
    assert batch.to("cpu") is batch  # already there: no copy
    meta = batch.to("meta")
    for f in fields(batch):
        if f.name != "extras":
            assert getattr(meta, f.name).device.type == "meta", f.name
            assert getattr(meta, f.name).shape == getattr(batch, f.name).shape
    assert {k: v.device.type for k, v in meta.extras.items()} == {"pg/advantage": "meta", "pg/old_logprob": "meta"}


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _resume_for_more(run, iterations, monkeypatch, *overrides):
    """As if ``run`` had been killed before ``iterations``: resume it through the CLI's main()."""
    from reasonzoo import train as train_mod

    saved = OmegaConf.load(run / CONFIG_FILE)
    saved.iterations = iterations
    (run / CONFIG_FILE).write_text(OmegaConf.to_yaml(saved))
    (run / "summary.json").unlink()
    monkeypatch.setattr(sys, "argv", ["reasonzoo-train", f"resume={run}", *overrides])
    train_mod.main()


def test_resume_may_change_train_device(tmp_path, tiny_overrides, monkeypatch):
    """``train.device`` says where a run executes: a resume may set it (here to its own value; a
    device this machine lacks is refused in the validation's one line)."""
    train(compose([*tiny_overrides, "iterations=1"]), tmp_path / "r")
    _resume_for_more(tmp_path / "r", 2, monkeypatch, "train.device=cpu")
    assert [r["iteration"] for r in _records(tmp_path / "r")] == [0, 1, 2]
    assert OmegaConf.load(tmp_path / "r" / CONFIG_FILE).train.device == "cpu"


# ---- on a GPU (benchmarks/gpu_check.sh) -------------------------------------------------------

@pytest.mark.gpu
@cuda
def test_lean_forward_on_cuda_matches_the_cpu(tiny_policy):
    prompts = [tiny_policy.encode_prompt(p) for p in ["1+2=", "3*4-5+6="]]
    rows = [list(p) + list(range(5, 5 + n)) for p in prompts for n in (1, 4, 9)] + [[7, 8, 9]]  # shared prompts
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), tiny_policy.pad_token_id)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1

    def logprobs_and_grads(policy, ids, mask):
        policy.model.zero_grad(set_to_none=True)
        lp = policy.token_logprobs(ids, mask)
        (lp * mask[:, 1:] * torch.linspace(0.5, 1.5, lp.shape[1], device=lp.device)).sum().backward()
        return (lp.detach() * mask[:, 1:]).cpu(), [p.grad for p in policy.model.parameters()]

    lp_cpu, g_cpu = logprobs_and_grads(tiny_policy, ids, mask)
    gpu = copy.deepcopy(tiny_policy)
    gpu.model.to("cuda")
    lp_gpu, g_gpu = logprobs_and_grads(gpu, ids.cuda(), mask.cuda())
    torch.testing.assert_close(lp_gpu, lp_cpu, atol=1e-4, rtol=1e-4)
    for a, b in zip(g_gpu, g_cpu):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
@cuda
def test_greedy_decoding_on_cuda_gives_the_cpu_tokens(tiny_policy):
    from reasonzoo.fastdecode import FastDecoder
    from reasonzoo.types import SamplingParams

    prompts = [tiny_policy.encode_prompt(p) for p in ["1+2=", "3*4-5+6=", "7-7*7*7-1=", "1+2="]]
    params = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=12)
    out = {}
    for dev in ("cpu", "cuda"):
        policy = copy.deepcopy(tiny_policy)
        policy.model.to(dev)
        rows = FastDecoder(policy.model).generate(prompts, [12, 5, 12, 12], params, torch.Generator().manual_seed(0),
                                                  policy.pad_token_id, policy.eos_token_ids, slots=3)
        out[dev] = [(ids, reason) for ids, _, reason in rows]
    assert out["cuda"] == out["cpu"]


@pytest.mark.gpu
@cuda
def test_a_cuda_run_completes_and_resumes_on_the_cpu(tmp_path, tiny_overrides, monkeypatch):
    train(compose([*tiny_overrides, "iterations=2", "train.device=cuda"]), tmp_path / "g")
    records = _records(tmp_path / "g")
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert all(math.isfinite(r.get("train/grad_norm", 0.0)) for r in records)
    _resume_for_more(tmp_path / "g", 3, monkeypatch, "train.device=cpu")
    assert [r["iteration"] for r in _records(tmp_path / "g")] == [0, 1, 2, 3]


def test_nccl_needs_the_update_on_cuda_one_line(tiny_overrides, monkeypatch):
    """launcher.backend=nccl reduces CUDA tensors: with train.device=cpu it is refused at validation,
    naming both keys (after "this torch has no NCCL" on a CPU build)."""
    cfg = compose([*tiny_overrides, "launcher.trainer_ranks=2", "launcher.backend=nccl"])
    if not torch.distributed.is_nccl_available():
        with pytest.raises(PluginError, match="this torch has no NCCL"):
            validate(cfg)
        monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    with pytest.raises(PluginError, match=r"^launcher.backend=nccl with train.device=cpu: .*set train.device=cuda, or launcher.backend=gloo$"):
        validate(cfg)
