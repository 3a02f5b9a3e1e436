"""Incremental content decoding (gzip, deflate, br, zstd) for the usage readers, and for the one
stream filter that must rewrite a compressed body, bounded so that an upstream cannot stall the
worker.

Decoding runs on the event loop, between the chunks of every other request the worker serves,
and a compressed body can expand a thousandfold (deflate) or far more (brotli, zstd): a 10 MB gzip
body of zeros is 10 GB decoded, seconds of CPU in one ``feed``. So each decoder holds three bounds,
and past any of them raises ``DecodedSizeExceeded`` (a ``ContentDecodingError``); the usage
reader then gives up (the event gets no usage) while the body goes on to the client as it came:

- **Per chunk**: one incoming chunk is decoded into at most ``max(DECODE_FLOOR_BYTES,
  DECODE_EXPANSION * len(chunk))`` bytes, in pieces of ``DECODED_PIECE_BYTES``. The work per
  chunk is then O(chunk), like every other cost of the proxy's hot path. Real JSON and event
  streams expand 2 to 20 times; input that would give more stays compressed in the decoder (its
  backlog) and is decoded with the next chunks.
- **Backlog**: more than ``MAX_BACKLOG_BYTES`` of compressed input waiting is a body that expands
  faster than any real answer, i.e. a bomb. The end of the body (``flush``) may decode what is
  left up to ``FINISH_ALLOWANCE_BYTES``, once: a small body that legitimately expands a lot (a
  run of one character, a blank image in base64) is still read whole.
- **Per response**: at most ``max_decoded_bytes`` decoded in all (``COSTR_PROXY_MAX_DECODED_BYTES``
  unless given), which stops a bomb sent in many small chunks, each within its allowance.

zstd is decoded with the C library's own streaming call (``ZSTD_decompressStream``, through
python-zstandard's cffi binding), because python-zstandard's ``decompressobj`` has no bound on
what one call produces: an RLE block of 4 bytes holds 128 KiB, so even a few bytes of input can
mean megabytes. The C call fills an output buffer of the size asked and reports how much input
it took, which gives zstd the same bounds as zlib's ``max_length``. Its window is limited to
``ZSTD_MAX_WINDOW_BYTES`` (the 8 MB RFC 9659 requires of HTTP decoders): a frame asking for more
memory is refused, like a corrupt body.

Measured on the project's 2-core machine: inflating 64 MiB of gzip'd zeros takes 0.2-0.3 s of
CPU, about 4 ms per MiB; so a chunk of 64 KiB costs at most about 4 ms here, and a response at
most what its bound allows, spread over many turns of the loop.
"""

import zlib
from collections.abc import Iterator
from typing import Any

from django.conf import settings

try:
    import brotli
except ImportError:  # pragma: no cover - brotli is a declared dependency
    brotli = None
try:
    from zstandard.backend_cffi import ffi as _zstd_ffi
    from zstandard.backend_cffi import lib as _zstd_lib
except ImportError:  # pragma: no cover - zstandard is a declared dependency
    _zstd_ffi = _zstd_lib = None

# Decoded output is handed on in pieces of about this size (brotli may overshoot it by half), so
# a small compressed chunk that expands enormously never becomes one enormous bytes object.
DECODED_PIECE_BYTES = 64 * 1024
# What one incoming chunk may decode into: this much whatever its size (small chunks of a
# compressed event stream), or this many times its size.
DECODE_FLOOR_BYTES = 1024 * 1024
DECODE_EXPANSION = 16
# Compressed input left waiting for later chunks, past which the body is taken for a bomb.
MAX_BACKLOG_BYTES = 1024 * 1024
# What the end of the body may still decode, once per response (35-50 ms of CPU, measured on
# the 2-core machine under load): a bomb small enough to arrive whole costs this, no more.
FINISH_ALLOWANCE_BYTES = 8 * 1024 * 1024
# The largest zstd window decoded (RFC 9659: HTTP's zstd coding uses at most 8 MB), i.e. the
# most memory one zstd body can make the decoder hold.
ZSTD_MAX_WINDOW_LOG = 23
ZSTD_MAX_WINDOW_BYTES = 1 << ZSTD_MAX_WINDOW_LOG


