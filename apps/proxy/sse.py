"""Incremental Server-Sent Events splitting for response bodies passing through the proxy.

Bytes arrive in arbitrary chunks (an event, a line, even a CRLF pair may be cut anywhere), so the
splitter keeps only the incomplete trailing line and the fields of the event being built, and
hands back each event as soon as its terminating blank line has arrived. Framing follows the
WHATWG event-stream rules: lines end in LF, CRLF or a lone CR; lines starting with ``:`` are
comments; ``field:value`` drops one leading space from the value; several ``data`` lines join
with ``\\n``; a blank line dispatches the event.

Memory is bounded. An event that grows past ``max_event_bytes`` is not kept whole: it is
delivered at its blank line with ``truncated=True`` and ``data`` holding only the last
``tail_bytes`` of its data. Usage readers recover the usage object from such a tail (Gemini image
chunks and Responses API ``response.completed`` events can run to megabytes, with usage near the
end); every other consumer ignores truncated events. Either way the splitter resynchronises at the
next blank line instead of growing without limit.
"""

import re
from dataclasses import dataclass

MAX_EVENT_BYTES = 1024 * 1024
TAIL_BYTES = 64 * 1024

_LINE_END = re.compile(rb"[\r\n]")
_CR = 0x0D
_LF = 0x0A
_COLON = 0x3A


@dataclass(slots=True, frozen=True)
class Event:
    """One dispatched event: its ``event:`` name (None when absent) and its joined data."""

    event: str | None
    data: bytes
    truncated: bool = False


class SSESplitter:
    """Turns a byte stream into events, one ``feed`` call per chunk, in O(chunk) time."""

    __slots__ = (
        "_data_lines",
        "_data_size",
        "_event_name",
        "_has_data",
        "_line",
        "_line_field",
        "_max",
        "_skip_lf",
        "_tail",
        "_tail_bytes",
    )

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES, tail_bytes: int = TAIL_BYTES):
        self._max = max_event_bytes
        self._tail_bytes = tail_bytes
        self._line = bytearray()
        # Set once the current line outgrew the limit: the field name read from its intact head.
        self._line_field: bytes | None = None
        self._skip_lf = False
        self._event_name: str | None = None
        self._data_lines: list[bytes] = []
        self._data_size = 0
        self._has_data = False
        # Set once the current event outgrew the limit: the last tail_bytes of its data.
        self._tail: bytearray | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """Events completed by this chunk, in order."""
        event = self._whole_event(chunk)
        if event is not None:
            return [event]
        return [event for event, _ in self.feed_with_offsets(chunk) if event is not None]

    def feed_with_offsets(self, chunk: bytes) -> list[tuple[Event | None, int]]:
        """One ``(event, end)`` per blank line in this chunk.

        ``end`` is the offset in ``chunk`` just past the blank line's terminator (past its CR
        when the LF of a CRLF has not arrived yet); ``event`` is None when the blank line
        dispatched nothing (only comments or nothing at all before it). Byte-level filters use
        the offsets to cut the raw stream at event boundaries.
        """
        event = self._whole_event(chunk)
        if event is not None:
            return [(event, len(chunk))]
        boundaries: list[tuple[Event | None, int]] = []
        start = 0
        for match in _LINE_END.finditer(chunk):
            end = match.start()
            if self._skip_lf and end == start and chunk[end] == _LF:
                # The LF of a CRLF whose CR ended the previous line.
                self._skip_lf = False
                start = end + 1
                continue
            self._skip_lf = chunk[end] == _CR
            if self._line or self._line_field is not None or end - start > self._max:
                self._append_to_line(chunk, start, end)
                line = None
            else:
                line = chunk[start:end]  # the common case: a whole line inside this chunk
            start = end + 1
            if self._end_line(line):
                boundaries.append((self._dispatch(), start))
        if start < len(chunk):
            self._skip_lf = False
            self._append_to_line(chunk, start, len(chunk))
        return boundaries

    def _whole_event(self, chunk: bytes) -> Event | None:
        """The event when ``chunk`` is exactly one ``data:`` line and its blank line, LF-framed,
        with nothing pending before it -- how most providers send most chunks -- else None.

        The same event the general path would build, found with a few scans in C instead of a
        pass through the line machinery (bench/notes.md: CPU per forwarded chunk).
        """
        if (
            self._line
            or self._has_data
            or self._skip_lf
            or self._event_name is not None
            or self._line_field is not None
        ):
            return None
        size = len(chunk)
        if (
            size > self._max
            or not chunk.startswith(b"data:")
            or chunk.find(b"\n") != size - 2
            or not chunk.endswith(b"\n\n")
            or b"\r" in chunk
        ):
            return None
        start = 6 if chunk[5:6] == b" " else 5
        return Event(None, chunk[start : size - 2])

    def finish(self) -> list[Event]:
        """Events left at the end of the stream, even without their final blank line.

        The event-stream rules discard an unterminated last event; usage readers still want it
        when its data is complete, so it is dispatched here and left to the JSON parser to judge.
        """
        events: list[Event] = []
        if self._line or self._line_field is not None:
            self._end_line(None)  # a non-blank line: it never dispatches by itself
        event = self._dispatch()
        if event is not None:
            events.append(event)
        return events

    def _append_to_line(self, chunk: bytes, start: int, end: int) -> None:
        if end <= start:
            return
        self._line += memoryview(chunk)[start:end]
        if self._line_field is None and len(self._line) > self._max:
            field, _, value = bytes(self._line).partition(b":")
            self._line_field = field
            self._line = bytearray()
            if field == b"data":
                self._start_tail()
                self._line += _strip_one_space(value)
        if self._line_field is not None:
            keep = self._tail_bytes if self._line_field == b"data" else 0
            if len(self._line) > keep:
                del self._line[: len(self._line) - keep]

    def _end_line(self, line: bytes | None) -> bool:
        """Take one complete line (None: the buffered one); True when it was blank."""
        if line is None:
            line = bytes(self._line)
            self._line.clear()
            line_field, self._line_field = self._line_field, None
            if line_field is not None:  # a line that outgrew the limit, already cut to its tail
                if line_field == b"data":
                    self._add_data(line)
                return False
        if not line:
            return True
        if line[0] == _COLON:
            return False
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._add_data(value)
        elif field == b"event":
            self._event_name = value.decode("utf-8", "replace")
        return False

    def _add_data(self, value: bytes) -> None:
        if self._tail is None:
            self._data_lines.append(value)
            self._data_size += len(value) + 1
            self._has_data = True
            if self._data_size > self._max:
                self._start_tail()
            return
        if self._has_data:
            self._tail += b"\n"
        self._has_data = True
        self._tail += value
        if len(self._tail) > self._tail_bytes:
            del self._tail[: len(self._tail) - self._tail_bytes]

    def _start_tail(self) -> None:
        """Switch the current event to keeping only the end of its data."""
        if self._tail is not None:
            return
        joined = b"\n".join(self._data_lines)
        self._tail = bytearray(joined[max(0, len(joined) - self._tail_bytes) :])
        self._data_lines = []
        self._data_size = 0

    def _dispatch(self) -> Event | None:
        name, lines, tail, has_data = (
            self._event_name,
            self._data_lines,
            self._tail,
            self._has_data,
        )
        self._event_name = None
        self._data_lines = []
        self._data_size = 0
        self._has_data = False
        self._tail = None
        if tail is not None:
            return Event(name, bytes(tail), truncated=True)
        if not has_data:
            return None
        return Event(name, b"\n".join(lines))


def _strip_one_space(value: bytes) -> bytes:
    return value[1:] if value[:1] == b" " else value
