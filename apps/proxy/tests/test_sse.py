"""The incremental SSE splitter: framing, chunk boundaries anywhere, and bounded memory."""

import pytest

from apps.proxy.sse import Event, SSESplitter
from apps.proxy.tests import byte_by_byte, every_split, in_chunks, whole

STREAM = (
    b"event: message_start\n"
    b'data: {"a": 1}\n'
    b"\n"
    b": ping\n"
    b"\n"
    b"data:no-space\n"
    b"data:  two spaces keep one\n"
    b"\n"
    b"id: 7\n"
    b"retry: 100\n"
    b"data\n"
    b"\n"
    b"event: done\n"
    b"data: [DONE]\n"
    b"\n"
)
EXPECTED = [
    Event("message_start", b'{"a": 1}'),
    Event(None, b"no-space\n two spaces keep one"),
    Event(None, b""),
    Event("done", b"[DONE]"),
]


def split_all(chunks: list[bytes], splitter: SSESplitter | None = None) -> list[Event]:
    splitter = splitter or SSESplitter()
    events = []
    for chunk in chunks:
        events += splitter.feed(chunk)
    return events + splitter.finish()


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize("cut", [whole, byte_by_byte, every_split])
def test_events_are_the_same_however_framed_and_cut(newline, cut):
    body = STREAM.replace(b"\n", newline)
    for chunks in cut(body):
        assert split_all(chunks) == EXPECTED


def test_crlf_cut_between_cr_and_lf_makes_no_extra_blank_line():
    splitter = SSESplitter()
    assert splitter.feed(b"data: a\r") == []
    assert splitter.feed(b"\n\r") == [Event(None, b"a")]
    # This LF completes the blank line's CRLF: it must not end a further (empty) line.
    assert splitter.feed(b"\ndata: b\r\n") == []
    assert splitter.feed(b"\r\n") == [Event(None, b"b")]


def test_mixed_line_endings_in_one_stream():
    body = b"data: 1\r\ndata: 2\rdata: 3\n\r\n"
    assert split_all(byte_by_byte(body)[0]) == [Event(None, b"1\n2\n3")]


def test_comments_and_blank_lines_alone_dispatch_nothing():
    assert split_all([b": ping\n\n\n\n:\n\r\n"]) == []


def test_event_name_without_data_is_not_dispatched_and_does_not_leak():
    assert split_all([b"event: ping\n\ndata: x\n\n"]) == [Event(None, b"x")]


def test_unterminated_last_event_is_given_at_finish():
    splitter = SSESplitter()
    assert splitter.feed(b'data: {"usage": 1}') == []
    assert splitter.finish() == [Event(None, b'{"usage": 1}')]


def test_offsets_point_past_each_blank_line():
    chunk = b"data: a\n\n: c\n\ndata: b\r\n\r\ndata: rest"
    boundaries = SSESplitter().feed_with_offsets(chunk)
    assert boundaries == [
        (Event(None, b"a"), len(b"data: a\n\n")),
        (None, len(b"data: a\n\n: c\n\n")),
        (Event(None, b"b"), len(b"data: a\n\n: c\n\ndata: b\r\n\r")),
    ]


def test_oversized_event_is_truncated_to_its_tail_and_the_stream_resyncs():
    splitter = SSESplitter(max_event_bytes=1000, tail_bytes=50)
    big = b"x" * 5000 + b'"usage": {"n": 1}}'
    body = b"data: small\n\ndata: " + big + b"\n\ndata: after\n\n"
    for chunks in (whole(body)[0], in_chunks(body, 7)):
        events = split_all(chunks, SSESplitter(max_event_bytes=1000, tail_bytes=50))
        assert events == [
            Event(None, b"small"),
            Event(None, big[-50:], truncated=True),
            Event(None, b"after"),
        ]
    assert splitter.feed(body[:20]) == [Event(None, b"small")]


