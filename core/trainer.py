"""The training loop. Every step is a hook call, in the order of ``hookspecs.py``:

    load problems → build policy → build engine → warm-up (fresh runs) → evaluate (iteration 0)
    per iteration: sample problems → rollouts (k per problem) → rewards → length penalty
                   → prepare update → loss + optimizer steps → iteration end → evaluate → log
                   → checkpoint
                   (an iteration whose scheduler returns no finished group skips rewards and the
                   update, and keeps the policy version; it is still logged and checkpointed)
    final evaluation → distill → summary

No algorithm is named here: what a step does is decided by the plugin selected for it.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
import transformers
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from .checkpoint import atomic_write_text, latest_checkpoint, load_into, load_state, save_checkpoint
from .config import RunConfig, validate
from .context import RunContext
from .evaluation import EvalSettings, eval_split, training_metrics
from .evaluation import evaluate as run_eval
from .registry import PluginError, build_plugins, make_manager
from .errors import RunInterrupted, signals_raise
from .rundir import RunLock, check_fresh, clear_run, is_finished, log_size, remove_stale_temporaries
from .runlog import eval_line, iteration_line, log_to_run_dir, progress_bars
from .types import FinishReason, Generation, Problem, Rollout, RolloutGroup, Segment, TrainBatch

log = logging.getLogger("reasonzoo")
CONFIG_FILE = "reasonzoo_config.yaml"


def collate(groups: Sequence[RolloutGroup], pad_id: int) -> TrainBatch:
    """Pad the rollouts of scored groups into a :class:`TrainBatch` (right padding). A rollout
    whose reward has ``in_loss=False`` gets an all-zero ``response_mask`` row."""
    rows = [(gi, r) for gi, g in enumerate(groups) for r in g.rollouts]
    plen = [len(r.prompt_ids) for _, r in rows]
    qlen = [len(r.response_ids) for _, r in rows]
    t = max(p + q for p, q in zip(plen, qlen))
    ids, blogp, versions = [], [], []
    for (_, r), p, q in zip(rows, plen, qlen):
        ids.append(list(r.prompt_ids) + list(r.response_ids) + [pad_id] * (t - p - q))
        # target column p-1 predicts the first response token
        blogp.append([0.0] * (p - 1) + list(r.logprobs) + [0.0] * (t - p - q))
        v = [-1] * (t - 1)
        for s in r.segments:
            v[p - 1 + s.start : p - 1 + s.end] = [s.policy_version] * (s.end - s.start)
        versions.append(v)
    cols = torch.arange(t)
    start, resp = torch.tensor(plen)[:, None] - 1, torch.tensor(qlen)[:, None]
    keep = torch.tensor([rw.in_loss for g in groups for rw in g.rewards], dtype=torch.float32)[:, None]  # (N, 1)
    return TrainBatch(
        input_ids=torch.tensor(ids, dtype=torch.long),
        attention_mask=(cols < start + 1 + resp).long(),
        response_mask=((cols[:-1] >= start) & (cols[:-1] < start + resp)).float() * keep,
        token_versions=torch.tensor(versions, dtype=torch.long),
        behaviour_logprobs=torch.tensor(blogp, dtype=torch.float32),
        returns=torch.tensor([x for g in groups for x in g.returns], dtype=torch.float32),
        correct=torch.tensor([rw.correct for g in groups for rw in g.rewards], dtype=torch.bool),
        group_index=torch.tensor([gi for gi, _ in rows], dtype=torch.long),
    )


def _merge(dicts: Sequence[dict | None], what: str) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in (d or {}).items():
            if k in out:
                raise RuntimeError(f"two plugins returned {what} key {k!r}")
            out[k] = v
    return out


def evaluate(ctx: RunContext, problems: Sequence[Problem], cfg: RunConfig) -> dict[str, float]:
    """Held-out evaluation during training (:mod:`reasonzoo.evaluation`): one sample per problem
    at ``eval.temperature``; accuracy (pass@1), mean response length and truncated share, overall
    and per difficulty."""
    settings = EvalSettings(n=1, temperature=cfg.eval.temperature, max_new_tokens=cfg.generation.max_new_tokens,
                            batch_size=cfg.eval.batch_size)
    return training_metrics(run_eval(ctx, problems, settings))


def make_rollout(ctx: RunContext, problem: Problem, prompt_ids: Sequence[int], gen: Generation) -> Rollout:
    """A :class:`Rollout` from an engine :class:`Generation` (one segment at the current version).
    Its text is the engine's cut at a stop string (``Generation.text``) when there is one, so
    rewards never see what followed the stop string inside its last token."""
    ids = tuple(gen.token_ids)
    return Rollout(
        problem=problem, prompt_ids=tuple(prompt_ids), response_ids=ids, logprobs=tuple(gen.logprobs),
        finish_reason=gen.finish_reason, segments=(Segment(0, len(ids), ctx.policy_version),),
        text=ctx.policy.decode(ids) if gen.text is None else gen.text,
    )


def rollout_metrics(groups: Sequence[RolloutGroup]) -> dict[str, float]:
    rs = [r for g in groups for r in g.rollouts]
    rw = [x for g in groups for x in g.rewards]
    tot = [x for g in groups for x in g.returns]
    m = {
        "reward/mean": sum(x.score for x in rw) / len(rw),
        "reward/total_mean": sum(tot) / len(tot),
        "reward/accuracy": sum(x.correct for x in rw) / len(rw),
        "response/mean_length": sum(r.length for r in rs) / len(rs),
        "response/max_length": max(r.length for r in rs),
        "response/tokens": sum(r.length for r in rs),
    }
    for reason in FinishReason:
        m[f"response/finish_{reason.value}"] = sum(r.finish_reason is reason for r in rs) / len(rs)
    by_d: dict[Any, list[int]] = defaultdict(list)
    for g in groups:
        by_d[g.problem.difficulty] += [r.length for r in g.rollouts]
    for d, v in by_d.items():
        m[f"response/mean_length/d{d}"] = sum(v) / len(v)
    return m


def _microbatches(index: torch.Tensor, lengths: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Cut a minibatch's row ``index`` into ``k`` near-equal parts of similar sequence length."""
    if k <= 1 or len(index) < 2:
        return [index]
    return list(index[lengths[index].argsort(stable=True)].tensor_split(min(k, len(index))))


