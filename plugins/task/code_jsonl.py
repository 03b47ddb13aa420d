"""Programming problems from JSONL files, for ``reward=code`` (Kimi k1.5 §2.1: code problems
verified by running test cases; tests can be built with ``reasonzoo.testgen``, §2.3.5).

One JSON object per line:

* ``statement`` (or ``prompt``): the problem text, a non-empty string (required);
* ``tests``: a non-empty list of ``{"input": str, "output": str}`` (stdin, expected stdout) (required);
* ``solutions``: reference programs, a list of strings (optional; ``warmup=sft`` trains on them,
  and the first one becomes ``Problem.answer``, which is empty otherwise);
* ``difficulty``: an integer (optional); ``id``: a unique name (optional, default ``file:line``);
* ``language``: a key of the sandbox's language table (optional; the reward's default otherwise).

Any other key is kept in ``Problem.meta``. Errors name the file and line. When no eval file is
given, a seeded ``eval_fraction`` of the train file is held out.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from reasonzoo import hookimpl, plugin
from reasonzoo.jsonl import difficulty_and_id, held_out_split, iter_objects
from reasonzoo.types import Problem

KNOWN = ("statement", "prompt", "tests", "solutions", "difficulty", "id")


@dataclass
class CodeJsonlConfig:
    train_path: str = "???"  #: JSONL file of training problems (required)
    eval_path: Optional[str] = None  #: JSONL file of held-out problems; None = hold out eval_fraction of train
    eval_fraction: float = 0.1  #: share of train held out when eval_path is None
    prompt_template: str = "{statement}"  #: format string applied to the statement text


def _check_tests(tests, where: str) -> list[dict[str, str]]:
    if not isinstance(tests, list) or not tests:
        raise ValueError(f"{where}: 'tests' must be a non-empty list of {{\"input\": str, \"output\": str}}")
    for i, t in enumerate(tests):
        if not isinstance(t, dict) or set(t) != {"input", "output"}:
            raise ValueError(f"{where}: tests[{i}] must be an object with exactly the keys 'input' and 'output', got {t!r}")
        for key in ("input", "output"):
            if not isinstance(t[key], str):
                raise ValueError(f"{where}: tests[{i}].{key} must be a string, got {type(t[key]).__name__}")
    return [{"input": t["input"], "output": t["output"]} for t in tests]


def read_code_problems(path: str | Path, template: str = "{statement}") -> list[Problem]:
    """Parse a code-problem JSONL file; raises ``ValueError`` naming ``file:line`` on bad input."""
    path = Path(path).expanduser()
    out, seen = [], set()
    for where, lineno, obj in iter_objects(path):
        text = obj.get("statement", obj.get("prompt"))
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: needs a non-empty string 'statement' or 'prompt'")
        if "tests" not in obj:
            raise ValueError(f"{where}: needs 'tests', a list of {{\"input\": str, \"output\": str}}")
        tests = _check_tests(obj["tests"], where)
        sols = obj.get("solutions", [])
        if not isinstance(sols, list) or not all(isinstance(s, str) and s.strip() for s in sols):
            raise ValueError(f"{where}: 'solutions' must be a list of non-empty strings (reference programs)")
        diff, uid = difficulty_and_id(obj, where, f"{path.name}:{lineno}", seen)
        if "language" in obj and not isinstance(obj["language"], str):
            raise ValueError(f"{where}: 'language' must be a string, got {obj['language']!r}")
        meta = {k: v for k, v in obj.items() if k not in KNOWN}
        meta["tests"] = tests
        out.append(Problem(uid=uid, prompt=template.format(statement=text), answer=sols[0] if sols else "",
                           difficulty=diff, solutions=tuple(sols), meta=meta))
    if not out:
        raise ValueError(f"{path}: no problems")
    return out


@plugin("task", "code_jsonl", CodeJsonlConfig)
class CodeJsonl:
    """Programming problems with test cases from JSONL files."""

    problem_fields_provided = ("meta.tests",)  #: read by config validation (reward needs)

    def __init__(self, cfg: CodeJsonlConfig):
        if not 0.0 < cfg.eval_fraction < 1.0:
            raise ValueError(f"task.eval_fraction={cfg.eval_fraction}: must be in (0, 1)")
        try:
            cfg.prompt_template.format(statement="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"task.prompt_template={cfg.prompt_template!r}: may only use the field "
                             f"{{statement}} ({exc!r})") from None
        self.cfg = cfg

    @hookimpl
    def rz_load_problems(self, ctx, split):
        if split not in ("train", "eval"):
            raise ValueError(f"task code_jsonl: unknown split {split!r}; allowed: train, eval")
        probs = read_code_problems(self.cfg.train_path, self.cfg.prompt_template)
        if self.cfg.eval_path:
            return probs if split == "train" else read_code_problems(self.cfg.eval_path, self.cfg.prompt_template)
        out = held_out_split(probs, split, self.cfg.eval_fraction, f"code_jsonl-{ctx.seed}")
        if not out:
            raise ValueError(f"task.train_path={self.cfg.train_path!r}: {len(probs)} problem(s) leave none for "
                             f"the {split} split at eval_fraction={self.cfg.eval_fraction}; add problems or set task.eval_path")
        return out
