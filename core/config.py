"""The trainer's own config schema (everything that is not a plugin's) and config validation.

Plugin groups are validated against each plugin's config dataclass by
:func:`reasonzoo.plugins.build_plugins`; this module validates the rest. A misspelt key is an
error naming the key and the allowed ones, raised before any work starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .ranges import check_ranges, ranged
from .device import check as check_device
from .registry import PluginError, catalogue


@dataclass
class GenerationConfig:
    """Sampling of the RL rollouts."""

    temperature: float = ranged(1.0, gt=0)  #: sampling temperature of rollouts (1.0: behaviour = policy); > 0
    top_p: float = ranged(1.0, gt=0, le=1)  #: nucleus threshold; 1.0 = off
    max_new_tokens: int = ranged(64, ge=1)  #: maximum response length in tokens
    repeat_detection: bool = False  #: stop looping responses early (FinishReason.REPEAT; reasonzoo.repeats)
    repeat_max_period: int = ranged(32, ge=1)  #: repeat rule: longest repeated block, in tokens
    repeat_min_repeats: int = ranged(3, ge=2)  #: repeat rule: a block of >= 2 tokens repeated this many times in a row
    repeat_min_length: int = ranged(32, ge=2)  #: repeat rule: and spanning at least this many tokens
    repeat_min_run: int = ranged(96, ge=2)  #: repeat rule: one token repeated needs a run this long

    def sampling(self):
        """The rollouts' :class:`SamplingParams`."""
        from .repeats import RepeatRule
        from .types import SamplingParams

        rule = None
        if self.repeat_detection:
            rule = RepeatRule(self.repeat_max_period, self.repeat_min_repeats, self.repeat_min_length, self.repeat_min_run)
        return SamplingParams(self.temperature, self.top_p, self.max_new_tokens, repeat=rule)


@dataclass
class TrainConfig:
    """The policy update of each iteration."""

    lr: float = ranged(1e-4, gt=0)  #: AdamW learning rate of the policy
    weight_decay: float = ranged(0.0, ge=0)  #: AdamW weight decay
    betas: tuple[float, float] = ranged((0.9, 0.999), ge=0, lt=1)  #: AdamW betas, each in [0, 1)
    minibatch_size: int = ranged(32, ge=1)  #: rollouts per optimizer step
    microbatches: int = ranged(2, ge=1)  #: length-sorted parts per minibatch, gradients accumulated (less padding; exact for row-mean losses)
    epochs: int = ranged(1, ge=1)  #: passes over the iteration's batch
    max_grad_norm: float = 1.0  #: gradient-norm clip; <= 0 disables
    device: str = "cpu"  #: where the policy and the update run: cpu, cuda, cuda:N, or auto (cuda when a GPU is visible); reasonzoo.device


@dataclass
class EvalConfig:
    """Held-out evaluation (pass@1, one sample per problem)."""

    every: int = ranged(10, ge=0)  #: evaluate after every this many iterations (and after the last); 0 = only at start and end
    problems_per_difficulty: int = ranged(200, ge=1)  #: held-out problems per difficulty level
    temperature: float = ranged(1.0, ge=0)  #: 1.0 = sampled pass@1 (the notes: greedy flips on one token); 0 = greedy
    batch_size: int = ranged(256, ge=1)  #: sequences generated at once
    before: bool = True  #: evaluate the warmed-up policy before RL (iteration 0)


@dataclass
class CheckpointConfig:
    """Checkpoints under ``<run dir>/checkpoints`` (:mod:`reasonzoo.checkpoint`)."""

    every: int = ranged(1, ge=1)  #: checkpoint after every this many iterations; a kill loses at most that many
    keep: int = ranged(2, ge=0)  #: checkpoints kept on disk (oldest pruned); 0 = keep all


@dataclass
class BudgetConfig:
    """Stop RL early at a cost, so that contrasts are compared at equal cost as well as at equal
    steps. Checked after every iteration; the run then ends as after its last iteration (final
    evaluation, checkpoint, summary ``stopped_by``). 0 = no limit."""

    generated_tokens: int = ranged(0, ge=0)  #: stop once training rollouts have generated this many tokens in total
    wall_seconds: float = ranged(0.0, ge=0)  #: stop once RL iterations have taken this many wall seconds (evaluation excluded)


@dataclass
class RunConfig:
    """Top-level options of ``reasonzoo-train`` (plugin groups are validated separately).

    ``prompts_per_iteration`` must also not exceed the task's training problems: checked when
    they are loaded, before the warm-up.
    """

    seed: int = ranged(0, ge=0)  #: the RL seed: problem sampling, rollouts, minibatch order and every other RL random stream
    data_seed: int = ranged(0, ge=0)  #: seeds the task's problems and its train / held-out split (one held-out set for every RL seed)
    warmup_seed: int = ranged(0, ge=0)  #: seeds the model's initialisation and the warm-up (one cached warm-up for every RL seed)
    iterations: int = ranged(60, ge=0)  #: RL iterations (0: warm-up and evaluation only)
    prompts_per_iteration: int = ranged(16, ge=1)  #: problems sampled per iteration (at most the task's training problems)
    samples_per_prompt: int = ranged(8, ge=1)  #: k, responses per problem (a group-baseline loss needs >= 2)
    threads: int = ranged(1, ge=1)  #: torch intra-op threads (1 is fastest on a shared 2-core box)
    max_staleness: int = ranged(0, ge=0, le=1)  #: 0: synchronous; 1: iteration i+1's rollouts are generated while iteration i trains (one policy version old)
    resume: Optional[str] = None  #: a run directory to continue from its latest checkpoint
    overwrite: bool = False  #: allow a fresh run into a directory that holds a finished or resumable run (replaces it)
    cache_dir: str = "~/.cache/reasonzoo"  #: where warm-up checkpoints are cached
    progress: bool = True  #: show progress bars
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)


