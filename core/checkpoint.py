"""Atomic checkpoints.

Layout of a run directory::

    checkpoints/iter_000012/model/      save_pretrained of the policy (loads with from_pretrained)
    checkpoints/iter_000012/state.pt    optimizer, plugin states, counters, RNG state
    checkpoints/latest                  name of the newest complete checkpoint

A checkpoint is written into a temporary folder and renamed into place; ``latest`` is replaced
atomically afterwards. A crash at any point leaves the previous checkpoint intact and ``latest``
pointing at a complete one.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_checkpoint(run_dir: Path, iteration: int, policy: Any, state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``iter_<iteration>`` atomically and prune all but the newest ``keep``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"iter_{iteration:06d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    policy.save(tmp / "model")
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    final = root / name
    if final.exists():  # re-written after a resume from an earlier checkpoint
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    atomic_write_text(root / "latest", name + "\n")
    ckpts = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("iter_"))
    for old in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or ``None``."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "state.pt").is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, which is incomplete (no state.pt)")
    return path


def load_state(ckpt: Path) -> dict[str, Any]:
    return torch.load(Path(ckpt) / "state.pt", map_location="cpu", weights_only=False)


def resolve_model_dir(path: str | Path) -> Path:
    """A Hugging Face model folder from a run dir (its latest checkpoint, or ``final/`` when
    finished), a checkpoint dir, or a model dir."""
    path = Path(path)
    candidates = [path, path / "model", path / "final"]
    ckpt = latest_checkpoint(path) if (path / "checkpoints").is_dir() else None
    if ckpt is not None:
        candidates.insert(1, ckpt / "model")
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    raise FileNotFoundError(f"{str(path)!r} is neither a model folder, a checkpoint nor a run with checkpoints")


def load_model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights saved at ``path`` (see :func:`resolve_model_dir`) as a state dict."""
    model_dir = resolve_model_dir(path)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir} holds no .safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(f))
    return weights


def load_into(model: torch.nn.Module, path: str | Path) -> None:
    """Load saved weights into ``model`` in place; only tied weights may be absent from the file."""
    weights = load_model_weights(path)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {}) | {"lm_head.weight"}
    bad = [k for k in missing if k not in tied]
    if bad or unexpected:
        raise RuntimeError(f"weights at {path} do not fit the model: missing {bad}, unexpected {list(unexpected)}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
