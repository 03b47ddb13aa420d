"""Problems from JSONL files (k1.5 §2.1: a prompt set of problems with verifiable answers), one
JSON object per line, for ``reward=answer`` or ``reward=math``.

Fields, renamed with ``fields`` so files need no rewriting (MATH:
``fields.prompt=problem fields.difficulty=level fields.id=unique_id``):

* prompt: a non-empty string (required; by default ``prompt``, else ``problem``);
* answer: the reference answer (required), a string or a number. Numbers keep the text the
  file wrote (``0.00001`` stays ``"0.00001"``, not ``"1e-05"``; ``3.0`` stays ``"3.0"``),
  ``true`` / ``false`` become ``"true"`` / ``"false"``, and ``null``, a list or an object is an
  error. ``answer_format: gsm8k`` takes the text after the last ``####`` with commas removed,
  as GSM8K's own evaluation does (``"... #### 1,072"`` → ``"1072"``);
* difficulty (optional): an integer, or a label holding exactly one integer, which is read as
  that integer (MATH's ``"Level 5"`` → 5); any other value (``"hard"``, ``"Level ?"``, ``2.5``,
  ``true``) is an error naming the file and line;
* id (optional, default ``<file name>:<line>``): unique; a number keeps its written text;
* solution (optional, ``fields.solution``): a worked reference solution, a string or a list of
  strings, put in ``Problem.solutions`` for ``warmup=sft``.

Every other key is kept in ``Problem.meta``. ``prompt_template`` replaces ``{prompt}`` (which it
must contain) and keeps every other brace as written: ``"{prompt} Put your final answer within
\\boxed{}."`` works as is (``{{`` / ``}}`` still give one brace, as in ``str.format``). Errors
name the file and line. When no eval file is given, a seeded ``eval_fraction`` of the train file
is held out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from reasonzoo import hookimpl, plugin
from reasonzoo.jsonl import answer_text, check_template, difficulty_and_id, fill_template, held_out_split, iter_objects
from reasonzoo.types import Problem

ANSWER_FORMATS = ("raw", "gsm8k")


@dataclass
class FieldsConfig:
    prompt: Optional[str] = None  #: key of the prompt text; None = "prompt", or "problem" where a record has no "prompt"
    answer: str = "answer"  #: key of the reference answer (a string or a number)
    difficulty: Optional[str] = "difficulty"  #: key of the difficulty (integer or "Level 5"-style label); None = not read
    id: Optional[str] = "id"  #: key of the unique id; None = not read (ids are "<file name>:<line>")
    solution: Optional[str] = None  #: key of reference solutions (string or list of strings) for warmup=sft; None = none


@dataclass
class JsonlConfig:
    train_path: str = "???"  #: JSONL file of training problems (required)
    eval_path: Optional[str] = None  #: JSONL file of held-out problems; None = hold out eval_fraction of train
    eval_fraction: float = 0.1  #: share of train held out when eval_path is None
    prompt_template: str = "{prompt}"  #: text around the prompt; must contain {prompt}, other braces kept as written
    fields: FieldsConfig = field(default_factory=FieldsConfig)  #: which key of a record holds which field
    answer_format: str = "raw"  #: raw: the answer as written; gsm8k: the text after the last '####', commas removed


def gsm8k_answer(text: str, where: str, key: str = "answer") -> str:
    """The final answer of a GSM8K solution: the text after the last ``####``, stripped, commas
    removed. ``ValueError`` naming ``where`` when there is no ``####`` or nothing after it."""
    if "####" not in text:
        raise ValueError(f"{where}: task.answer_format=gsm8k: {key!r} has no '####' marker: {text[-60:]!r}")
    out = text.rsplit("####", 1)[1].strip().replace(",", "")
    if not out:
        raise ValueError(f"{where}: task.answer_format=gsm8k: nothing after '####' in {key!r}")
    return out


