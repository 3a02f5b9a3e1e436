"""The Redis stream between web processes and ``run_usage_writer``, and how entries look on it.

One stream entry carries one batch, as handed over by one web process's sink thread: fields
``kind`` ("events": usage records; "refusals": refusal counts), ``v`` (format version) and
``data``. Batching per entry keeps the web process at one XADD per batch instead of one per
record. Format 2 (written): ``data`` is a JSON list of ``[keys, rows]`` groups, one per run of
consecutive items with the same keys; each row holds one item's values in the order of ``keys``,
so ``[[["request_id","status"],[["req_a",200],["req_b",200]]]]`` carries two records. The sink
thread encodes every record of the proxy, and spelling each record's 25 field names again was
half of that work (issue #5: the sink must cost the proxy under 5 %). Format 1 (``data`` a JSON
list of objects) is still read: spool files and stream entries written before the change. An
upgrade restarts ``run_usage_writer`` before the web processes: a writer that knows only format 1
would set format 2 entries aside in the dead-letter stream.

Nothing is ever trimmed by length: an ``XADD … MAXLEN ~`` bound would drop entries the writer has
not stored yet whenever it lags (database down, writer stopped), which is exactly when they
matter. The writer's consumer group decides instead: the writer deletes an entry (XDEL) in the
same MULTI as its XACK, after the database transaction committed, so the stream holds only
entries not yet stored and its length is the writer's backlog. Redis must therefore keep it:
``maxmemory-policy noeviction`` (an evicting Redis could drop the whole stream) and AOF if a Redis
restart must not lose the backlog; when Redis refuses writes (OOM), the sink spools instead.
The stream belongs to the writer's group: a second consumer group would lose entries to the XDEL.
Needs Redis 6.2 or later (XAUTOCLAIM).
"""

import json
import logging
import math
import time

import orjson
import redis
import redis.asyncio

from apps.usage.metering.contract import clean_text
from apps.usage.metering.spool import Spool, replay_directory

logger = logging.getLogger("costr.usage.stream")

# An item as pack() leaves it: its keys, and its values encoded as a JSON array.
Packed = tuple[tuple[str, ...], bytes]

FORMAT_VERSION = "2"
# Still read: entries and spool lines written by earlier web processes.
LEGACY_FORMAT_VERSION = "1"
KIND_EVENTS = "events"
KIND_REFUSALS = "refusals"
GROUP = "usage-writers"
# Retry a Redis that did not answer at most this often; between probes batches go straight to
# the spool, so a Redis that times out costs one timeout per probe, not one per batch.
PROBE_SECONDS = 1.0
# How often a process looks for spool files left behind by dead processes on its host.
ORPHAN_SCAN_SECONDS = 60.0
# The sink's own Redis calls: a Redis that accepts connections and never answers (paused, swapping)
# holds the sink thread this long per try, while records wait in memory; past it they spool.
SINK_SOCKET_TIMEOUT = 2.0
# A probe of a Redis found down answers at once when it is back; a short wait bounds what a
# paused Redis costs per probe.
PROBE_TIMEOUT = 0.5


def dead_letter_stream(stream: str) -> str:
    return f"{stream}:dead-letter"


def client_for(url: str, *, socket_timeout: float = 5.0, asynchronous: bool = False):
    """A client that gives up quickly: a Redis that does not answer must cost the sink a second,
    not a TCP timeout of minutes. ``asynchronous``: a ``redis.asyncio`` client, for one loop."""
    return (redis.asyncio.Redis if asynchronous else redis.Redis).from_url(
        url, socket_connect_timeout=1.0, socket_timeout=socket_timeout, health_check_interval=30
    )


class AsyncStream:
    """Appends entries to the stream from an event loop (the sink's per-loop batches), on a
    connection of that loop's own. Raises on any failure: the caller hands the batch to the sink
    thread, which spools it."""

    def __init__(self, url: str, stream: str) -> None:
        self.key = (url, stream)
        self.stream = stream
        self.client = client_for(url, asynchronous=True)

    async def append(self, entry: dict[str, str]) -> None:
        await self.client.xadd(self.stream, entry)


def pack(item: dict) -> Packed:
    """One item as its keys and its values already encoded: a JSON array, in the order of the
    keys. The sink packs each record on the proxy's thread as it is handed over, so the record
    dict is freed at once instead of waiting out the batch's linger; measured with
    ``bench.sink_cost``, that costs the proxy less than keeping the dicts and encoding the batch
    in the sink thread (docs/benchmarks.md).

    Whatever the caller passed, what comes out can be read back and stored: a string orjson
    cannot encode (a lone surrogate) or a NUL (PostgreSQL refuses it) sends the item through
    ``_pack_cleaned``. Both are found by what the fast path already does (its error, one scan of
    its bytes), so a clean record, the proxy's every record, costs nothing more.

    The values are copied into bytes of their own size: orjson (3.13) returns its result in the
    buffer it wrote into, at least 4 KiB whatever the length, and a record may wait in the
    sink's queue (up to ``COSTR_USAGE_QUEUE_MAX_RECORDS``) or a batch for a while: 10,000
    records of 90 bytes held 41 MB, copied 0.8 MB (the copy: 0.05 µs a record)."""
    keys = tuple(item)
    try:
        # default=str: a record is JSON-able by contract; a stray datetime or Decimal must not
        # cost the batch.
        values = orjson.dumps(tuple(item.values()), default=str)
    except TypeError:
        return keys, _pack_cleaned(item)
    if b"\\u0000" in values:
        return keys, _pack_cleaned(item)
    return keys, b"%b" % values  # the right-sized copy (the shortest way to one, measured)


