"""Reading JSONL data files with errors that name the file and line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator


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
