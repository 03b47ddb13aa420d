"""Programming problems from JSONL files, for ``reward=code`` (Kimi k1.5 §2.1: code problems
verified by running test cases; tests can be built with ``reasonzoo.testgen``, §2.3.5).

One JSON object per line:

* ``statement`` (or ``prompt``): the problem text, a non-empty string (required);
* ``tests``: a non-empty list of test records (required), each one of
  ``{"input": str, "output": str}`` (stdin, expected stdout; ``"kind": "stdio"`` may be added),
  ``{"kind": "assert", "test": str, "entry_point": str}`` (``test`` defines ``check(candidate)``;
  ``entry_point`` defaults to the record's ``entry_point``), or
  ``{"kind": "call", "fn": str, "args": list, "kwargs"?: dict, "expected": any, "tol"?: float}``
  (``fn`` defaults to the record's ``entry_point``); function tests need ``language`` python;
* ``prefix``: code the response completes (optional): the program is prefix + response, and the
  prefix also runs before an ``assert`` test's code (``reward=code``, "Program assembly");
* ``entry_point``: default function name of the function tests (optional);
* ``solutions``: reference responses, a list of strings (optional; ``warmup=sft`` trains on them,
  and the first one becomes ``Problem.answer``, which is empty otherwise);
* ``difficulty``: an integer (optional); ``id``: a unique name (optional, default ``file:line``);
* ``language``: a key of the sandbox's language table (optional; the reward's default otherwise).

HumanEval's own layout is read as is: a record with ``task_id``, ``prompt``, ``test`` (a string),
``entry_point`` and optionally ``canonical_solution`` becomes ``id`` = task_id, ``statement`` =
``prefix`` = prompt, ``tests`` = one assert test, ``solutions`` = [canonical_solution] (a
completion of the prompt, as the response is).

Any other key is kept in ``Problem.meta``. Errors name the file and line. When no eval file is
given, a seeded ``eval_fraction`` of the train file is held out.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from reasonzoo import hookimpl, plugin
from reasonzoo.jsonl import check_template, difficulty_and_id, fill_template, held_out_split, iter_objects
from reasonzoo.sandbox.functional import check_test
from reasonzoo.types import Problem

KNOWN = ("statement", "prompt", "tests", "solutions", "difficulty", "id", "entry_point")
HUMANEVAL = ("task_id", "prompt", "test", "entry_point")
"""Keys that mark a record in HumanEval's layout (with no ``tests``)."""


@dataclass
class CodeJsonlConfig:
    train_path: str = "???"  #: JSONL file of training problems (required)
    eval_path: Optional[str] = None  #: JSONL file of held-out problems; None = hold out eval_fraction of train
    eval_fraction: float = 0.1  #: share of train held out when eval_path is None
    prompt_template: str = "{statement}"  #: format string applied to the statement text


def _check_tests(tests, where: str, entry_point) -> list[dict]:
    if not isinstance(tests, list) or not tests:
        raise ValueError(f"{where}: 'tests' must be a non-empty list of {{\"input\": str, \"output\": str}} "
                         f"or function tests (kind assert or call)")
    out = []
    for i, t in enumerate(tests):
        if isinstance(t, dict) and t.get("kind", "stdio") == "stdio":
            if set(t) - {"kind"} != {"input", "output"}:
                raise ValueError(f"{where}: tests[{i}] must be an object with exactly the keys 'input' and 'output', got {t!r}")
            for key in ("input", "output"):
                if not isinstance(t[key], str):
                    raise ValueError(f"{where}: tests[{i}].{key} must be a string, got {type(t[key]).__name__}")
            out.append({"input": t["input"], "output": t["output"]})
            continue
        if isinstance(t, dict) and isinstance(entry_point, str):
            key = {"assert": "entry_point", "call": "fn"}.get(t.get("kind"))
            if key and key not in t:
                t = {**t, key: entry_point}
        out.append(check_test(t, f"{where}: tests[{i}]"))
    return out


def _humaneval(obj: dict, where: str) -> dict:
    """A record in HumanEval's layout rewritten in this task's."""
    for key in ("prompt", "test", "entry_point"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise ValueError(f"{where}: HumanEval record needs a non-empty string {key!r}")
    out = {k: v for k, v in obj.items() if k not in (*HUMANEVAL, "canonical_solution")}
    out.update(id=obj.get("id", obj["task_id"]), statement=obj["prompt"], prefix=obj["prompt"],
               tests=[{"kind": "assert", "test": obj["test"], "entry_point": obj["entry_point"]}])
    if isinstance(obj.get("canonical_solution"), str) and obj["canonical_solution"].strip():
        out.setdefault("solutions", [obj["canonical_solution"]])
    return out


def read_code_problems(path: str | Path, template: str = "{statement}") -> list[Problem]:
    """Parse a code-problem JSONL file; raises ``ValueError`` naming ``file:line`` on bad input."""
    path = Path(path).expanduser()
    out, seen = [], set()
    for where, lineno, obj in iter_objects(path):
        if "tests" not in obj and all(k in obj for k in HUMANEVAL):
            obj = _humaneval(obj, where)
        text = obj.get("statement", obj.get("prompt"))
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: needs a non-empty string 'statement' or 'prompt'")
        if "tests" not in obj:
            raise ValueError(f"{where}: needs 'tests', a list of {{\"input\": str, \"output\": str}} or function tests")
        if "entry_point" in obj and not (isinstance(obj["entry_point"], str) and obj["entry_point"].isidentifier()):
            raise ValueError(f"{where}: 'entry_point' must be a Python identifier, got {obj['entry_point']!r}")
        tests = _check_tests(obj["tests"], where, obj.get("entry_point"))
        sols = obj.get("solutions", [])
        if not isinstance(sols, list) or not all(isinstance(s, str) and s.strip() for s in sols):
            raise ValueError(f"{where}: 'solutions' must be a list of non-empty strings (reference responses)")
        diff, uid = difficulty_and_id(obj, where, f"{path.name}:{lineno}", seen)
        if "language" in obj and not isinstance(obj["language"], str):
            raise ValueError(f"{where}: 'language' must be a string, got {obj['language']!r}")
        if obj.get("language", "python") != "python" and any("kind" in t for t in tests):
            raise ValueError(f"{where}: function tests (assert, call) need language python, got {obj['language']!r}")
        if "prefix" in obj and not isinstance(obj["prefix"], str):
            raise ValueError(f"{where}: 'prefix' must be a string (code the response completes)")
        meta = {k: v for k, v in obj.items() if k not in KNOWN}
        meta["tests"] = tests
        out.append(Problem(uid=uid, prompt=fill_template(template, statement=text), answer=sols[0] if sols else "",
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
        check_template(cfg.prompt_template, "task.prompt_template", ["statement"])  # other braces kept as written
        self.cfg = cfg

    @hookimpl
    def rz_load_problems(self, ctx, split):
        if split not in ("train", "eval"):
            raise ValueError(f"task code_jsonl: unknown split {split!r}; allowed: train, eval")
        probs = read_code_problems(self.cfg.train_path, self.cfg.prompt_template)
        if self.cfg.eval_path:
            return probs if split == "train" else read_code_problems(self.cfg.eval_path, self.cfg.prompt_template)
        out = held_out_split(probs, split, self.cfg.eval_fraction, f"code_jsonl-{ctx.data_seed}")
        if not out:
            raise ValueError(f"task.train_path={self.cfg.train_path!r}: {len(probs)} problem(s) leave none for "
                             f"the {split} split at eval_fraction={self.cfg.eval_fraction}; add problems or set task.eval_path")
        return out
