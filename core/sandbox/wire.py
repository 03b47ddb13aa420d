"""Length-prefixed message framing between the trainer and a fork server.

Scope: the byte format only. One message is a 4-byte big-endian length, a UTF-8 JSON header of that
length, then the raw blobs whose lengths the header lists under ``"_blobs"``. Blobs carry program
text, stdin and captured output without JSON escaping.

This module is stdlib-only and has no package-relative imports, because the fork server imports it
as a top-level module inside the sandbox, where the ``reasonzoo`` package is not installed.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time

_LEN = struct.Struct("!I")
MAX_HEADER = 1 << 20
"""Largest JSON header accepted; a larger length prefix means a corrupt stream."""


class WireError(Exception):
    """The peer closed the channel, sent garbage, or missed the deadline."""


def encode(header: dict, blobs: list[bytes] = ()) -> bytes:
    """Serialise one message: ``header`` (JSON-able dict) followed by ``blobs``."""
    return b"".join([encode_header(header, [len(b) for b in blobs]), *blobs])


def encode_header(header: dict, sizes: list[int]) -> bytes:
    """The length prefix and header of a message whose blobs have ``sizes`` (sent separately)."""
    head = dict(header)
    head["_blobs"] = list(sizes)
    raw = json.dumps(head, separators=(",", ":")).encode()
    return _LEN.pack(len(raw)) + raw


def send(fd: int, header: dict, blobs: list[bytes] = (), deadline: float | None = None) -> None:
    """Write one whole message to ``fd``; ``deadline`` (``time.monotonic()`` instant) bounds the
    wait for a peer that stopped reading."""
    view = memoryview(encode(header, blobs))
    while view:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise WireError(f"timed out with {len(view)} bytes unsent")
        try:
            n = os.write(fd, view[: 1 << 16] if deadline is not None else view)
        except BrokenPipeError as exc:
            raise WireError("channel closed by peer") from exc
        view = view[n:]


def send_header(fd: int, header: dict, sizes: list[int]) -> None:
    """Write only the header of a message; the caller then writes blobs of exactly ``sizes``."""
    send_raw(fd, encode_header(header, sizes))


def send_raw(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BrokenPipeError as exc:
            raise WireError("channel closed by peer") from exc


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, need = [], n
    while need:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise WireError(f"timed out waiting for {need} more bytes")
        chunk = os.read(fd, min(need, 1 << 20))
        if not chunk:
            raise WireError("channel closed by peer")
        chunks.append(chunk)
        need -= len(chunk)
    return b"".join(chunks)


def recv(fd: int, deadline: float | None = None) -> tuple[dict, list[bytes]]:
    """Read one message from ``fd``; ``deadline`` is a ``time.monotonic()`` instant or None."""
    header, sizes = recv_header(fd, deadline)
    return header, [_read_exact(fd, n, deadline) for n in sizes]


def recv_header(fd: int, deadline: float | None = None) -> tuple[dict, list[int]]:
    """Read the header of one message and the sizes of its blobs, which stay unread on ``fd``."""
    (length,) = _LEN.unpack(_read_exact(fd, _LEN.size, deadline))
    if length > MAX_HEADER:
        raise WireError(f"header length {length} exceeds {MAX_HEADER}")
    try:
        header = json.loads(_read_exact(fd, length, deadline))
        sizes = header.pop("_blobs")
        if not all(isinstance(n, int) and n >= 0 for n in sizes):
            raise ValueError(f"bad blob sizes {sizes!r}")
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise WireError(f"malformed header: {exc}") from exc
    return header, sizes