def _combine(parts: list[tuple[float, dict]]) -> dict[str, float]:
    """Micro-batch metrics → minibatch metrics: row-weighted mean; max / min for keys ending so."""
    out = {}
    for key in parts[0][1]:
        vals = [(w, float(m[key])) for w, m in parts]
        if key.endswith("max"):
            out[key] = max(v for _, v in vals)
        elif key.endswith("min"):
            out[key] = min(v for _, v in vals)
        else:
            out[key] = sum(w * v for w, v in vals)
    return out


def update(ctx: RunContext, batch: TrainBatch, cfg: RunConfig) -> dict[str, float]:
    """Optimise the selected loss over the batch: ``epochs`` passes of shuffled minibatches, one
    optimizer step each. With ``train.microbatches > 1`` a minibatch is cut into length-sorted
    micro-batches (less padding); for each, ``loss * d_i`` is back-propagated, ``d_i`` the units
    its loss is a mean over (``LossOutput.denominator``: tokens for a token-mean, rows by
    default), and before clipping and the step every model gradient is divided by ``Σ d_i``: the
    gradient of the mean over the whole minibatch's units, exact by linearity for any such loss
    (the ``rz_loss`` contract), with no graph kept across micro-batches. Metrics are combined
    with the weights ``d_i / Σ d_i``. A minibatch whose loss has no unit (``Σ d_i = 0``) takes no
    optimizer step (``train/empty_step_frac``: the share of such minibatches). Rows are sorted by their group's longest row, a group's rows
    kept together, so the samples of one prompt mostly share a micro-batch (the lean forward of
    :mod:`reasonzoo.fasttrain` runs their common prompt once)."""
    model, opt = ctx.policy.model, ctx.optimizer
    with torch.no_grad():
        model.eval()
        extras = _merge(ctx.hook.rz_prepare_update(ctx=ctx, batch=batch), "rz_prepare_update")
    batch = replace(batch, extras={**batch.extras, **extras})
    lengths = batch.attention_mask.sum(-1)
    g = batch.group_index
    group_len = torch.zeros(int(g.max()) + 1 if len(g) else 0, dtype=lengths.dtype).scatter_reduce(0, g, lengths, "amax")
    sort_key = group_len[g] * (len(group_len) + 1) + g  # by group length, then group: groups stay contiguous
    model.train()
    sums: dict[str, list[float]] = defaultdict(list)
    gen = ctx.generator("minibatch")
    for _ in range(cfg.train.epochs):
        order = torch.randperm(len(batch), generator=gen)
        for start in range(0, len(batch), cfg.train.minibatch_size):
            index = order[start : start + cfg.train.minibatch_size]
            parts = _microbatches(index, sort_key, cfg.train.microbatches)
            opt.zero_grad(set_to_none=True)
            done = []
            for part in parts:
                out = ctx.hook.rz_loss(ctx=ctx, batch=batch.select(part))
                d = float(len(part) if out.denominator is None else out.denominator)
                (out.loss if len(parts) == 1 else out.loss * d).backward()
                done.append((d, {"loss/total": float(out.loss.detach()), **out.metrics}))
            total = sum(d for d, _ in done)
            if len(parts) > 1 and total > 0:  # Σ_i d_i·∇loss_i / Σ_i d_i: the gradient of the minibatch mean
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.div_(total)
            done = [(d / total if total > 0 else 1 / len(done), m) for d, m in done]
            for k, v in _combine(done).items():
                sums[k].append(v)
            if total == 0:  # nothing in the loss (e.g. ReST with no correct response): no step, Adam's momentum would still move
                sums["train/empty_step_frac"].append(1.0)
                continue
            sums["train/empty_step_frac"].append(0.0)
            if cfg.train.max_grad_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                sums["train/grad_norm"].append(float(norm))
            opt.step()
    model.eval()
    return {k: sum(v) / len(v) for k, v in sums.items()}


