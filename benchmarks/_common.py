"""Helpers shared by ``step_vs_trl.py`` and ``rollout_throughput.py`` (imported as ``_common``: the
scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path``).

- :func:`stats`: min / median / max of a list of repeats;
- :func:`versions`, :func:`code_state`, :func:`load_average`: what a results file records besides
  the figures (library versions, the commit measured and the package files that differ from it,
  the 1 / 5 / 15-minute load averages);
- :func:`matmul_peak`: the measured single-thread fp32 ``torch.mm`` rate, the denominator of the
  "fraction of peak" figures;
- :func:`matmul_params`: the parameter count N of the standard FLOP estimate (2N per token forward,
  6N per token forward + backward; Kaplan et al. 2020, "Scaling Laws for Neural Language Models",
  §2.1 and Table 1, with the attention-score term 2 n_layer n_ctx d_attn left out);
- :func:`eos_masked`: "equal work" on the torch engine: EOS logits set to -inf before sampling, the
  engine-side equivalent of HF ``generate(min_new_tokens=max_new_tokens)``.
"""
from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch

ROOT = Path(__file__).resolve().parent.parent


def stats(values: Sequence[float]) -> dict[str, float]:
    """``{"min", "median", "max"}`` of ``values`` (at least one value; ``ValueError`` when empty)."""
    if not values:
        raise ValueError("stats() of no values")
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def fmt(s: dict[str, float], spec: str = ".2f", unit: str = "") -> str:
    """``"median (min-max)"`` of a :func:`stats` dict, each number formatted with ``spec``."""
    return f"{s['median']:{spec}}{unit} ({s['min']:{spec}}-{s['max']:{spec}})"


def versions(packages: Sequence[str]) -> dict[str, str]:
    """Python's version and each installed distribution's of ``packages`` (absent ones: "not installed")."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def code_state() -> dict:
    """The commit measured and the package files that differ from it (the working tree is shared)."""

    def git(*a: str) -> str:
        res = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
        return res.stdout.strip() if res.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted": git("status", "--porcelain", "--", "core", "plugins", "conf").splitlines()}


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages (``os.getloadavg``), rounded to 0.01."""
    return [round(x, 2) for x in os.getloadavg()]


def matmul_peak(n: int = 1024, repeats: int = 7) -> dict[str, float]:
    """Measured fp32 matmul rate of one torch thread: ``torch.mm`` of two ``(n, n)`` matrices,
    ``2 n^3`` FLOPs each, timed ``repeats`` times after one untimed call.

    Sets ``torch.set_num_threads(1)`` (the benchmarks' setting) and leaves it so.
    :returns: ``{"n", "repeats", "best_gflops", "median_gflops"}``; "peak" means ``best_gflops``
        (the fastest call: on a shared box the others include other processes' time).
    :raises ValueError: ``n < 1`` or ``repeats < 1``.
    """
    if n < 1 or repeats < 1:
        raise ValueError(f"matmul_peak: n={n}, repeats={repeats}; both must be >= 1")
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return {"n": n, "repeats": repeats, "best_gflops": max(rates), "median_gflops": statistics.median(rates)}


def matmul_params(model: torch.nn.Module) -> int:
    """N of the 2N / 6N FLOP estimates: the weights of every ``nn.Linear`` (attention and MLP
    projections and the LM head), i.e. the parameters a token's forward multiplies by. Embedding
    lookups and norm weights cost no matmul and are left out; a tied LM head counts once here."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


@contextlib.contextmanager
def eos_masked(eos_ids: Sequence[int]) -> Iterator[None]:
    """While open, the torch engine samples with the logits of ``eos_ids`` set to -inf, so no row
    ends before its ``max_new_tokens`` (EOS is the only stopping rule that fires with the default
    ``SamplingParams``: no stop strings, no repeat detection). The benchmark-only equivalent of HF
    ``generate(min_new_tokens=max_new_tokens)``, whose ``MinNewTokensLengthLogitsProcessor`` does the
    same; the log-probs are then those of the renormalised distribution without EOS, as HF's are.

    Replaces ``sample_next`` in ``reasonzoo.fastdecode`` (the fast path) and in
    ``reasonzoo.plugins.engine.torch`` (the HF-forward path) and restores both on exit.
    :raises ValueError: ``eos_ids`` empty.
    """
    import reasonzoo.fastdecode as fd
    import reasonzoo.plugins.engine.torch as te

    if not eos_ids:
        raise ValueError("eos_masked: no EOS ids given")
    ids = torch.tensor(sorted(set(int(i) for i in eos_ids)), dtype=torch.long)
    original = fd.sample_next

    def sample_without_eos(logits, params, gen):
        return original(logits.index_fill(-1, ids, float("-inf")), params, gen)

    saved = fd.sample_next, te.sample_next
    fd.sample_next = te.sample_next = sample_without_eos
    try:
        yield
    finally:
        fd.sample_next, te.sample_next = saved
