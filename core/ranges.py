"""Allowed ranges of numeric config options, declared on the config dataclass fields.

One declaration serves the check, the error message and the docs::

    from reasonzoo.ranges import ranged

    @dataclass
    class MyLossConfig:
        tau: float = ranged(0.1, gt=0)  #: KL strength
        clip: float = ranged(0.2, ge=0, lt=1)  #: ratio clip

:func:`check_ranges` (called by config validation for the trainer's own options and for every
selected plugin's config) refuses a value outside its range, and any NaN or infinite float
without a range that allows it, with one line naming the key, the value and the allowed range.
A tuple field (e.g. ``betas``) is checked element by element.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric option; ``None`` = unbounded on that side."""

    ge: float | None = None  #: value >= ge
    gt: float | None = None  #: value > gt
    le: float | None = None  #: value <= le
    lt: float | None = None  #: value < lt

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        lo = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None
        hi = f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None
        if lo and hi:
            return f"{lo}, {hi}"
        if lo:
            return (">= " if lo[0] == "[" else "> ") + lo[1:]
        if hi:
            return ("<= " if hi[-1] == "]" else "< ") + hi[:-1]
        return "any number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def ranged(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None) -> Any:
    """A dataclass field with ``default`` and an allowed range (``ge``/``gt``/``le``/``lt`` bounds)."""
    return dataclasses.field(default=default, metadata={"range": Range(ge, gt, le, lt)})


def field_range(f: dataclasses.Field) -> Range | None:
    """The declared :class:`Range` of a dataclass field, or ``None``."""
    return f.metadata.get("range")


def check_ranges(obj: Any, prefix: str = "") -> None:
    """Check every ranged field of the dataclass instance ``obj`` (recursively).

    :param prefix: the config path of ``obj`` (``"generation."``), used in the message.
    :raises ValueError: ``<prefix><key>=<value>: out of range; allowed: <range>`` for the first
        offending field, or ``...: not a finite number`` for NaN / ±inf in an unranged float field.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, key + ".")
            continue
        rng = field_range(f)
        items = value if isinstance(value, (tuple, list)) else [value]
        for i, v in enumerate(items):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            where = key if items is not value else f"{key}[{i}]"
            if rng is not None and v not in rng:
                raise ValueError(f"{where}={v!r}: out of range; allowed: {rng}")
            if rng is None and isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{where}={v!r}: not a finite number")
