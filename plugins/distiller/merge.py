"""Long2short by model merging (k1.5 §2.4): average the weights of the long-CoT model (the policy
this run trained) and a short-CoT model read from another run or model folder.

    θ_merged = (1 − α) · θ_long + α · θ_short       (the paper: a plain average, α = 0.5)

Both models must have the same architecture. The merged policy is evaluated and saved under
``<run dir>/distilled``.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch

from reasonzoo import hookimpl, plugin
from reasonzoo.checkpoint import load_model_weights


@dataclass
class MergeConfig:
    short_model: str = "???"  #: run directory, checkpoint or model folder of the short-CoT model (required)
    alpha: float = 0.5  #: weight of the short model (paper: 0.5, a plain average)


def merge_state_dicts(long: dict[str, torch.Tensor], short: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 − α)·long + α·short for every floating-point tensor; the two must have the same keys and shapes."""
    missing = set(long) ^ set(short)
    if missing:
        raise ValueError(f"distiller merge: the models differ in parameters {sorted(missing)[:5]}")
    out = {}
    for k, a in long.items():
        b = short[k]
        if a.shape != b.shape:
            raise ValueError(f"distiller merge: {k} has shape {tuple(a.shape)} vs {tuple(b.shape)}")
        out[k] = (1 - alpha) * a + alpha * b.to(a.dtype) if a.is_floating_point() else a.clone()
    return out


@plugin("distiller", "merge", MergeConfig)
class Merge:
    """Weight average of the long-CoT and a short-CoT model."""

    def __init__(self, cfg: MergeConfig):
        if not 0.0 <= cfg.alpha <= 1.0:
            raise ValueError(f"distiller.alpha={cfg.alpha}: must be in [0, 1]")
        self.cfg = cfg

    @hookimpl
    def rz_distill(self, ctx, policy):
        short = load_model_weights(self.cfg.short_model)
        long = {k: v for k, v in policy.model.state_dict().items() if k in short}
        model = copy.deepcopy(policy.model)
        model.load_state_dict(merge_state_dicts(long, short, self.cfg.alpha), strict=False)
        return dataclasses.replace(policy, model=model)  # same tokenizer and prompt encoding (chat template)
