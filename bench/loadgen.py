"""A small, cheap HTTP/1.1 keep-alive load generator for the benchmark.

Written for the benchmark rather than using httpx: an httpx request costs the client several
hundred microseconds of CPU, which on a 2-core machine would compete with the very processes
being measured. Here each connection is a bare ``asyncio.Protocol`` on uvloop with llhttp (via
httptools) parsing the response, so a request costs the client a few tens of microseconds.

The client is closed-loop: each connection sends one request, waits for the whole response, then
sends the next. Requests are pre-built bytes; the same bytes go direct to the fake provider and
through Costr, except for the path and the credential.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

perf = time.perf_counter


@dataclass(slots=True)
class Result:
    """Timings of one request, in perf_counter seconds."""

    sent: float
    headers: float
    first_body: float | None
    end: float
    status: int
    body_bytes: int
    reads: list[float] = field(default_factory=list)  # arrival time of each read carrying body
    overhead: float | None = None  # Costr's own X-Costr-Overhead-Ms, when present

    @property
    def latency(self) -> float:
        return self.end - self.sent

    @property
    def ttfc(self) -> float | None:
        return None if self.first_body is None else self.first_body - self.sent

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.reads, self.reads[1:], strict=False)]


class ConnectionLost(Exception):
    pass


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future | None = None
        self._now = 0.0
        self._result: Result | None = None
        self._last_read = -1.0
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._now = perf()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(ConnectionLost(f"bad response: {error}"))

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._fail(ConnectionLost(f"connection lost: {exc!r}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 19 and name.lower() == b"x-costr-overhead-ms" and self._result:
            self._result.overhead = float(value)

    def on_headers_complete(self) -> None:
        result = self._result
        if result is not None:
            result.headers = self._now
            result.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        result = self._result
        if result is None:
            return
        now = self._now
        if result.first_body is None:
            result.first_body = now
        result.body_bytes += len(body)
        if now != self._last_read:  # one entry per network read, however many chunks it held
            result.reads.append(now)
            self._last_read = now

    def on_message_complete(self) -> None:
        result, waiter = self._result, self._waiter
        self._result = self._waiter = None
        if result is not None and waiter is not None and not waiter.done():
            result.end = self._now
            waiter.set_result(result)

    def _fail(self, error: Exception) -> None:
        waiter = self._waiter
        self._result = self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    async def request(self, payload: bytes) -> Result:
        if self.closed:
            raise ConnectionLost("connection closed")
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._last_read = -1.0
        sent = perf()
        self._result = Result(sent, 0.0, None, 0.0, 0, 0)
        self.transport.write(payload)
        return await self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(host: str, port: int) -> Conn:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(Conn, host, port)
    return protocol


def build_request(
    method: str, host: str, port: int, path: str, headers: dict[str, str], body: bytes
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Target:
    """Where a request goes: host, port and the full request bytes."""

    name: str
    host: str
    port: int
    payload: bytes


@dataclass
class RunStats:
    results: list[Result]
    elapsed: float
    errors: int
    client_cpu: float  # seconds of this process's CPU during the run

    @property
    def rps(self) -> float:
        return len(self.results) / self.elapsed if self.elapsed else 0.0


def _cpu() -> float:
    t = time.process_time()
    return t


class StartTogether:
    """One start for the timed windows of ``parties`` runs loaded at once on a shared core.

    Without it a run whose warm-up took longer (a token look-up, new connections) starts and ends
    later and spends its last moments alone on the core after the others have stopped, so its
    requests per second come out 5-15 % high (``bench.regression``, 3 s windows); and the CPU of
    a slow warm-up is counted with the window's. ``on_start`` runs once, when the last run has
    warmed up and before any window starts (to sample CPU there).
    """

    def __init__(self, parties: int, on_start: Callable[[], None] | None = None) -> None:
        self._left = parties
        self._go = asyncio.Event()
        self._on_start = on_start

    async def wait(self) -> None:
        self._left -= 1
        if self._left > 0:
            await self._go.wait()
            return
        if self._on_start is not None:
            self._on_start()
        self._go.set()


async def run_closed_loop(
    target: Target,
    concurrency: int,
    *,
    requests: int | None = None,
    duration: float | None = None,
    warmup: int = 0,
    together: StartTogether | None = None,
) -> RunStats:
    """``concurrency`` connections, each sending requests back to back.

    Stops after ``requests`` requests in total or after ``duration`` seconds. Each connection
    first sends ``warmup`` untimed requests. A non-2xx status or a lost connection counts as an
    error (the run goes on with a new connection).

    ``together`` starts several runs' timed windows at one moment, after every run's warm-up
    (see StartTogether).
    """
    conns = [await connect(target.host, target.port) for _ in range(concurrency)]

    async def warm(conn: Conn) -> None:
        for _ in range(warmup):
            await conn.request(target.payload)

    # Together, so no connection sits idle past the server's keep-alive timeout (gunicorn: 2 s).
    await asyncio.gather(*(warm(conn) for conn in conns))
    if together is not None:
        await together.wait()
    results: list[Result] = []
    errors = 0
    remaining = requests
    start = perf()
    deadline = start + duration if duration is not None else None
    cpu0 = _cpu()

    async def worker(index: int) -> None:
        nonlocal remaining, errors
        conn = conns[index]
        while True:
            if remaining is not None:
                if remaining <= 0:
                    return
                remaining -= 1
            if deadline is not None and perf() >= deadline:
                return
            try:
                result = await conn.request(target.payload)
            except ConnectionLost:
                errors += 1
                conn = conns[index] = await connect(target.host, target.port)
                continue
            if result.status >= 300:
                errors += 1
            results.append(result)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = perf() - start
    cpu = _cpu() - cpu0
    for conn in conns:
        conn.close()
    return RunStats(results, elapsed, errors, cpu)


async def run_interleaved(
    targets: list[Target], requests: int, *, warmup: int = 20
) -> tuple[dict[str, RunStats], float]:
    """Concurrency 1, alternating between targets request by request.

    Each target has its own connection; request i goes to every target in turn, so slow drift
    of the machine (other processes, frequency, caches) affects every target alike.
    """
    conns = {t.name: await connect(t.host, t.port) for t in targets}
    for target in targets:
        for _ in range(warmup):
            await conns[target.name].request(target.payload)
    collected: dict[str, list[Result]] = {t.name: [] for t in targets}
    busy: dict[str, float] = {t.name: 0.0 for t in targets}
    errors: dict[str, int] = {t.name: 0 for t in targets}
    start = perf()
    cpu0 = _cpu()
    for i in range(requests):
        order = targets if i % 2 == 0 else targets[::-1]
        for target in order:
            result = await conns[target.name].request(target.payload)
            if result.status >= 300:
                errors[target.name] += 1
            collected[target.name].append(result)
            busy[target.name] += result.latency
    cpu = _cpu() - cpu0
    elapsed = perf() - start
    for conn in conns.values():
        conn.close()
    stats = {
        name: RunStats(results, busy[name], errors[name], cpu / len(targets))
        for name, results in collected.items()
    }
    return stats, elapsed


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * p // 100))  # ceil
    return ordered[int(rank) - 1]
