"""``reasonzoo eval``: evaluate a run, a checkpoint or any local Hugging Face model directory on a
task with a reward, greedy and sampled (:mod:`reasonzoo.evaluation`).

    reasonzoo eval outputs/2026-11-30/12-00-00                    # a run: its final model, task, reward
    reasonzoo eval outputs/.../checkpoints/iter_000030 --n 16 --k 1,4,16
    reasonzoo eval /models/my-llm task=jsonl task.train_path=test.jsonl task.eval_fraction=0.5 reward=math

What is evaluated: ``PATH`` is a model folder (``config.json``), a checkpoint (its ``model/``) or a
run directory (``final/`` when finished, else its latest checkpoint). Which config: a run's own
saved config (``reasonzoo_config.yaml``, found in the run directory or above a checkpoint) gives
the task, reward, engine, generation settings and seed, so a run is evaluated on the held-out
problems it was evaluated on in training; Hydra overrides after ``PATH`` replace any of them
(``task=jsonl ...`` selects another task, ``reward=math`` another reward); a bare model folder
starts from the default config. The problems are the task's ``--split`` (default ``eval``),
``eval.problems_per_difficulty`` of each difficulty.

Modes: ``greedy`` (temperature 0, one response) and ``sampled`` (``--n`` responses at
``--temperature`` / ``--top-p``; pass@k for each ``--k`` up to ``n``, mean@n, maj@n).

Outputs, in ``--out`` (default ``evals/<date>/<time>-<pid>``, never an existing folder's files):
``eval.json`` (settings, per mode the overall and per-difficulty metrics), ``eval.md`` (the same
as markdown tables) and ``samples.jsonl`` (every response: problem id, difficulty, mode, text,
extracted answer, correct, tokens, truncated). The tables are printed.

Exit codes: 0 done, 2 a usage or config error (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

#: Config groups an evaluation needs; the others (sampler, loss, logger, ...) are not built.
EVAL_GROUPS = ("task", "model", "engine", "reward")
#: Top-level keys a run's saved config passes on to its evaluation unless overridden.
INHERITED = ("seed", "generation", "eval", "threads")


def _run_config(path: Path) -> Path | None:
    """The saved config of the run that ``path`` (a run, a checkpoint or a model in one) belongs to."""
    from .trainer import CONFIG_FILE

    for p in (path, *path.parents[:3]):
        if (p / CONFIG_FILE).is_file():
            return p / CONFIG_FILE
    return None


def build_config(path: Path, overrides: Sequence[str]) -> tuple[DictConfig, Path | None]:
    """The evaluation config: defaults + ``overrides`` (Hydra), with every group and inherited key
    that the overrides do not touch taken from the run's saved config when there is one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import open_dict

    from .train import _check_syntax, _compose_checked

    _check_syntax(list(overrides))
    saved_path = _run_config(path)
    saved = OmegaConf.load(saved_path) if saved_path is not None else None
    keys = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
    chosen = {k for k in keys if "." not in k}  # task=jsonl, seed=3: not inherited
    inherited = [k for k in (*EVAL_GROUPS, *INHERITED) if saved is not None and k not in chosen and k in saved]
    # task.eval_fraction=0.5 on an inherited task (jsonl) is applied to the saved task, after
    # composing: on the default task (modarith) Hydra would refuse it as an unknown key
    later = [(o, k) for o, k in zip(overrides, keys) if "." in k and k.split(".", 1)[0] in inherited]
    cfg = _compose_checked([o for o in overrides if o not in {o for o, _ in later}], check=False)
    for key in inherited:
        cfg[key] = saved[key]
    parser = OverridesParser.create()
    with open_dict(cfg):  # a misspelt key gets through here and is named by validation
        for o, k in later:
            parsed = parser.parse_override(o)
            if parsed.is_delete() or parsed.is_sweep_override():
                raise ValueError(f"{o}: only key=value overrides apply to a run's saved {k.split('.', 1)[0]} config")
            OmegaConf.update(cfg, k, parsed.value(), merge=True)
    return cfg, saved_path


