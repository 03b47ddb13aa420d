"""Reading JSONL data files with errors that name the file and line, and the checks, prompt
templates and the held-out split that the JSONL tasks share."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

T = TypeVar("T")


class JsonInt(int):
    """A JSON integer that remembers the text the file wrote (``.text``, e.g. ``"-0"``)."""

    text: str

    def __new__(cls, text: str) -> "JsonInt":
        obj = super().__new__(cls, text)
        obj.text = text
        return obj


class JsonFloat(float):
    """A JSON number with a fraction or an exponent that remembers the text the file wrote
    (``.text``: ``"0.00001"``, ``"1e20"``, ``"3.0"``, where ``str(float)`` gives ``"1e-05"``,
    ``"1e+20"``, ``"3.0"``); its float value is Python's nearest double."""

    text: str

    def __new__(cls, text: str) -> "JsonFloat":
        obj = super().__new__(cls, text)
        obj.text = text
        return obj


class _NonJsonConstant(Exception):
    pass


def _refuse_constant(name: str):
    raise _NonJsonConstant(name)


def iter_objects(path: str | Path, number_text: bool = False) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Yield ``(where, lineno, obj)`` for every non-blank line of a JSONL file, ``where`` being
    ``"<file>:<line>"``. With ``number_text`` JSON numbers are :class:`JsonInt` /
    :class:`JsonFloat` (an ``int`` / ``float`` that keeps its written text, see
    :func:`answer_text`). Raises ``FileNotFoundError`` for a missing file and ``ValueError``
    naming the file and line for invalid JSON (``NaN``, ``Infinity`` and ``-Infinity`` included:
    Python's ``json`` accepts them, JSON does not, and a NaN answer or difficulty would be compared
    or sorted silently wrong) or a value that is not an object."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"task file {str(path)!r} does not exist")
    numbers = {"parse_int": JsonInt, "parse_float": JsonFloat} if number_text else {}
    for lineno, raw in enumerate(path.read_bytes().splitlines(), 1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{where}: not UTF-8 text (byte {exc.start + 1} of the line); expected a UTF-8 JSONL file") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line, parse_constant=_refuse_constant, **numbers)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
        except _NonJsonConstant as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.args[0]} is not a JSON value; write it as a string if it "
                             "is meant as text)") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield where, lineno, obj


def answer_text(value: Any, where: str, key: str = "answer") -> str:
    """A reference answer as the file wrote it: a string as is; a number read with
    ``number_text`` by its written text (``0.00001`` stays ``"0.00001"``, ``3.0`` stays
    ``"3.0"``); ``true`` / ``false`` as ``"true"`` / ``"false"`` (JSON's spelling, not Python's).
    ``ValueError`` naming ``where`` and ``key`` for ``null``, a list or an object."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (JsonInt, JsonFloat)):
        return value.text
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if value is None:
        raise ValueError(f"{where}: {key!r} is null; every problem needs a reference answer")
    raise ValueError(f"{where}: {key!r} must be a string or a number, got {'a list' if isinstance(value, list) else 'an object'}")


def difficulty_and_id(obj: dict[str, Any], where: str, default_id: str, seen: set[str], *,
                      difficulty_key: str | None = "difficulty", id_key: str | None = "id",
                      labels: bool = False) -> tuple[int | None, str]:
    """The optional integer difficulty (``obj[difficulty_key]``) and the id (``obj[id_key]``,
    default ``default_id``) of one record. With ``labels`` a string holding exactly one integer
    is read as that integer (``"Level 5"`` → 5, ``"3"`` → 3). ``ValueError`` naming ``where``
    for any other difficulty that is not an integer (booleans and floats included), a ``null``
    id, or an id already in ``seen`` (which it is added to). A ``None`` key means the field is
    not read."""
    diff = obj.get(difficulty_key) if difficulty_key else None
    if labels and isinstance(diff, str):
        found = re.findall(r"-?\d+", diff)
        if len(found) != 1:
            raise ValueError(f"{where}: {difficulty_key!r} must be an integer or a label with exactly one integer "
                             f"(\"Level 5\" -> 5), got {diff!r}")
        diff = int(found[0])
    elif diff is not None and (isinstance(diff, bool) or not isinstance(diff, int)):
        raise ValueError(f"{where}: {difficulty_key!r} must be an integer, got {diff!r}")
    if diff is not None:
        diff = int(diff)  # a plain int, also for a JsonInt
    raw = obj.get(id_key, default_id) if id_key else default_id
    if raw is None:
        raise ValueError(f"{where}: {id_key!r} is null")
    uid = raw.text if isinstance(raw, (JsonInt, JsonFloat)) else str(raw)
    if uid in seen:
        raise ValueError(f"{where}: duplicate id {uid!r}")
    seen.add(uid)
    return diff, uid


_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{(\w+)\}")


def check_template(template: str, key: str, fields: Sequence[str]) -> None:
    """``ValueError`` naming ``key`` unless ``template`` uses each of ``fields`` (see
    :func:`fill_template`)."""
    used = {m.group(1) for m in _TEMPLATE_TOKEN.finditer(template) if m.group(1)}
    missing = [f for f in fields if f not in used]
    if missing:
        names = ", ".join("{" + f + "}" for f in fields)
        raise ValueError(f"{key}={template!r}: may only use the field{'s' if len(fields) > 1 else ''} {names}, and must "
                         f"contain {'them' if len(fields) > 1 else 'it'} (any other brace is kept as written; "
                         "'{{' and '}}' give one brace)")


def fill_template(template: str, **values: str) -> str:
    """Fill a prompt template: ``{name}`` for a name in ``values`` becomes its value, ``{{`` and
    ``}}`` become one brace (as in ``str.format``), and every other brace is kept as written,
    so ``"{prompt} Put your final answer within \\boxed{}."`` needs no escaping."""
    def sub(m: re.Match) -> str:
        tok, name = m.group(0), m.group(1)
        if name is None:
            return tok[0]
        return values[name] if name in values else tok
    return _TEMPLATE_TOKEN.sub(sub, template)


def held_out_split(items: Sequence[T], split: str, fraction: float, key: str) -> list[T]:
    """The ``split`` (``train`` or ``eval``) of ``items`` when a seeded ``fraction`` of them
    (at least one) is held out for evaluation; ``key`` seeds the shuffle."""
    order = list(range(len(items)))
    random.Random(key).shuffle(order)
    held = set(order[: max(1, int(len(items) * fraction))])
    return [x for i, x in enumerate(items) if (i in held) == (split == "eval")]