class ContentDecodingError(Exception):
    """The body is not valid for its Content-Encoding."""


class DecodedSizeExceeded(ContentDecodingError):
    """The body decodes to more than Costr decodes for one response, or expands too fast."""


_ENCODING_ALIASES = {
    "identity": "identity",
    "gzip": "gzip",
    "x-gzip": "gzip",
    "deflate": "deflate",
    "br": "br",
    "zstd": "zstd",
}
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_GZIP_MAGIC = b"\x1f\x8b"
_DECODE_ERRORS: tuple[type[Exception], ...] = (zlib.error,) + (
    (brotli.error,) if brotli is not None else ()
)


class ContentDecoder:
    """Incremental decoder for one Content-Encoding, with output in bounded pieces.

    ``deflate`` is accepted both zlib-wrapped (what the RFC says) and raw (what some servers
    send), told apart by the zlib header. A gzip body may hold several members, as RFC 1952
    allows; any other data after the end of the compressed stream is ignored.

    ``decoded_bytes`` counts every byte the decoder has produced; ``max_decoded_bytes`` (None:
    no bound) is the most it will produce for this body, give or take one byte (brotli: one
    piece), before raising ``DecodedSizeExceeded``. The per-chunk and backlog bounds (module
    docstring) always hold.
    """

    __slots__ = (
        "_backlog",
        "_brotli",
        "_encoding",
        "_ended",
        "_head",
        "_max_decoded",
        "_members",
        "_starved",
        "_zlib",
        "_zstd",
        "decoded_bytes",
    )

    def __init__(self, encoding: str, *, max_decoded_bytes: int | None = None):
        self._encoding = encoding
        self._zlib: Any = None
        self._brotli: Any = brotli.Decompressor() if encoding == "br" else None
        self._zstd = _ZstdStream() if encoding == "zstd" else None
        self._head = b""  # the first bytes of a zlib stream, until its header can be judged
        self._members = 0
        self._ended = False
        self._backlog = b""  # compressed input not decoded yet, for want of allowance
        self._starved = False  # the last call stopped for want of allowance
        self._max_decoded = max_decoded_bytes
        self.decoded_bytes = 0

    @property
    def encoding(self) -> str:
        """The coding decoded: ``identity``, ``gzip``, ``deflate``, ``br`` or ``zstd``."""
        return self._encoding

    @property
    def backlog_bytes(self) -> int:
        """Compressed bytes received and not decoded yet."""
        return len(self._backlog)

    def decode(self, chunk: bytes) -> Iterator[bytes]:
        """Decoded bytes for this chunk (and what earlier chunks left waiting).

        Raises ContentDecodingError on a corrupt body, DecodedSizeExceeded past a bound.
        """
        if self._encoding == "identity":
            if chunk:
                yield chunk
            return
        yield from self._decode(chunk, max(DECODE_FLOOR_BYTES, DECODE_EXPANSION * len(chunk)))
        if len(self._backlog) > MAX_BACKLOG_BYTES:
            raise DecodedSizeExceeded("the body expands faster than any real answer")

    def flush(self) -> Iterator[bytes]:
        """Whatever the decoder still holds at the end of the body (a cut body is no error).

        Raises DecodedSizeExceeded when what is left is more than the end's allowance.
        """
        if self._encoding == "identity":
            return
        yield from self._decode(b"", FINISH_ALLOWANCE_BYTES)
        if self._starved:
            raise DecodedSizeExceeded("the end of the body expands faster than any real answer")
        if self._zlib is None:
            return
        try:
            rest = self._zlib.flush()
        except zlib.error:
            return
        if rest:
            self._count(len(rest))
            yield rest

    def _decode(self, chunk: bytes, allowance: int) -> Iterator[bytes]:
        data = self._backlog + chunk if self._backlog else chunk
        self._backlog = b""
        self._starved = False
        try:
            if self._brotli is not None:
                yield from self._unbrotli(data, allowance)
            elif self._zstd is not None:
                yield from self._unzstd(data, allowance)
            else:
                yield from self._inflate(data, allowance)
        except _DECODE_ERRORS as error:
            raise ContentDecodingError(str(error)) from error

    def _limit(self, allowance: int) -> int:
        """The most the next decompression call may produce: a piece, within the allowance,
        and no more than one byte past the response's bound (which proves it exceeded)."""
        limit = min(DECODED_PIECE_BYTES, allowance)
        if self._max_decoded is not None:
            limit = min(limit, self._max_decoded - self.decoded_bytes + 1)
        return limit

    def _count(self, size: int) -> None:
        self.decoded_bytes += size
        if self._max_decoded is not None and self.decoded_bytes > self._max_decoded:
            raise DecodedSizeExceeded(f"the body decodes to over {self._max_decoded} bytes")

    def _inflate(self, data: bytes, allowance: int) -> Iterator[bytes]:
        while True:
            if self._zlib is None:
                if self._ended:
                    return
                self._head += data
                if len(self._head) < 2:
                    return
                data, self._head = self._head, b""
                if self._encoding == "deflate":
                    wbits = _deflate_wbits(data)
                elif self._members and not data.startswith(_GZIP_MAGIC):
                    self._ended = True
                    return
                else:
                    wbits = _GZIP_WBITS
                self._zlib = zlib.decompressobj(wbits)
                self._members += 1
            if allowance <= 0:
                self._backlog, self._starved = data, True
                return
            limit = self._limit(allowance)
            output = self._zlib.decompress(data, limit)
            if output:
                allowance -= len(output)
                self._count(len(output))
                yield output
            if self._zlib.eof:
                data = self._zlib.unused_data
                self._zlib = None
                self._ended = self._encoding == "deflate"
                continue
            data = self._zlib.unconsumed_tail
            if not data and len(output) < limit:
                return

    def _unbrotli(self, data: bytes, allowance: int) -> Iterator[bytes]:
        decompressor = self._brotli
        while not decompressor.is_finished():
            if allowance <= 0:
                self._backlog, self._starved = data, True
                return
            # After a full piece, brotli takes only empty input until it has given all it holds.
            given = b""
            if data and decompressor.can_accept_more_data():
                given, data = data, b""
            limit = self._limit(allowance)
            output = decompressor.process(given, output_buffer_limit=limit)
            if output:
                allowance -= len(output)
                self._count(len(output))
                yield output
            if len(output) < limit and not data:
                return
            if not output and not given:
                return  # nothing held and nothing accepted: wait for more input

    def _unzstd(self, data: bytes, allowance: int) -> Iterator[bytes]:
        stream = self._zstd
        offset = 0
        while True:
            if allowance <= 0:
                self._backlog, self._starved = data[offset:], True
                return
            limit = self._limit(allowance)
            output, taken = stream.decompress(data, offset, limit)
            offset += taken
            if output:
                allowance -= len(output)
                self._count(len(output))
                yield output
            # A buffer not filled means the decoder holds nothing more for the input it took.
            if len(output) < limit and offset == len(data):
                return
            if not output and not taken:
                raise ContentDecodingError("the zstd decoder made no progress")