def _out_dir(arg: str | None) -> Path:
    if arg:
        out = Path(arg)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {arg}: exists and is not a folder (pick a new folder)")
        if out.exists() and any(out.iterdir()):
            raise ValueError(f"--out {arg}: exists and is not empty (pick a new folder)")
        out.mkdir(parents=True, exist_ok=True)
        return out
    out = Path("evals") / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}-{os.getpid()}"
    out.mkdir(parents=True, exist_ok=False)
    return out


def run(path: str | Path, overrides: Sequence[str] = (), *, n: int = 8, ks: Sequence[int] = (1,),
        temperature: float = 1.0, top_p: float = 1.0, greedy: bool = True, sampled: bool = True,
        split: str = "eval", out: str | Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """Evaluate the model at ``path`` (see the module docstring); returns what ``eval.json`` holds.

    Raises ``FileNotFoundError`` when ``path`` holds no model and ``ValueError`` for bad settings
    (``n < 1``, a ``k`` outside ``1..n``, no mode selected, an unknown split)."""
    import torch
    import transformers

    from .checkpoint import resolve_model_dir
    from .config import validate
    from .context import RunContext
    from .evaluation import EvalSettings, eval_split, evaluate, markdown_table, report
    from .registry import build_plugins, make_manager

    if not (greedy or sampled):
        raise ValueError("nothing to do: both --no-greedy and --no-sampled given")
    if split not in ("train", "eval"):
        raise ValueError(f"--split {split}: allowed values are train, eval")
    if n < 1 or any(not 1 <= k <= n for k in ks):
        raise ValueError(f"--n {n} --k {','.join(map(str, ks))}: needs n >= 1 and every k in 1..n")
    if sampled:  # checked before any folder is created or model loaded
        if not temperature >= 0:
            raise ValueError(f"--temperature {temperature}: must be >= 0")
        if not 0 < top_p <= 1:
            raise ValueError(f"--top-p {top_p}: must be in (0, 1]")
        if temperature == 0 and n > 1:
            raise ValueError(f"--temperature 0 --n {n}: temperature 0 is greedy decoding, one response per problem "
                             "(the greedy mode); sample with --temperature > 0, or use --n 1")
    path = Path(path)
    model_dir = path / "final" if (path / "final" / "config.json").is_file() else resolve_model_dir(path)
    cfg, saved = build_config(path, overrides)
    cfg.model.path = str(model_dir.resolve())
    rc = validate(cfg)
    existed = out is not None and Path(out).is_dir()
    out_dir = _out_dir(str(out) if out is not None else None)
    try:
        torch.set_num_threads(rc.threads)
        transformers.utils.logging.disable_progress_bar()
        plugins = {k: v for k, v in build_plugins(cfg).items() if k.split("/")[0] in EVAL_GROUPS}
        hook = make_manager(plugins).hook
        ctx = RunContext(cfg=cfg, hook=hook, run_dir=out_dir, iteration=0)
        problems = eval_split(hook.rz_load_problems(ctx=ctx, split=split), rc.eval.problems_per_difficulty)
        ctx.policy = hook.rz_build_policy(ctx=ctx)
        ctx.engine = hook.rz_build_engine(ctx=ctx, policy=ctx.policy)
        modes = ([("greedy", EvalSettings(n=1, temperature=0.0, max_new_tokens=rc.generation.max_new_tokens,
                                          batch_size=rc.eval.batch_size, ks=(1,), stream="eval-greedy"))] if greedy else [])
        if sampled:
            modes.append(("sampled", EvalSettings(n=n, temperature=temperature, top_p=top_p, ks=tuple(ks),
                                                  max_new_tokens=rc.generation.max_new_tokens,
                                                  batch_size=max(1, rc.eval.batch_size // n), stream="eval-sampled")))
        result: dict[str, Any] = {
            "model": str(model_dir), "run_config": str(saved) if saved else None, "split": split,
            "task": OmegaConf.to_container(cfg.task, resolve=True), "reward": OmegaConf.to_container(cfg.reward, resolve=True),
            "seed": rc.seed, "max_new_tokens": rc.generation.max_new_tokens, "modes": {},
        }
        tables = []
        try:
            with open(out_dir / "samples.jsonl", "w") as samples:
                for name, settings in modes:
                    t0 = time.perf_counter()
                    res = evaluate(ctx, problems, settings)
                    rep = report(res, settings.ks)
                    rep["settings"] = {"n": settings.n, "temperature": settings.temperature, "top_p": settings.top_p,
                                       "ks": list(settings.ks)}
                    rep["seconds"] = time.perf_counter() - t0
                    result["modes"][name] = rep
                    tables.append(markdown_table(rep, f"{name} (n={settings.n}, T={settings.temperature})"))
                    for r in res:
                        for i in range(r.n):
                            samples.write(json.dumps({
                                "uid": r.uid, "difficulty": r.difficulty, "mode": name, "sample": i, "text": r.texts[i],
                                "extracted": r.answers[i], "correct": r.correct[i], "tokens": r.lengths[i],
                                "truncated": r.truncated[i]}) + "\n")
        finally:
            hook.rz_run_end(ctx=ctx, summary={"eval": True})
        (out_dir / "eval.json").write_text(json.dumps(result, indent=1))
        md = f"# reasonzoo eval: {model_dir}\n\n" + "\n\n".join(tables) + "\n"
        (out_dir / "eval.md").write_text(md)
        result["out"] = str(out_dir)
        if not quiet:
            print(md)
            print(f"reasonzoo eval: results in {out_dir}")
    except BaseException:  # a failed set-up leaves no empty output folder behind
        if not existed and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
            for parent in ([] if out is not None else [out_dir.parent, out_dir.parent.parent]):  # evals/<date>, evals
                try:
                    parent.rmdir()
                except OSError:  # not empty
                    break
        raise
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="reasonzoo eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="a run directory, a checkpoint or a Hugging Face model folder")
    p.add_argument("overrides", nargs="*", help="Hydra overrides (task=..., reward=..., eval.problems_per_difficulty=...)")
    p.add_argument("--n", type=int, default=8, help="responses per problem in sampled mode (default 8)")
    p.add_argument("--k", default=None, help="comma-separated k of pass@k (default 1,n)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampled mode temperature (default 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="sampled mode nucleus threshold (default 1.0)")
    p.add_argument("--no-greedy", action="store_true", help="skip greedy decoding")
    p.add_argument("--no-sampled", action="store_true", help="skip sampled decoding")
    p.add_argument("--split", default="eval", help="the task's split: eval (default) or train")
    p.add_argument("--out", default=None, help="output folder (new or empty); default evals/<date>/<time>-<pid>")
    args = p.parse_intermixed_args(argv)  # overrides may come before or after the options
    from .errors import UsageError
    from .registry import PluginError

    try:
        try:
            ks = [int(x) for x in args.k.split(",")] if args.k else sorted({1, args.n})
        except ValueError:
            raise ValueError(f"--k {args.k}: expected comma-separated integers, e.g. --k 1,4,8") from None
        run(args.path, args.overrides, n=args.n, ks=ks, temperature=args.temperature, top_p=args.top_p,
            greedy=not args.no_greedy, sampled=not args.no_sampled, split=args.split, out=args.out)
    except (PluginError, UsageError, ValueError, FileNotFoundError) as exc:
        if os.environ.get("REASONZOO_DEBUG"):
            raise
        print(f"reasonzoo eval: error: {exc}", file=sys.stderr)
        return 2
    return 0
