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
import time

import orjson
import redis
import redis.asyncio

from apps.usage.spool import Spool, replay_directory

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
    in the sink thread (docs/benchmarks.md)."""
    keys = tuple(item)
    try:
        # default=str: a record is JSON-able by contract; a stray datetime or Decimal must not
        # cost the batch.
        values = orjson.dumps(tuple(item.values()), default=str)
    except TypeError:
        # What orjson refuses and the standard encoder takes: integers beyond 64 bits, keys
        # that are not strings, in a provider's raw usage. (Read back, such an integer becomes
        # a float; no token count comes near.)
        values = json.dumps(list(item.values()), separators=(",", ":"), default=str).encode()
    return keys, values


def unpack(packed: Packed) -> dict:
    keys, values = packed
    return dict(zip(keys, orjson.loads(values), strict=True))


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
    return b"[" + orjson.dumps(keys) + b",[" + b",".join(rows) + b"]]"


def decode(fields: dict) -> tuple[str, list[dict]]:
    """(kind, items) of a stream entry; ValueError for anything this version cannot read."""
    fields = {_text(k): _text(v) for k, v in fields.items()}
    kind = fields.get("kind")
    if kind not in (KIND_EVENTS, KIND_REFUSALS):
        raise ValueError(f"unknown entry kind {kind!r}")
    version = fields.get("v")
    if version == FORMAT_VERSION:
        items = _items_of_groups(orjson.loads(fields.get("data", "")))
    elif version == LEGACY_FORMAT_VERSION:
        items = orjson.loads(fields.get("data", ""))
    else:
        raise ValueError(f"unknown entry version {version!r}")
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValueError("entry data is not a list of objects")
    return kind, items


def _items_of_groups(groups) -> list[dict]:
    if not isinstance(groups, list):
        raise ValueError("entry data is not a list of groups")
    items = []
    for group in groups:
        if not (isinstance(group, list) and len(group) == 2):
            raise ValueError("entry group is not [keys, rows]")
        keys, rows = group
        if not (isinstance(keys, list) and all(isinstance(key, str) for key in keys)):
            raise ValueError("entry group keys are not a list of names")
        if not isinstance(rows, list):
            raise ValueError("entry group rows are not a list")
        for row in rows:
            if not (isinstance(row, list) and len(row) == len(keys)):
                raise ValueError("entry row does not match its keys")
            items.append(dict(zip(keys, row, strict=True)))
    return items


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
        self.client = client_for(url)
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
                self.client.ping()  # a cheap probe before any spool file is read
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


def replay_orphans(client: redis.Redis, stream: str, spool_dir: str) -> int:
    """Replay spool files nobody holds (their process died) into the stream; used by the writer."""
    return replay_directory(spool_dir, lambda entries: append(client, stream, entries))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