def _check_keys(node: dict, schema: type, prefix: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in node.items():
        if key not in fields:
            raise PluginError(f"{prefix}{key}: unknown config key; allowed keys: {', '.join(fields)}")
        ftype = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        if ftype is not None and dataclasses.is_dataclass(ftype):
            if not isinstance(value, dict):  # budget=5: a value where a group of keys belongs
                raise PluginError(f"{prefix}{key}={value!r}: {prefix}{key} is a group of keys, not a value; set one of its keys "
                                  f"({', '.join(f'{prefix}{key}.{f.name}' for f in dataclasses.fields(ftype))})")
            _check_keys(value, ftype, f"{prefix}{key}.")


def _min_group(info, config) -> int:
    """A plugin's ``min_samples_per_prompt`` (class attribute: an int, or a function of its config)."""
    need = getattr(info.cls, "min_samples_per_prompt", 1)
    return int(need(config) if callable(need) else need)


def _check_combinations(rc: RunConfig, selected: dict) -> None:
    """Options that are each in range but cannot work together, named both. A plugin class may
    declare ``check_run_config(config, rc)`` (a static method raising :class:`PluginError`) for
    a rule between its own config and the trainer's (``rollout/dynamic``: its kept groups against
    ``prompts_per_iteration``): called here, so every job of a sweep is checked before any runs."""
    for group, (info, config) in sorted(selected.items()):
        check = getattr(info.cls, "check_run_config", None)
        if check is not None:
            check(config, rc)
        need = _min_group(info, config)
        if rc.samples_per_prompt < need:
            raise PluginError(
                f"samples_per_prompt={rc.samples_per_prompt}: {group}/{info.name} needs at least {need} samples per "
                f"prompt (min_samples_per_prompt; a group baseline over fewer leaves every advantage 0)")
    if rc.max_staleness > 0 and not any(getattr(info.cls, "separate_weights", False) for info, _ in selected.values()):
        names = ", ".join(f"{g}={selected[g][0].name}" for g in ("engine", "launcher") if g in selected)
        raise PluginError(f"max_staleness={rc.max_staleness}: asynchronous rollouts need an engine with its own copy of the "
                          f"weights (launcher=ray, or engine=vllm); {names} generates from the weights being trained")
    stale_from = [x for x, on in ((f"max_staleness={rc.max_staleness}", rc.max_staleness > 0),
                                  ("rollout=partial", "rollout" in selected and selected["rollout"][0].name == "partial")) if on]
    if stale_from and "loss" in selected and getattr(selected["loss"][1], "stale", None) == "truncated_is" and (
            rc.generation.temperature != 1.0 or rc.generation.top_p != 1.0):
        raise PluginError(f"loss.stale=truncated_is with generation.temperature={rc.generation.temperature:g} / top_p="
                          f"{rc.generation.top_p:g}: the engine's log-probs are of the scaled distribution, so the "
                          f"stale tokens of {' and '.join(stale_from)} get no valid weight; sample at temperature=1 "
                          "top_p=1 or choose loss.stale=ignore or exclude")
    if "reward" in selected and "task" in selected:
        (rinfo, _), (tinfo, _) = selected["reward"], selected["task"]
        required = tuple(getattr(rinfo.cls, "problem_fields_required", ()))
        provided = getattr(tinfo.cls, "problem_fields_provided", None)
        if provided is not None:  # a task that declares nothing is not second-guessed
            missing = [f for f in required if f not in provided]
            if missing:
                raise PluginError(
                    f"reward={rinfo.name} needs problem field(s) {', '.join(missing)}, which task={tinfo.name} does not "
                    f"provide (it provides: {', '.join(provided) or 'none'}); choose a reward that fits the task")


def validate(cfg: DictConfig) -> RunConfig:
    """Validate the whole composed config before any work starts: plugin groups (the selected
    plugin exists; its keys, types and ranges match its config dataclass), the trainer's own keys,
    types and ranges (:mod:`reasonzoo.ranges` metadata on the fields above), and combinations
    that cannot work (a group size below a plugin's ``min_samples_per_prompt``; a reward whose
    ``problem_fields_required`` the task's ``problem_fields_provided`` lacks).

    :returns: the typed :class:`RunConfig`.
    :raises PluginError: one line naming the key (or both plugins) and what is allowed.
    """
    from .fsdp import check_strategy
    from .registry import HOOK_POINTS, select, validate_plugin_config

    cat = catalogue()
    groups = set(HOOK_POINTS) | set(cat)
    selected = {}
    for group in sorted(groups):
        if group not in cfg:
            if group in HOOK_POINTS:
                raise PluginError(f"config group {group!r} is missing; choose one of: {', '.join(sorted(cat.get(group, {})))}")
            continue
        node = cfg[group]
        if not isinstance(node, DictConfig) or "name" not in node:
            raise PluginError(f"config group {group!r} must select a plugin (a node with a 'name' key)")
        info = select(cat, group, node["name"])
        selected[group] = (info, validate_plugin_config(info, node))
    rest = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in groups and k != "hydra"}
    _check_keys(rest, RunConfig, "")
    try:
        rc = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), rest))
    except OmegaConfBaseException as exc:
        raise PluginError(f"{getattr(exc, 'full_key', '?')}: {getattr(exc, 'msg', exc)}") from exc
    try:
        check_ranges(rc)
        check_device(rc.train.device)
    except ValueError as exc:
        raise PluginError(str(exc)) from exc
    _check_combinations(rc, selected)
    check_strategy(cfg)  # launcher.strategy=fsdp2 with what it cannot run (a launcher's rule on the loss's keys)
    return rc
