"""Problems from a ``reasoning-gym`` generator (``reasoning_gym.create_dataset``).

Each problem keeps its generator entry in ``meta["entry"]``, so the ``reasoning_gym`` reward
can score it with the dataset's own scorer. Difficulty: the integer value of
``entry["metadata"][difficulty_key]`` when ``difficulty_key`` is set.

A generator entry whose reference answer is ``None`` (some generators have open-ended problems)
is an error at load, naming the generator and the entry: it would otherwise become the reference
string ``"None"``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from reasonzoo import hookimpl, plugin
from reasonzoo.jsonl import check_template, fill_template
from reasonzoo.types import Problem


@dataclass
class ReasoningGymConfig:
    dataset: str = "basic_arithmetic"  #: reasoning-gym dataset name
    dataset_config: dict[str, Any] = field(default_factory=dict)  #: keyword arguments of create_dataset
    train_size: int = 2000  #: training problems
    eval_size: int = 200  #: held-out problems (a different seed)
    difficulty_key: Optional[str] = None  #: metadata key holding an integer difficulty (e.g. num_terms)
    prompt_template: str = "{question}\nAnswer: "  #: format string applied to the question


@plugin("task", "reasoning_gym", ReasoningGymConfig)
class ReasoningGym:
    """A reasoning-gym generator as a task."""

    problem_fields_provided = ("answer", "meta.entry")  #: read by config validation (reward needs)

    def __init__(self, cfg: ReasoningGymConfig):
        check_template(cfg.prompt_template, "task.prompt_template", ["question"])  # other braces kept as written
        self.cfg = cfg

    @hookimpl
    def rz_load_problems(self, ctx, split):
        import reasoning_gym

        size = self.cfg.train_size if split == "train" else self.cfg.eval_size
        seed = ctx.data_seed * 2 + (split == "eval")
        try:
            ds = reasoning_gym.create_dataset(self.cfg.dataset, size=size, seed=seed, **self.cfg.dataset_config)
        except Exception as exc:
            raise ValueError(f"task.dataset={self.cfg.dataset!r} with task.dataset_config={self.cfg.dataset_config}: {exc}") from exc
        out = []
        for i, entry in enumerate(ds):
            if entry.get("answer") is None:
                raise ValueError(f"task.dataset={self.cfg.dataset!r}: reasoning-gym generator {self.cfg.dataset!r} gave "
                                 f"no reference answer (None) for {split} entry {i} (question {entry['question'][:80]!r}); "
                                 "its problems cannot be scored: choose another dataset or dataset_config")
            diff = entry["metadata"].get(self.cfg.difficulty_key) if self.cfg.difficulty_key else None
            out.append(Problem(uid=f"{self.cfg.dataset}/{split}/{i}", prompt=fill_template(self.cfg.prompt_template, question=entry["question"]),
                               answer=str(entry["answer"]), difficulty=int(diff) if diff is not None else None,
                               meta={"entry": entry}))
        return out