class _ZstdStream:
    """One zstd decoding context: ``decompress`` gives at most ``limit`` bytes per call and says
    how much input it took (the rest is the caller's to give again). Concatenated frames are
    decoded in turn, as RFC 8878 allows."""

    __slots__ = ("_context", "_output", "_taken", "_written")

    def __init__(self) -> None:
        context = _zstd_lib.ZSTD_createDCtx()
        if context == _zstd_ffi.NULL:  # pragma: no cover - out of memory
            raise MemoryError("cannot create a zstd context")
        self._context = _zstd_ffi.gc(context, _zstd_lib.ZSTD_freeDCtx)
        self._check(
            _zstd_lib.ZSTD_DCtx_setParameter(
                self._context, _zstd_lib.ZSTD_d_windowLogMax, ZSTD_MAX_WINDOW_LOG
            )
        )
        self._output = _zstd_ffi.new("char[]", DECODED_PIECE_BYTES)
        self._written = _zstd_ffi.new("size_t *")
        self._taken = _zstd_ffi.new("size_t *")

    def decompress(self, data: bytes, offset: int, limit: int) -> tuple[bytes, int]:
        """Decoded bytes (at most ``limit``, at most a piece) of ``data[offset:]``, and how many
        of its bytes were taken."""
        self._written[0] = 0
        self._taken[0] = offset
        self._check(
            _zstd_lib.ZSTD_decompressStream_simpleArgs(
                self._context,
                self._output,
                min(limit, DECODED_PIECE_BYTES),
                self._written,
                _zstd_ffi.from_buffer(data),
                len(data),
                self._taken,
            )
        )
        return _zstd_ffi.buffer(self._output, self._written[0])[:], self._taken[0] - offset

    @staticmethod
    def _check(result: int) -> None:
        if _zstd_lib.ZSTD_isError(result):
            name = _zstd_ffi.string(_zstd_lib.ZSTD_getErrorName(result)).decode("latin-1")
            raise ContentDecodingError(f"zstd: {name}")


