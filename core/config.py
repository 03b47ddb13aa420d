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

from .registry import PluginError, catalogue


@dataclass
class GenerationConfig:
    temperature: float = 1.0  #: sampling temperature of rollouts (1.0: behaviour = policy)
    top_p: float = 1.0  #: nucleus threshold; 1.0 = off
    max_new_tokens: int = 64  #: maximum response length in tokens
    repeat_detection: bool = False  #: stop looping responses early (FinishReason.REPEAT; reasonzoo.repeats)
    repeat_max_period: int = 32  #: repeat rule: longest repeated block, in tokens
    repeat_min_repeats: int = 3  #: repeat rule: the block repeated this many times in a row
    repeat_min_length: int = 16  #: repeat rule: and spanning at least this many tokens

    def sampling(self):
        """The rollouts' :class:`SamplingParams`."""
        from .repeats import RepeatRule
        from .types import SamplingParams

        rule = None
        if self.repeat_detection:
            rule = RepeatRule(self.repeat_max_period, self.repeat_min_repeats, self.repeat_min_length)
        return SamplingParams(self.temperature, self.top_p, self.max_new_tokens, repeat=rule)


@dataclass
class TrainConfig:
    lr: float = 1e-4  #: AdamW learning rate of the policy
    weight_decay: float = 0.0  #: AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.999)  #: AdamW betas
    minibatch_size: int = 32  #: rollouts per optimizer step
    microbatches: int = 2  #: length-sorted parts per minibatch, gradients accumulated (less padding; exact for row-mean losses)
    epochs: int = 1  #: passes over the iteration's batch
    max_grad_norm: float = 1.0  #: gradient-norm clip; <= 0 disables

    def __post_init__(self) -> None:
        if self.microbatches < 1:
            raise ValueError(f"train.microbatches={self.microbatches}: must be >= 1")


@dataclass
class EvalConfig:
    every: int = 10  #: evaluate after every this many iterations (and after the last); 0 = only at start and end
    problems_per_difficulty: int = 200  #: held-out problems per difficulty level
    temperature: float = 1.0  #: 1.0 = sampled pass@1 (the notes: greedy flips on one token); 0 = greedy
    batch_size: int = 256  #: sequences generated at once
    before: bool = True  #: evaluate the warmed-up policy before RL (iteration 0)


@dataclass
class CheckpointConfig:
    every: int = 1  #: checkpoint after every this many iterations; a kill loses at most that many
    keep: int = 2  #: checkpoints kept on disk (oldest pruned)


@dataclass
class RunConfig:
    """Top-level options of ``reasonzoo-train`` (plugin groups are validated separately)."""

    seed: int = 0  #: seeds model init, problem generation and every random stream
    iterations: int = 60  #: RL iterations
    prompts_per_iteration: int = 16  #: problems sampled per iteration
    samples_per_prompt: int = 8  #: k, responses per problem
    threads: int = 1  #: torch intra-op threads (1 is fastest on a shared 2-core box)
    resume: Optional[str] = None  #: a run directory to continue from its latest checkpoint
    cache_dir: str = "~/.cache/reasonzoo"  #: where warm-up checkpoints are cached
    progress: bool = True  #: show progress bars
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def _check_keys(node: dict, schema: type, prefix: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in node.items():
        if key not in fields:
            raise PluginError(f"{prefix}{key}: unknown config key; allowed keys: {', '.join(fields)}")
        ftype = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        if ftype is not None and dataclasses.is_dataclass(ftype) and isinstance(value, dict):
            _check_keys(value, ftype, f"{prefix}{key}.")


def validate(cfg: DictConfig) -> RunConfig:
    """Validate the whole composed config: plugin groups (selected plugin exists, its keys and
    types match its dataclass) and the trainer's own keys. Returns the typed ``RunConfig``."""
    from .registry import HOOK_POINTS, select, validate_plugin_config

    cat = catalogue()
    groups = set(HOOK_POINTS) | set(cat)
    for group in sorted(groups):
        if group not in cfg:
            if group in HOOK_POINTS:
                raise PluginError(f"config group {group!r} is missing; choose one of: {', '.join(sorted(cat.get(group, {})))}")
            continue
        node = cfg[group]
        if not isinstance(node, DictConfig) or "name" not in node:
            raise PluginError(f"config group {group!r} must select a plugin (a node with a 'name' key)")
        validate_plugin_config(select(cat, group, node["name"]), node)
    rest = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in groups and k != "hydra"}
    _check_keys(rest, RunConfig, "")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), rest))
    except OmegaConfBaseException as exc:
        raise PluginError(f"{getattr(exc, 'full_key', '?')}: {getattr(exc, 'msg', exc)}") from exc