def _write_metrics(path: Path, record: dict) -> None:
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:  # a full disk names no file: name it (a torn last line is dropped on resume)
        if exc.filename:
            raise
        raise OSError(exc.errno, f"{exc.strerror or exc} (appending iteration {record.get('iteration')} to the metrics)",
                      str(path)) from exc


def _truncate_metrics(path: Path, last_iteration: int) -> list[dict]:
    """Keep only records up to ``last_iteration`` (a resumed run redoes the lost iteration)."""
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); expected JSON lines of metrics") from exc
    recs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            recs.append(json.loads(line))
        except ValueError as exc:
            if n == len(lines):  # torn by the kill being resumed from: beyond the checkpoint, dropped
                log.warning("%s:%d: torn last line dropped", path, n)
                continue
            raise ValueError(f"{path}:{n}: not a JSON object ({exc.msg}); expected one metrics record per line") from exc
        if not isinstance(recs[-1], dict) or not isinstance(recs[-1].get("iteration"), int):
            raise ValueError(f"{path}:{n}: expected a metrics record with an integer 'iteration'")
    recs = [r for r in recs if r["iteration"] <= last_iteration]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in recs))
    return recs


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run the composed recipe in ``run_dir``; resumes from its latest checkpoint when
    ``cfg.resume`` is set. Returns the summary (also written to ``summary.json``).

    The run holds ``run_dir``'s lock (:class:`reasonzoo.rundir.RunLock`) from start to end.
    ``resume=`` of a finished run reports it complete and changes nothing.

    :raises PluginError: a config mistake (before any work).
    :raises RunDirError: ``run_dir`` is locked by a live run, or holds a finished or resumable run
        and ``overwrite`` is false (nothing in it changes).
    :raises RunInterrupted: on SIGINT / SIGTERM (main thread), with the run directory and its last
        complete checkpoint for the resume hint.
    """
    rc = validate(cfg)
    run_dir = Path(run_dir)
    if rc.resume and is_finished(run_dir):
        return _finished(run_dir)
    old_log_bytes = 0
    if not rc.resume and check_fresh(run_dir, rc.overwrite):
        old_log_bytes = log_size(run_dir)  # the replaced run's lines, dropped once set-up succeeds
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        try:
            with signals_raise():  # SIGINT / SIGTERM: abandon the current step, keep the last checkpoint
                return _train_locked(cfg, run_dir, old_log_bytes)
        except RunInterrupted as exc:
            exc.run_dir = run_dir
            try:
                exc.checkpoint = latest_checkpoint(run_dir)
            except OSError:
                pass
            raise


def _finished(run_dir: Path) -> dict[str, Any]:
    """The saved summary of a completed run, reported without touching anything."""
    summary_file = run_dir / "summary.json"
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{summary_file}: unreadable summary of a finished run ({exc})") from exc
    last = (summary.get("final_eval") or {}).get("eval/accuracy")
    print(f"reasonzoo: {run_dir} is complete (summary.json written"
          f"{'' if last is None else f', final eval/accuracy {last:.3f}'}); nothing to resume, nothing changed",
          file=sys.stderr)
    return summary


def _train_locked(cfg: DictConfig, run_dir: Path, old_log_bytes: int = 0) -> dict[str, Any]:
    """:func:`train` with ``run_dir``'s lock held (``old_log_bytes``: see :func:`clear_run`)."""
    from .report import plot_metrics, summary_table

    rc = validate(cfg)
    transformers.utils.logging.disable_progress_bar()
    remove_stale_temporaries(run_dir)  # of killed writers only; the lock says no other run is live
    torch.set_num_threads(rc.threads)
    pm = make_manager(build_plugins(cfg))
    hook = pm.hook
    ctx = RunContext(cfg=cfg, hook=hook, run_dir=run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    ckpt = latest_checkpoint(run_dir) if rc.resume else None
    torch.manual_seed(rc.seed)

    train_problems = hook.rz_load_problems(ctx=ctx, split="train")
    eval_problems = eval_split(hook.rz_load_problems(ctx=ctx, split="eval"), rc.eval.problems_per_difficulty)
    ctx.policy = policy = hook.rz_build_policy(ctx=ctx)
    # every prompt + max_new_tokens must fit the model's context: error, or drop and count (model.overlong)
    kept, data_metrics = policy.fit_context({"train": train_problems, "eval": eval_problems}, rc.generation.max_new_tokens)
    train_problems, eval_problems = kept["train"], kept["eval"]
    ctx.engine = engine = hook.rz_build_engine(ctx=ctx, policy=policy)
    ctx.optimizer = torch.optim.AdamW(
        policy.model.parameters(), lr=rc.train.lr, weight_decay=rc.train.weight_decay, betas=tuple(rc.train.betas)
    )
    summary: dict[str, Any] = {"run_dir": str(run_dir)}
    start = 1
    if ckpt is not None:
        state = load_state(ckpt)
        load_into(policy.model, ckpt / "model")
        ctx.optimizer.load_state_dict(state["optimizer"])
        ctx.policy_version = state["policy_version"]
        torch.set_rng_state(state["torch_rng"])
        start = state["iteration"] + 1
        history = _truncate_metrics(metrics_path, state["iteration"])
        summary["initial_eval"] = next((r for r in history if r["iteration"] == 0), None)
        log.info("resuming %s from %s (iteration %d)", run_dir, ckpt.name, start)
    elif rc.resume:
        log.warning("resume=%s: no checkpoint yet, starting from scratch", rc.resume)
    if rc.prompts_per_iteration > len(train_problems):
        raise PluginError(f"prompts_per_iteration={rc.prompts_per_iteration} exceeds the {len(train_problems)} training "
                          f"problems of task={cfg.task.name}; allowed: 1 to {len(train_problems)}")
    if ckpt is None:  # set-up succeeded: only now may an old run be replaced (overwrite=true)
        if not rc.resume:
            clear_run(run_dir, old_log_bytes)
            atomic_write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg))
        metrics_path.unlink(missing_ok=True)  # resume= before the first checkpoint starts afresh
    engine.sync_weights()
    hook.rz_run_start(ctx=ctx)
    error: BaseException | None = None
    with log_to_run_dir(run_dir):  # train.log gets the run's lines (reasonzoo.runlog)
        try:
            log.info("run directory: %s", run_dir.resolve())
            if ckpt is not None:
                hook.rz_load_state(ctx=ctx, state=state["plugins"])
            else:
                t0 = time.perf_counter()
                warm = hook.rz_warmup(ctx=ctx, policy=policy, problems=train_problems) or {}
                engine.sync_weights()
                record: dict[str, Any] = {"iteration": 0, **data_metrics, **warm, "time/warmup": time.perf_counter() - t0}
                if rc.eval.before:
                    ctx.iteration = 0
                    t0 = time.perf_counter()
                    record.update(evaluate(ctx, eval_problems, rc))
                    record["time/eval"] = time.perf_counter() - t0
                summary["initial_eval"] = record
                if "eval/accuracy" in record:
                    log.info("iteration 0 (before RL): %s", eval_line(record))
                _write_metrics(metrics_path, record)
                hook.rz_log_metrics(ctx=ctx, metrics=record, step=0)
                if rc.iterations > 0:
                    save_checkpoint(run_dir, 0, policy, _state(ctx, 0), keep=rc.checkpoint.keep)
            sampling = rc.generation.sampling()
            bar = tqdm(range(start, rc.iterations + 1), desc="RL", disable=not progress_bars(rc.progress), initial=start - 1, total=rc.iterations)
            record = {}
            for it in bar:
                ctx.iteration = it
                t_it = time.perf_counter()
                hook.rz_iteration_start(ctx=ctx)
                problems = hook.rz_sample_problems(ctx=ctx, problems=train_problems, n=rc.prompts_per_iteration)
                t0 = time.perf_counter()
                groups = hook.rz_rollout(ctx=ctx, problems=problems, engine=engine,
                                         samples_per_problem=rc.samples_per_prompt, sampling=sampling)
                t_roll = time.perf_counter() - t0
                t_rew = t_upd = 0.0
                record = {"iteration": it, "response/groups": len(groups)}
                if groups:  # a partial-rollout scheduler may finish no group this iteration: no update then
                    t0 = time.perf_counter()
                    rewards = hook.rz_reward(ctx=ctx, groups=groups)
                    groups = [replace(g, rewards=tuple(r)) for g, r in zip(groups, rewards)]
                    lens = hook.rz_length_penalty(ctx=ctx, groups=groups)
                    groups = [replace(g, length_rewards=tuple(x)) for g, x in zip(groups, lens)]
                    t_rew = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    batch = collate(groups, policy.pad_token_id)
                    record.update({**rollout_metrics(groups), **update(ctx, batch, rc)})
                    ctx.policy_version += 1
                    engine.sync_weights()
                    t_upd = time.perf_counter() - t0
                record.update(_merge(hook.rz_iteration_end(ctx=ctx, groups=groups), "rz_iteration_end"))
                record.update({"time/rollout": t_roll, "time/reward": t_rew, "time/update": t_upd,
                               "response/tokens_per_s": record.get("response/tokens", 0) / max(t_roll, 1e-9)})
                if "rollout/tokens" in record:  # tokens generated this iteration (partial rollouts), per second
                    record["response/generated_tokens_per_s"] = record["rollout/tokens"] / max(t_roll, 1e-9)
                if it == rc.iterations or (rc.eval.every > 0 and it % rc.eval.every == 0):
                    t0 = time.perf_counter()
                    record.update(evaluate(ctx, eval_problems, rc))
                    record["time/eval"] = time.perf_counter() - t0
                record["time/iteration"] = time.perf_counter() - t_it
                record["policy_version"] = ctx.policy_version
                _write_metrics(metrics_path, record)
                log.info(iteration_line(record, rc.iterations))
                hook.rz_log_metrics(ctx=ctx, metrics=record, step=it)
                if it == rc.iterations or it % rc.checkpoint.every == 0:
                    save_checkpoint(run_dir, it, policy, _state(ctx, it), keep=rc.checkpoint.keep)
                bar.set_postfix({k.split("/")[-1]: f"{record[k]:.3g}" for k in
                                 ("reward/accuracy", "response/mean_length", "eval/accuracy") if k in record})
            final = dict(record) if "eval/accuracy" in record else evaluate(ctx, eval_problems, rc)
            summary["final_eval"] = {k: v for k, v in final.items() if k.startswith("eval/")}
            policy.save(run_dir / "final")
            distilled = hook.rz_distill(ctx=ctx, policy=policy)
            if distilled is not None:
                ctx.policy = distilled
                ctx.engine = hook.rz_build_engine(ctx=ctx, policy=distilled)
                summary["distilled_eval"] = evaluate(ctx, eval_problems, rc)
                distilled.save(run_dir / "distilled")
                ctx.policy, ctx.engine = policy, engine
            if metrics_path.exists():
                plot_metrics(metrics_path, run_dir / "progress.png")
            summary["table"] = summary_table(summary)
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
            if rc.progress:
                print(summary["table"])
            log.info("run finished; outputs in %s", run_dir.resolve())
            return summary
        except BaseException as exc:
            error = exc
            raise
        finally:
            hook.rz_run_end(ctx=ctx, summary={**summary, **({"error": repr(error)} if error else {})})


def _state(ctx: RunContext, iteration: int) -> dict[str, Any]:
    return {
        "iteration": iteration,
        "policy_version": ctx.policy_version,
        "optimizer": ctx.optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "plugins": _merge(ctx.hook.rz_checkpoint_state(ctx=ctx), "rz_checkpoint_state"),
    }
