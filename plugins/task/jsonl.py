"""Problems from JSONL files: one JSON object per line with ``prompt`` (or ``problem``),
``answer`` and optionally ``difficulty`` (int) and ``id``.

Errors name the file and line. When no eval file is given, a seeded ``eval_fraction`` of the
train file is held out.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from reasonzoo import hookimpl, plugin
from reasonzoo.jsonl import difficulty_and_id, held_out_split, iter_objects
from reasonzoo.types import Problem


@dataclass
class JsonlConfig:
    train_path: str = "???"  #: JSONL file of training problems (required)
    eval_path: Optional[str] = None  #: JSONL file of held-out problems; None = hold out eval_fraction of train
    eval_fraction: float = 0.1  #: share of train held out when eval_path is None
    prompt_template: str = "{prompt}"  #: format string applied to the prompt text


def read_problems(path: str | Path, template: str = "{prompt}") -> list[Problem]:
    """Parse a JSONL problem file; raises ``ValueError`` naming ``file:line`` on bad input."""
    path = Path(path).expanduser()
    out, seen = [], set()
    for where, lineno, obj in iter_objects(path):
        text = obj.get("prompt", obj.get("problem"))
        if not isinstance(text, str) or not text:
            raise ValueError(f"{where}: needs a non-empty string 'prompt' or 'problem'")
        if "answer" not in obj:
            raise ValueError(f"{where}: needs an 'answer'")
        diff, uid = difficulty_and_id(obj, where, f"{path.name}:{lineno}", seen)
        prompt = template.format(prompt=text)
        out.append(Problem(uid=uid, prompt=prompt, answer=str(obj["answer"]), difficulty=diff,
                           meta={k: v for k, v in obj.items() if k not in ("prompt", "problem", "answer", "difficulty", "id")}))
    if not out:
        raise ValueError(f"{path}: no problems")
    return out


@plugin("task", "jsonl", JsonlConfig)
class Jsonl:
    """Problems from JSONL files."""

    def __init__(self, cfg: JsonlConfig):
        if not 0.0 < cfg.eval_fraction < 1.0:
            raise ValueError(f"task.eval_fraction={cfg.eval_fraction}: must be in (0, 1)")
        self.cfg = cfg

    @hookimpl
    def rz_load_problems(self, ctx, split):
        probs = read_problems(self.cfg.train_path, self.cfg.prompt_template)
        if self.cfg.eval_path:
            return probs if split == "train" else read_problems(self.cfg.eval_path, self.cfg.prompt_template)
        return held_out_split(probs, split, self.cfg.eval_fraction, f"jsonl-{ctx.seed}")