def _pack_cleaned(item: dict) -> bytes:
    values = clean_value(list(item.values()))
    try:
        return b"%b" % orjson.dumps(values, default=_clean_str)
    except TypeError:
        # What orjson refuses and the standard encoder takes: integers beyond 64 bits, keys
        # that are not strings, in a provider's raw usage. (Read back, such an integer becomes
        # a float; no token count comes near.)
        return json.dumps(values, separators=(",", ":"), default=_clean_str).encode()


def clean_value(value):
    """``value`` with every string in it, dictionary keys included, valid UTF-8 without NUL
    (``contract.clean_text``, nothing cut: limits are the writer's) and every float finite
    (orjson reads no NaN): what any encoder can write and orjson can read back."""
    if isinstance(value, str):
        return clean_text(value, len(value))
    if isinstance(value, dict):
        return {clean_value(key): clean_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean_value(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def is_clean(value) -> bool:
    """Whether ``clean_value`` would hand ``value`` back unchanged: a walk that builds nothing,
    for the writer to clean only what needs it."""
    if isinstance(value, str):
        if value.isascii():
            return "\x00" not in value
        return clean_text(value, len(value)) == value
    if isinstance(value, dict):
        return all(is_clean(key) and is_clean(item) for key, item in value.items())
    if isinstance(value, list):
        return all(is_clean(item) for item in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return not isinstance(value, tuple)  # a tuple comes out a list


def _clean_str(value) -> str:
    return clean_value(str(value))


def unpack(packed: Packed) -> dict:
    """The item ``pack`` packed. What comes out is clean (``clean_value`` would change
    nothing): orjson reads no lone surrogate and no NaN, and a NUL, which ``pack`` never
    writes, is cleaned if the bytes came from elsewhere."""
    keys, values = packed
    items = orjson.loads(values)
    if b"\\u0000" in values:
        items = clean_value(items)
    return dict(zip(keys, items, strict=True))


def encode(kind: str, items: list[dict]) -> dict[str, str]:
    """A stream entry of ``items`` (format 2: field names once per group of same-shaped items)."""
    return encode_packed(kind, [pack(item) for item in items])


def encode_packed(kind: str, packed: list[Packed]) -> dict[str, str]:
    """A stream entry of packed items: their encoded values joined, no item encoded again."""
    # A group per run of items with the same keys, so the order of the items is kept. Every record
    # of the proxy has the same fields in the same order: one group in practice.
    groups: list[bytes] = []
    keys = rows = None
    for item_keys, values in packed:
        if item_keys != keys:
            if rows is not None:
                groups.append(_group(keys, rows))
            keys, rows = item_keys, []
        rows.append(values)
    if rows is not None:
        groups.append(_group(keys, rows))
    data = b"[" + b",".join(groups) + b"]"
    return {"kind": kind, "v": FORMAT_VERSION, "data": data.decode()}


def _group(keys: tuple, rows: list[bytes]) -> bytes:
    try:
        names = orjson.dumps(keys)
    except TypeError:  # a caller's odd key (not a string, a lone surrogate): cleaned, not fatal
        names = orjson.dumps([clean_value(str(key)) for key in keys])
    return b"[" + names + b",[" + b",".join(rows) + b"]]"


def decode(fields: dict) -> tuple[str, list[dict]]:
    """(kind, items) of a stream entry; ValueError for anything this version cannot read, an
    item included (the writer reads with ``decode_entry``, which sets such an item aside alone)."""
    kind, items, rejected = decode_entry(fields)
    if rejected:
        raise ValueError(rejected[0][1])
    return kind, items


def decode_entry(fields: dict) -> tuple[str, list[dict], list[tuple[object, str]]]:
    """(kind, items, rejected) of a stream entry or spool line: every item that can be read
    (its strings clean, as ``clean_value`` makes them), and each one that cannot, alone, with
    the reason. ValueError only for an entry that cannot be read
    at all (not JSON, unknown kind or version).

    One web process's batch carries many organizations' records, so a hostile string in one of
    them must not cost the others: a data field orjson refuses (a lone surrogate escape, written
    by a sink before strings were cleaned; bytes that are not UTF-8) is read again by the
    standard decoder, which takes it, and its strings are cleaned."""
    fields = {_text(k): _text(v) for k, v in fields.items()}
    kind = fields.get("kind")
    if kind not in (KIND_EVENTS, KIND_REFUSALS):
        raise ValueError(f"unknown entry kind {kind!r}")
    version = fields.get("v")
    if version not in (FORMAT_VERSION, LEGACY_FORMAT_VERSION):
        raise ValueError(f"unknown entry version {version!r}")
    data = fields.get("data", "")
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        parsed = clean_value(json.loads(data))  # ValueError if it is not JSON at all
    else:
        # orjson reads no lone surrogate and no NaN, so a NUL is all that may need cleaning,
        # and it can only come from a \u0000 escape: the items come out clean either way.
        if "\\u0000" in data:
            parsed = clean_value(parsed)
    if version == FORMAT_VERSION:
        return kind, *_items_of_groups(parsed)
    if not isinstance(parsed, list):
        raise ValueError("entry data is not a list of objects")
    items = [item for item in parsed if isinstance(item, dict)]
    rejected = [
        (item, "entry item is not an object") for item in parsed if not isinstance(item, dict)
    ]
    return kind, items, rejected


def _items_of_groups(groups) -> tuple[list[dict], list[tuple[object, str]]]:
    if not isinstance(groups, list):
        raise ValueError("entry data is not a list of groups")
    items, rejected = [], []
    for group in groups:
        if not (isinstance(group, list) and len(group) == 2):
            rejected.append((group, "entry group is not [keys, rows]"))
            continue
        keys, rows = group
        if not (isinstance(keys, list) and all(isinstance(key, str) for key in keys)):
            rejected.append((group, "entry group keys are not a list of names"))
            continue
        if not isinstance(rows, list):
            rejected.append((group, "entry group rows are not a list"))
            continue
        for row in rows:
            if isinstance(row, list) and len(row) == len(keys):
                items.append(dict(zip(keys, row, strict=True)))
            else:
                rejected.append(({"keys": keys, "row": row}, "entry row does not match its keys"))
    return items, rejected


def append(client: redis.Redis, stream: str, entries: list[dict[str, str]]) -> None:
    """XADD the entries in one round trip; raises redis.RedisError if any was not added."""
    pipe = client.pipeline(transaction=False)
    for entry in entries:
        pipe.xadd(stream, entry)
    # raise_on_error: an OOM refusal of one XADD must not pass for success.
    pipe.execute(raise_on_error=True)


class StreamProducer:
    """Appends entries to the stream, or to the spool while Redis does not answer, and replays the
    spool once it does. Used from one thread only (the sink's); never raises redis errors."""

    def __init__(self, *, url: str, stream: str, spool_dir: str, segment_bytes: int) -> None:
        self.url = url
        self.stream = stream
        self.spool_dir = spool_dir
        self.client = client_for(url, socket_timeout=SINK_SOCKET_TIMEOUT)
        self.probe_client = client_for(url, socket_timeout=PROBE_TIMEOUT)
        self.spool = Spool(spool_dir, segment_bytes=segment_bytes)
        self._next_probe = 0.0
        self._next_orphan_scan = 0.0
        self._down = False

    def send(self, entries: list[dict[str, str]]) -> None:
        now = time.monotonic()
        if self._down and now < self._next_probe:
            self._spool(entries)
            return
        try:
            if self._down:
                self.probe_client.ping()  # a cheap probe before any spool file is read
            if self.spool.pending or now >= self._next_orphan_scan:
                self._next_orphan_scan = now + ORPHAN_SCAN_SECONDS
                self.spool.replay(self._append)
            if entries:
                self._append(entries)
        except redis.RedisError as error:
            if not self._down:
                logger.warning(
                    "Redis at the usage stream does not answer (%s): spooling usage to %s",
                    type(error).__name__,
                    self.spool_dir,
                )
            self._down = True
            # From now, not from the start: a probe that took a timeout must not be followed by
            # another at once, or a Redis that hangs would hold up every batch.
            self._next_probe = time.monotonic() + PROBE_SECONDS
            self._spool(entries)
            return
        if self._down:
            logger.warning("Redis answers again: usage goes to the stream %s", self.stream)
        self._down = False

    @property
    def healthy(self) -> bool:
        """Redis answered the last send and the spool is empty."""
        return not self._down and not self.spool.pending

    def retry_pending(self) -> None:
        """Replay the spool if it holds anything and a probe is due (called when idle)."""
        if self.spool.pending and time.monotonic() >= self._next_probe:
            self.send([])

    def _append(self, entries: list[dict[str, str]]) -> None:
        append(self.client, self.stream, entries)

    def _spool(self, entries: list[dict[str, str]]) -> None:
        if entries:
            self.spool.append(entries)

    def close(self) -> None:
        self.spool.close()
        self.client.close()
        self.probe_client.close()


def replay_orphans(client: redis.Redis, stream: str, spool_dir: str) -> int:
    """Replay spool files nobody holds (their process died) into the stream; used by the writer."""
    return replay_directory(spool_dir, lambda entries: append(client, stream, entries))


def _text(value) -> str:
    """A field as text; bytes that are not UTF-8 become U+FFFD (the entry is read, not lost)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
