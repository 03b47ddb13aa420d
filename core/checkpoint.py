"""Atomic checkpoints.

Layout of a run directory::

    checkpoints/iter_000012/model/      save_pretrained of the policy (loads with from_pretrained)
    checkpoints/iter_000012/state.pt    optimizer, plugin states, counters, RNG state
    checkpoints/latest                  name of the newest complete checkpoint

A checkpoint is written into a temporary folder and renamed into place; ``latest`` is replaced
atomically afterwards. A crash at any point leaves the previous checkpoint intact and ``latest``
pointing at a complete one. A writer removes only its own temporary folder (named with its pid);
those of killed writers are removed by :func:`reasonzoo.rundir.remove_stale_temporaries` when the
next run takes the directory's lock. Damaged files raise :class:`CheckpointError` naming the file
and what was expected.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .errors import CheckpointError


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (a temporary file beside it, renamed into place);
    on a write error (full or read-only disk) the old file stays and the temporary is removed."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not exc.filename:  # a full disk names no file: name it
            raise OSError(exc.errno, f"{exc.strerror or exc} (writing {path.name}; the old one is kept)", str(path)) from exc
        raise
    _fsync_dir(path.parent)


def save_checkpoint(run_dir: Path, iteration: int, policy: Any, state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``iter_<iteration>`` atomically and prune all but the newest ``keep``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"iter_{iteration:06d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"  # this writer's own; others' are never touched here
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        policy.save(tmp / "model")
        with open(tmp / "state.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:  # a full or read-only disk, a signal: the previous checkpoint stays the latest
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not exc.filename:  # name the path (ENOSPC from a write names none)
            raise OSError(exc.errno, f"{exc.strerror or exc} (writing checkpoint {name}; the previous one is kept)",
                          str(tmp)) from exc
        raise
    final = root / name
    if final.exists():  # re-written after a resume from an earlier checkpoint
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    atomic_write_text(root / "latest", name + "\n")
    ckpts = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("iter_"))
    for old in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or ``None``."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{pointer}: corrupt (not UTF-8 text); expected the name of a checkpoint folder") from exc
    path = pointer.parent / name
    if not re.fullmatch(r"iter_\d{6}", name) or not (path / "state.pt").is_file():
        raise CheckpointError(f"{pointer} names {name[:40]!r}, which is not a complete checkpoint (expected an "
                              f"iter_NNNNNN folder with state.pt and model/)")
    return path


#: Keys every ``state.pt`` holds (written by ``reasonzoo.trainer``).
STATE_KEYS = ("iteration", "policy_version", "optimizer", "torch_rng", "plugins")


def load_state(ckpt: Path) -> dict[str, Any]:
    """The counters, optimizer, RNG and plugin states of a checkpoint (``<ckpt>/state.pt``).

    :raises CheckpointError: naming the file when it is missing, truncated or corrupt, or lacks a
        key of :data:`STATE_KEYS`.
    """
    path = Path(ckpt) / "state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing; expected the checkpoint's state file") from exc
    except Exception as exc:  # torch raises RuntimeError / UnpicklingError / EOFError on a damaged file
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint state ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); expected a torch.save file") from exc
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        have = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a reasonzoo checkpoint state; expected keys {', '.join(STATE_KEYS)}, found {have}")
    return state


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
        try:
            weights.update(load_file(f))
        except Exception as exc:  # safetensors raises SafetensorError (not an OSError) on a damaged file
            raise CheckpointError(f"{f}: truncated or corrupt weights ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                                  "expected a complete .safetensors file") from exc
    return weights


def load_into(model: torch.nn.Module, path: str | Path) -> None:
    """Load saved weights into ``model`` in place; only tied weights may be absent from the file.

    :raises CheckpointError: the weights are damaged or belong to another architecture (names the path).
    """
    weights = load_model_weights(path)
    own = model.state_dict()
    for name, tensor in weights.items():  # name the first tensor whose shape differs
        if name in own and tuple(own[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"weights at {path}: tensor {name} has shape {tuple(tensor.shape)}, the model expects "
                                  f"{tuple(own[name].shape)}; expected a checkpoint of this run's model")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {}) | {"lm_head.weight"}
    bad = [k for k in missing if k not in tied]
    if bad or unexpected:
        raise CheckpointError(f"weights at {path} do not fit the model: missing {bad[:5]}{' ...' if len(bad) > 5 else ''}, "
                              f"unexpected {list(unexpected)[:5]}{' ...' if len(unexpected) > 5 else ''}; expected "
                              f"a checkpoint of this run's model")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