def test_oversized_event_of_many_data_lines_keeps_the_tail_of_the_joined_data():
    lines = [b"line-%03d" % number for number in range(200)]
    body = b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"
    events = split_all([body], SSESplitter(max_event_bytes=300, tail_bytes=20))
    assert events == [Event(None, b"\n".join(lines)[-20:], truncated=True)]


def test_oversized_comment_line_is_dropped_without_truncating_the_event():
    body = b"data: keep\n:" + b"c" * 5000 + b"\ndata: me\n\n"
    events = split_all(in_chunks(body, 100), SSESplitter(max_event_bytes=1000, tail_bytes=10))
    assert events == [Event(None, b"keep\nme")]


def test_memory_stays_bounded_while_a_huge_event_streams_through():
    splitter = SSESplitter(max_event_bytes=64 * 1024, tail_bytes=1024)
    splitter.feed(b"data: ")
    for _ in range(200):  # 200 x 32 KiB = 6.4 MiB in a single data line
        assert splitter.feed(b"y" * 32 * 1024) == []
        held = len(splitter._line) + len(splitter._tail or b"")
        assert held <= 64 * 1024 + 32 * 1024
    (event,) = splitter.feed(b"\n\n")
    assert event.truncated
    assert event.data == b"y" * 1024


def test_invalid_utf8_in_event_name_does_not_raise():
    assert split_all([b"event: \xff\xfe\ndata: 1\n\n"]) == [Event("\ufffd\ufffd", b"1")]


# One single-line ``data:`` event per chunk is the common case and takes a shorter path; each
# case below must come out as the line-by-line path gives it (fed byte by byte, it never can).
ONE_EVENT_CHUNKS = [
    (b'data: {"a":1}\n\n', Event(None, b'{"a":1}')),
    (b"data:no-space\n\n", Event(None, b"no-space")),
    (b"data:  two\n\n", Event(None, b" two")),
    (b"data:\n\n", Event(None, b"")),
    (b"data: \n\n", Event(None, b"")),
    (b"data: [DONE]\n\n", Event(None, b"[DONE]")),
]


@pytest.mark.parametrize(("chunk", "expected"), ONE_EVENT_CHUNKS)
def test_a_chunk_holding_one_whole_data_event_gives_that_event(chunk, expected):
    assert SSESplitter().feed(chunk) == [expected]
    assert SSESplitter().feed_with_offsets(chunk) == [(expected, len(chunk))]
    assert split_all(byte_by_byte(chunk)[0]) == [expected]


@pytest.mark.parametrize(
    ("before", "chunk", "expected"),
    [
        # Pending state from earlier chunks belongs to the event the chunk completes.
        (b"event: delta\n", b"data: x\n\n", [Event("delta", b"x")]),
        (b"data: first\n", b"data: second\n\n", [Event(None, b"first\nsecond")]),
        (b"da", b"ta: x\n\n", [Event(None, b"x")]),
        (b"data: a\r", b"\ndata: b\n\n", [Event(None, b"a\nb")]),
        (b"data: a\r\n\r", b"\ndata: b\n\n", [Event(None, b"a"), Event(None, b"b")]),
        (b"", b"data: a\r\n\n", [Event(None, b"a")]),
        (b"", b"data: a\ndata: b\n\n", [Event(None, b"a\nb")]),
        (b"", b"event: e\ndata: a\n\n", [Event("e", b"a")]),
    ],
)
def test_one_event_chunks_after_pending_bytes_are_split_in_full(before, chunk, expected):
    splitter = SSESplitter()
    events = splitter.feed(before)
    assert events + splitter.feed(chunk) + splitter.finish() == expected
    assert split_all(byte_by_byte(before + chunk)[0]) == expected


def test_a_one_line_event_over_the_size_limit_is_still_truncated():
    chunk = b"data: " + b"x" * 100 + b"\n\n"
    [event] = SSESplitter(max_event_bytes=50, tail_bytes=10).feed(chunk)
    assert event == Event(None, b"x" * 10, truncated=True)
