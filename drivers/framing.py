"""The stream half of a sans-IO codec: bytes in, typed items out, garbage runs collapsed.

A codec's ``decode(buf) -> (item | None, used)`` says "need more bytes" with ``used == 0`` and
skips filler with ``(None, used)``. :class:`StreamDecoder` keeps the partial frame between
reads and reports a run of garbage once (one resynchronisation), however the bytes were split
into reads, so a ``garbage`` counter counts resyncs, not read boundaries. Pure: no IO, no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class StreamDecoder(Generic[T]):
    def __init__(
        self,
        decode: Callable[[bytes], tuple[T | None, int]],
        is_garbage: Callable[[T], bool],
    ) -> None:
        self._decode = decode
        self._is_garbage = is_garbage
        self._buf = b""
        self._in_garbage = False

    def feed(self, data: bytes) -> list[T]:
        buf = self._buf + data
        out: list[T] = []
        while buf:
            item, used = self._decode(buf)
            if used == 0:
                break
            buf = buf[used:]
            if item is None:
                continue
            garbage = self._is_garbage(item)
            if not (garbage and self._in_garbage):
                out.append(item)
            self._in_garbage = garbage
        self._buf = buf
        return out

    def clear(self) -> None:
        self._buf = b""
        self._in_garbage = False
