"""Reading JSONL data files with errors that name the file and line, and the checks and the
held-out split that the JSONL tasks share."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

T = TypeVar("T")


def iter_objects(path: str | Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Yield ``(where, lineno, obj)`` for every non-blank line of a JSONL file, ``where`` being
    ``"<file>:<line>"``. Raises ``FileNotFoundError`` for a missing file and ``ValueError``
    naming the file and line for invalid JSON or a value that is not an object."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"task file {str(path)!r} does not exist")
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield where, lineno, obj


def difficulty_and_id(obj: dict[str, Any], where: str, default_id: str, seen: set[str]) -> tuple[int | None, str]:
    """The optional integer ``difficulty`` and the ``id`` (default ``default_id``) of one record;
    ``ValueError`` naming ``where`` for a non-integer difficulty (booleans included) or an id
    already in ``seen`` (which it is added to)."""
    diff = obj.get("difficulty")
    if diff is not None and (isinstance(diff, bool) or not isinstance(diff, int)):
        raise ValueError(f"{where}: 'difficulty' must be an integer, got {diff!r}")
    uid = str(obj.get("id", default_id))
    if uid in seen:
        raise ValueError(f"{where}: duplicate id {uid!r}")
    seen.add(uid)
    return diff, uid


def held_out_split(items: Sequence[T], split: str, fraction: float, key: str) -> list[T]:
    """The ``split`` (``train`` or ``eval``) of ``items`` when a seeded ``fraction`` of them
    (at least one) is held out for evaluation; ``key`` seeds the shuffle."""
    order = list(range(len(items)))
    random.Random(key).shuffle(order)
    held = set(order[: max(1, int(len(items) * fraction))])
    return [x for i, x in enumerate(items) if (i in held) == (split == "eval")]