def _deflate_wbits(head: bytes) -> int:
    """zlib-wrapped when the first two bytes form a valid zlib header, else raw deflate."""
    cmf, flg = head[0], head[1]
    is_zlib = cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf * 256 + flg) % 31 == 0
    return zlib.MAX_WBITS if is_zlib else -zlib.MAX_WBITS


def content_decoder(
    content_encoding: str | None, *, max_decoded_bytes: int | None = None
) -> ContentDecoder | None:
    """A decoder for a response's Content-Encoding, or None when Costr cannot decode it.

    Unknown codings (compress, …) and stacked codings (``gzip, br``) answer None: the usage of
    such a response is recorded as unknown. The decoder stops at
    ``max_decoded_bytes``, by default ``COSTR_PROXY_MAX_DECODED_BYTES``.
    """
    codings = [
        coding.strip().lower() for coding in (content_encoding or "").split(",") if coding.strip()
    ]
    codings = [coding for coding in codings if coding != "identity"]
    if not codings:
        return ContentDecoder("identity")
    if len(codings) > 1:
        return None
    encoding = _ENCODING_ALIASES.get(codings[0])
    if encoding is None or (encoding == "br" and brotli is None):
        return None
    if encoding == "zstd" and _zstd_lib is None:  # pragma: no cover - a declared dependency
        return None
    if max_decoded_bytes is None:
        max_decoded_bytes = settings.COSTR_PROXY_MAX_DECODED_BYTES
    return ContentDecoder(encoding, max_decoded_bytes=max_decoded_bytes)


def decodable_accept_encoding(value: bytes | None) -> bytes:
    """An ``Accept-Encoding`` value that admits only codings ``content_decoder`` reads.

    For a request whose response Costr must decode to rewrite (the OpenAI usage chunk it asked
    for): the codings the client listed that Costr can decode, each with its own weight, in the
    client's order; ``*`` and anything else dropped. ``identity`` when none is left, or when the
    client sent none: an upstream then answers uncompressed, which every client accepts.
    """
    kept = []
    for item in (value or b"").split(b","):
        coding = item.partition(b";")[0].strip().lower()
        if coding != b"identity" and coding.decode("latin-1") in _ENCODING_ALIASES:
            kept.append(item.strip())
    return b", ".join(kept) if kept else b"identity"