def _solutions(value: Any, where: str, key: str) -> tuple[str, ...]:
    sols = [value] if isinstance(value, str) else value
    if not isinstance(sols, list) or not all(isinstance(s, str) and s.strip() for s in sols):
        raise ValueError(f"{where}: {key!r} must be a non-empty string or a list of them (reference solutions)")
    return tuple(sols)


def read_problems(path: str | Path, template: str = "{prompt}", fields: FieldsConfig | None = None,
                  answer_format: str = "raw") -> list[Problem]:
    """Parse a JSONL problem file (see the module docstring for the fields and rules).

    :returns: one :class:`Problem` per non-blank line, in file order.
    :raises FileNotFoundError: the file does not exist.
    :raises ValueError: naming ``file:line`` and the key for bad input, or the file for an empty one.
    """
    f = fields or FieldsConfig()
    path = Path(path).expanduser()
    out, seen = [], set()
    for where, lineno, obj in iter_objects(path, number_text=True):
        pkey = f.prompt or ("prompt" if "prompt" in obj else "problem")
        text = obj.get(pkey)
        if not isinstance(text, str) or not text:
            want = repr(f.prompt) if f.prompt else "'prompt' or 'problem'"
            raise ValueError(f"{where}: needs a non-empty string {want} (task.fields.prompt)")
        if f.answer not in obj:
            raise ValueError(f"{where}: needs an {f.answer!r} (task.fields.answer)")
        answer = answer_text(obj[f.answer], where, f.answer)
        if answer_format == "gsm8k":
            answer = gsm8k_answer(answer, where, f.answer)
        diff, uid = difficulty_and_id(obj, where, f"{path.name}:{lineno}", seen,
                                      difficulty_key=f.difficulty, id_key=f.id, labels=True)
        sols = _solutions(obj[f.solution], where, f.solution) if f.solution and f.solution in obj else ()
        used = {pkey, f.answer, f.difficulty, f.id, f.solution}
        meta = {k: v for k, v in obj.items() if k not in used}
        out.append(Problem(uid=uid, prompt=fill_template(template, prompt=text), answer=answer,
                           difficulty=diff, solutions=sols, meta=meta))
    if not out:
        raise ValueError(f"{path}: no problems")
    return out


@plugin("task", "jsonl", JsonlConfig)
class Jsonl:
    """Problems with reference answers from JSONL files."""

    problem_fields_provided = ("answer",)  #: read by config validation (reward needs); solutions only with fields.solution

    def __init__(self, cfg: JsonlConfig):
        if not 0.0 < cfg.eval_fraction < 1.0:
            raise ValueError(f"task.eval_fraction={cfg.eval_fraction}: must be in (0, 1)")
        if cfg.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"task.answer_format={cfg.answer_format!r}: allowed values are {', '.join(ANSWER_FORMATS)}")
        check_template(cfg.prompt_template, "task.prompt_template", ["prompt"])
        for key in ("prompt", "answer", "difficulty", "id", "solution"):
            value = getattr(cfg.fields, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"task.fields.{key}={value!r}: must be a non-empty key name")
        if cfg.fields.answer is None:
            raise ValueError("task.fields.answer=None: the answer key is required")
        self.cfg = cfg

    def _read(self, path: str) -> list[Problem]:
        return read_problems(path, self.cfg.prompt_template, self.cfg.fields, self.cfg.answer_format)

    @hookimpl
    def rz_load_problems(self, ctx, split):
        if split not in ("train", "eval"):
            raise ValueError(f"task jsonl: unknown split {split!r}; allowed: train, eval")
        probs = self._read(self.cfg.train_path)
        if self.cfg.eval_path:
            return probs if split == "train" else self._read(self.cfg.eval_path)
        out = held_out_split(probs, split, self.cfg.eval_fraction, f"jsonl-{ctx.data_seed}")
        if not out:
            raise ValueError(f"task.train_path={self.cfg.train_path!r}: {len(probs)} problem(s) leave none for "
                             f"the {split} split at eval_fraction={self.cfg.eval_fraction}; add problems or set task.eval_path")
        return out
