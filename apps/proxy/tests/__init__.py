"""Helpers shared by the proxy's pure tests: ways to cut a body into chunks, and to encode it."""

import gzip
import zlib

import brotli
import zstandard


def whole(body: bytes) -> list[list[bytes]]:
    return [[body]]


def byte_by_byte(body: bytes) -> list[list[bytes]]:
    return [[body[i : i + 1] for i in range(len(body))]]


def every_split(body: bytes) -> list[list[bytes]]:
    """The body cut into two chunks at every possible position (empty halves included)."""
    return [[body[:i], body[i:]] for i in range(len(body) + 1)]


def in_chunks(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def encode(body: bytes, encoding: str) -> bytes:
    """The body as an upstream would send it under a Content-Encoding."""
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":  # zlib-wrapped, as RFC 9110 defines it
        return zlib.compress(body)
    if encoding == "raw-deflate":  # what some servers send as "deflate"
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return compressor.compress(body) + compressor.flush()
    if encoding == "br":
        return brotli.compress(body)
    if encoding == "zstd":  # one frame, its content size unknown, as a streaming server sends it
        compressor = zstandard.ZstdCompressor().compressobj()
        return compressor.compress(body) + compressor.flush()
    raise ValueError(encoding)


def read(reader, chunks: list[bytes]):
    """Feed every chunk to a usage reader and return its result."""
    for chunk in chunks:
        reader.feed(chunk)
    return reader.finish()


def sse(*events: str, newline: str = "\n") -> bytes:
    """An event stream from event blocks written with ``\\n``, framed with ``newline``."""
    return "".join(event.replace("\n", newline) + newline * 2 for event in events).encode()
