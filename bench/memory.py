"""Worker memory under sustained overload (issue #14): one Costr web worker offered more than it
can serve, for a minute, in the embedded mode and in the Redis mode.

One worker as the Procfile runs it (gunicorn, ``costr.server.UvicornWorker``, ``--workers 1``,
``costr.asgi:application``) in front of the fake provider, pinned to CPU 0; the fake, the load
generator (and, in the Redis mode, ``run_usage_writer``) on CPU 1.

1. **Capacity**: a short closed-loop run at concurrency 32 gives an estimate, then an open-loop
   ramp (0.6x to 1.4x of it, RAMP_STEP s per step); the capacity is the best rate served.
2. **Overload**: open loop at FACTOR x capacity for DURATION s. Requests are scheduled at a
   fixed rate whatever the answers; each goes on an idle keep-alive connection, or a new one up
   to MAX_CONNS (gunicorn's default ``worker_connections``); with every connection busy the
   request is not sent ("shed": the client at its limit, as a real client pool would queue it).
   So the worker holds up to MAX_CONNS requests at once for the whole window: it is queueing, not
   keeping up. A request unanswered after TIMEOUT s is abandoned (the connection closed).
3. **Memory**: the worker's VmRSS from ``/proc/<pid>/status`` every SAMPLE_EVERY s; reported:
   peak, and the slope over the last SLOPE_WINDOW s by least squares (MB per minute). Targets:
   peak <= 150 MB and flat (slope <= 1 MB/min: at that rate a worker needs most of an hour to
   use up the margin).
4. **Nothing lost**: afterwards the usage writer catches up, the worker is stopped with SIGTERM
   (the sink's flush), and the events stored are counted against the requests Costr forwarded
   (every answer without ``X-Costr-Error``) in every phase of the mode.

Embedded mode: SQLite in a throwaway ``COSTR_VAR_DIR``, no Redis, the sink's own writer thread
(its queue bounded by ``COSTR_USAGE_QUEUE_MAX_RECORDS``, the spool past it). Redis mode:
``REDIS_URL`` = ``BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/7``, the benchmark's own
database: flushed before and after), a PostgreSQL database ``costr_bench_memory`` on the server
of ``BENCH_DATABASE_URL`` (dropped and created), and one ``manage.py run_usage_writer``.

``--trace``: a diagnostic run, not a measurement. The worker runs tracemalloc (gunicorn config
``bench/memtrace.py``); SIGUSR1 makes it dump a snapshot and a count of live objects by type;
the bench takes one early in the overload and one at its end and prints what grew between them.

    .venv/bin/python -m bench.memory [--duration 60] [--modes embedded,redis] [--json FILE]
                                     [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bench import loadgen, procs, run
from bench.loadgen import percentile

ROOT = run.ROOT
PEAK_LIMIT_MB = 150.0
SLOPE_LIMIT_MB_PER_MIN = 1.0
CUSTOMERS = 64  # requests rotate over this many X-Costr-Customer values
MEMORY_DB = "costr_bench_memory"
EVENTS_TABLE = "usage_usageevent"
perf = time.perf_counter


@dataclass
class Plan:
    duration: float = 60.0
    factor: float = 1.75
    max_conns: int = 1000
    timeout: float = 10.0
    sample_every: float = 0.5
    slope_window: float = 40.0
    ramp_step: float = 2.0


def log(message: str) -> None:
    print(f"[memory {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the load ---------------------------------------------------------------------------------


class _Conn(loadgen.Conn):
    """loadgen's connection, noting whether the answer came from Costr itself (X-Costr-Error):
    a refusal, not a forwarded request, so no usage event."""

    refused = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 13 and name.lower() == b"x-costr-error":
            self.refused = True
        super().on_header(name, value)


@dataclass
class Tally:
    """Every answer the client got, over all the phases of one mode."""

    ok: int = 0  # 2xx
    forwarded_other: int = 0  # non-2xx without X-Costr-Error: the provider's answer, forwarded
    refused: int = 0  # answered by Costr itself (X-Costr-Error)
    lost: int = 0  # connection lost or unreadable answer
    timeouts: int = 0  # abandoned by the client

    @property
    def forwarded(self) -> int:
        return self.ok + self.forwarded_other

    @property
    def uncertain(self) -> int:
        """Requests the client gave up on: the worker may or may not have forwarded them."""
        return self.lost + self.timeouts


@dataclass
class OpenLoop:
    rate: float
    duration: float
    scheduled: int = 0
    sent: int = 0
    shed: int = 0
    peak_open: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # of answers in the window, seconds
    done_at: list[float] = field(default_factory=list)  # completion times, from the start
    client_cpu: float = 0.0

    def served_rate(self, skip: float = 0.0) -> float:
        """Answers per second completed within the window (after ``skip`` seconds)."""
        inside = [t for t in self.done_at if skip <= t <= self.duration]
        return len(inside) / max(1e-9, self.duration - skip)


def payloads(setup: run.Setup) -> list[bytes]:
    common = {"content-type": "application/json", "user-agent": "costr-bench/1"}
    return [
        loadgen.build_request(
            "POST",
            run.HOST,
            setup.costr_port,
            f"/p/{run.ORG}/openai/v1/chat/completions",
            {
                **common,
                "authorization": f"Bearer {setup.token}",
                "x-costr-customer": f"bench-customer-{i:02d}",
            },
            run.CHAT_BODY,
        )
        for i in range(CUSTOMERS)
    ]


async def open_loop(
    port: int,
    requests: list[bytes],
    rate: float,
    duration: float,
    max_conns: int,
    timeout: float,
    tally: Tally,
) -> OpenLoop:
    """Requests at ``rate`` per second for ``duration`` s, whatever the answers (see the module
    docstring); waits for the ones in flight (at most ``timeout``) before returning."""
    loop = asyncio.get_running_loop()
    out = OpenLoop(rate, duration)
    idle: list[_Conn] = []
    open_conns = 0
    tasks: set[asyncio.Task] = set()
    start = perf()

    async def one(conn: _Conn | None, payload: bytes) -> None:
        nonlocal open_conns
        try:
            async with asyncio.timeout(timeout):
                if conn is None:
                    _, conn = await loop.create_connection(_Conn, run.HOST, port)
                conn.refused = False
                result = await conn.request(payload)
        except TimeoutError:
            tally.timeouts += 1
            out.errors += 1
            if conn is not None:
                conn.close()
            open_conns -= 1
            return
        except (loadgen.ConnectionLost, OSError):
            tally.lost += 1
            out.errors += 1
            if conn is not None:
                conn.close()
            open_conns -= 1
            return
        if conn.refused:
            tally.refused += 1
            out.errors += 1
        elif result.status < 300:
            tally.ok += 1
        else:
            tally.forwarded_other += 1
            out.errors += 1
        out.latencies.append(result.latency)
        out.done_at.append(result.end - start)
        if conn.closed:
            open_conns -= 1
        else:
            idle.append(conn)

    cpu0 = time.process_time()
    index = 0
    while True:
        elapsed = perf() - start
        if elapsed >= duration:
            break
        due = int(elapsed * rate) - out.scheduled
        for _ in range(due):
            out.scheduled += 1
            index += 1
            conn = None
            while idle:
                candidate = idle.pop()
                if not candidate.closed:
                    conn = candidate
                    break
                open_conns -= 1  # the server closed it while idle (keep-alive timeout)
            if conn is None:
                if open_conns >= max_conns:
                    out.shed += 1
                    continue
                open_conns += 1
            out.sent += 1
            task = loop.create_task(one(conn, requests[index % len(requests)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        out.peak_open = max(out.peak_open, open_conns)
        await asyncio.sleep(0.001)
    if tasks:
        await asyncio.wait(list(tasks), timeout=timeout + 1)
    out.client_cpu = time.process_time() - cpu0
    for conn in idle:
        conn.close()
    return out


async def capacity(setup: run.Setup, plan: Plan, tally: Tally) -> dict:
    """A closed-loop estimate, then an open-loop ramp around it; the best rate served."""
    requests = payloads(setup)
    target = loadgen.Target("costr", run.HOST, setup.costr_port, requests[0])
    warm = await loadgen.run_closed_loop(target, 8, requests=400, warmup=5)
    tally.ok += len(warm.results) + 8 * 5 - warm.errors
    closed = await loadgen.run_closed_loop(target, 32, duration=plan.ramp_step, warmup=2)
    tally.ok += len(closed.results) + 32 * 2 - closed.errors
    estimate = closed.rps
    steps = []
    for fraction in (0.6, 0.8, 1.0, 1.2, 1.4):
        rate = fraction * estimate
        stats = await open_loop(
            setup.costr_port, requests, rate, plan.ramp_step, plan.max_conns, plan.timeout, tally
        )
        steps.append(
            {
                "offered": rate,
                "served": stats.served_rate(skip=0.25),
                "p50_ms": 1000 * percentile(stats.latencies, 50),
                "p99_ms": 1000 * percentile(stats.latencies, 99),
                "shed": stats.shed,
                "errors": stats.errors,
            }
        )
        log(f"ramp {rate:,.0f}/s offered: {steps[-1]['served']:,.0f}/s served")
    return {
        "closed_loop_c32": estimate,
        "steps": steps,
        "capacity": max(s["served"] for s in steps),
    }


# --- memory ---------------------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class Sampler(threading.Thread):
    """VmRSS of some processes every ``every`` seconds, as (seconds since start, KiB, …)."""

    def __init__(self, pids: dict[str, int], every: float) -> None:
        super().__init__(daemon=True)
        self.pids, self.every = pids, every
        self.samples: list[tuple[float, dict[str, int | None]]] = []
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while True:
            self.samples.append(
                (time.monotonic() - self.t0, {n: rss_kib(p) for n, p in self.pids.items()})
            )
            if self._halt.wait(self.every):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def series(self, name: str) -> list[tuple[float, float]]:
        return [(t, v[name] / 1024) for t, v in self.samples if v.get(name) is not None]


def slope_mb_per_min(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 3:
        return float("nan")
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return 60 * cov / var


# --- events stored ---------------------------------------------------------------------------


def _scratch_database(name: str) -> str:
    import psycopg

    server = os.environ.get("BENCH_DATABASE_URL") or os.environ.get(
        "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"
    )
    parts = urlsplit(server)
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        db.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


def count_events(mode: str, where: str) -> int:
    query = f"SELECT count(*) FROM {EVENTS_TABLE}"  # noqa: S608 - a constant
    if mode == "embedded":
        with contextlib.closing(sqlite3.connect(f"file:{where}?mode=ro", uri=True)) as db:
            db.execute("PRAGMA busy_timeout = 5000")
            return db.execute(query).fetchone()[0]
    import psycopg

    with psycopg.connect(where) as db:
        return db.execute(query).fetchone()[0]


def wait_for_events(mode: str, where: str, expected: int, limit: float = 90.0) -> tuple[int, float]:
    """Until ``expected`` events are stored or the count stops moving for 10 s."""
    started = time.monotonic()
    last, last_change = -1, started
    while time.monotonic() - started < limit:
        count = count_events(mode, where)
        if count != last:
            last, last_change = count, time.monotonic()
        if count >= expected or time.monotonic() - last_change > 10:
            break
        time.sleep(0.5)
    return last, time.monotonic() - started


def spool_bytes(var_dir: Path) -> int:
    spool = var_dir / "spool"
    if not spool.exists():
        return 0
    return sum(p.stat().st_size for p in spool.iterdir() if p.is_file())


# --- tracemalloc diagnosis -----------------------------------------------------------------


def _dump(worker: int, directory: Path, label: str) -> tuple[Path, Path] | None:
    before = set(directory.iterdir())
    os.kill(worker, signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = {p for p in directory.iterdir() if p.suffix == ".done"} - before
        if new:
            stem = sorted(new)[0].with_suffix("")
            return stem.with_suffix(".snapshot"), stem.with_suffix(".types.json")
        time.sleep(0.2)
    log(f"no tracemalloc dump for {label}")
    return None


def trace_diff(first: tuple[Path, Path], second: tuple[Path, Path], top: int = 25) -> dict:
    import tracemalloc

    types_a = json.loads(first[1].read_text())
    types_b = json.loads(second[1].read_text())
    grew = sorted(
        ((name, types_b.get(name, 0) - types_a.get(name, 0)) for name in types_b),
        key=lambda item: -item[1],
    )[:20]
    blocks = [t.get("(allocated blocks)") for t in (types_a, types_b)]
    if not first[0].exists():  # BENCH_TRACEMALLOC_FRAMES=0: object counts only
        return {"object_types_grown": grew, "allocated_blocks": blocks}
    a = tracemalloc.Snapshot.load(str(first[0]))
    b = tracemalloc.Snapshot.load(str(second[0]))
    flt = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen*")]
    a, b = a.filter_traces(flt), b.filter_traces(flt)
    lines = []
    for stat in b.compare_to(a, "lineno")[:top]:
        frame = stat.traceback[0]
        lines.append(
            {
                "where": f"{frame.filename.replace(str(ROOT) + '/', '')}:{frame.lineno}",
                "size_diff_kib": stat.size_diff / 1024,
                "count_diff": stat.count_diff,
                "size_kib": stat.size / 1024,
            }
        )
    stacks = []
    for stat in b.compare_to(a, "traceback")[:5]:
        stacks.append(
            {
                "size_diff_kib": stat.size_diff / 1024,
                "count_diff": stat.count_diff,
                "stack": [
                    f"{f.filename.replace(str(ROOT) + '/', '')}:{f.lineno}"
                    for f in list(stat.traceback)[-12:]
                ],
            }
        )
    total_a = sum(s.size for s in a.statistics("filename"))
    total_b = sum(s.size for s in b.statistics("filename"))
    return {
        "traced_mib": [total_a / 2**20, total_b / 2**20],
        "top_lines": lines,
        "top_stacks": stacks,
        "object_types_grown": grew,
        "allocated_blocks": blocks,
    }


# --- one mode --------------------------------------------------------------------------------


def measure_mode(mode: str, plan: Plan, pin: bool, trace: bool) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"costr-memory-{mode}-"))
    children = procs.Processes()
    extra_env: dict[str, str] = {}
    redis_url = stream = database = None
    if mode == "redis":
        import redis

        redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
        redis.Redis.from_url(redis_url).flushdb()
        database = _scratch_database(MEMORY_DB)
        stream = f"costr:bench:memory:{os.getpid()}"
        extra_env = {"DATABASE_URL": database, "REDIS_URL": redis_url, "COSTR_USAGE_STREAM": stream}
    trace_dir = tmp / "trace"
    config = None
    if trace:
        trace_dir.mkdir()
        extra_env["BENCH_TRACEMALLOC_DIR"] = str(trace_dir)
        config = "python:bench.memtrace"
    tally = Tally()
    out: dict = {"mode": mode, "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}
    try:
        log(f"{mode}: starting Costr in {tmp}")
        setup = run.start(run.Plan(), tmp, children, pin, extra_env=extra_env, config=config)
        pids = {"worker": setup.worker_pid}
        if mode == "redis":
            env = {**run.isolated_env(tmp / "var"), **extra_env}
            writer = children.start(
                "run_usage_writer",
                [sys.executable, "manage.py", "run_usage_writer"],
                env=env,
                cwd=ROOT,
                log=tmp / "writer.log",
                cpus={1} if pin else None,
            )
            pids["writer"] = writer.pid
        out["rss_start_mb"] = rss_kib(setup.worker_pid) / 1024

        out["capacity"] = asyncio.run(capacity(setup, plan, tally))
        rate = plan.factor * out["capacity"]["capacity"]
        log(f"{mode}: capacity {out['capacity']['capacity']:,.0f}/s; overload at {rate:,.0f}/s")
        out["rss_before_overload_mb"] = rss_kib(setup.worker_pid) / 1024

        sampler = Sampler(pids, plan.sample_every)
        cpu0, wait0 = procs.cpu_sample(setup.worker_pid), run_delay(setup.worker_pid)
        dumps: list = []
        if trace:

            def early() -> None:
                time.sleep(max(0.0, plan.duration - plan.slope_window))
                dumps.append(_dump(setup.worker_pid, trace_dir, "early"))

            threading.Thread(target=early, daemon=True).start()
        sampler.start()
        requests = payloads(setup)
        stats = asyncio.run(
            open_loop(
                setup.costr_port,
                requests,
                rate,
                plan.duration,
                plan.max_conns,
                plan.timeout,
                tally,
            )
        )
        cpu1, wait1 = procs.cpu_sample(setup.worker_pid), run_delay(setup.worker_pid)
        if trace:
            dumps.append(_dump(setup.worker_pid, trace_dir, "end"))
        time.sleep(5)  # after the load: does the resident set come back down?
        sampler.stop()
        worker = sampler.series("worker")
        in_window = [(t, v) for t, v in worker if t <= plan.duration]
        tail = [(t, v) for t, v in in_window if t >= plan.duration - plan.slope_window]
        out["overload"] = {
            "offered_rate": rate,
            "scheduled": stats.scheduled,
            "sent": stats.sent,
            "shed": stats.shed,
            "peak_connections": stats.peak_open,
            "served": len([t for t in stats.done_at if t <= plan.duration]),
            "served_rate": stats.served_rate(),
            "served_rate_after_5s": stats.served_rate(skip=5.0),
            "errors": stats.errors,
            "p50_ms": 1000 * percentile(stats.latencies, 50),
            "p99_ms": 1000 * percentile(stats.latencies, 99),
            "max_ms": 1000 * max(stats.latencies) if stats.latencies else float("nan"),
            "worker_cpu_pct": 100 * (cpu1 - cpu0).threads / plan.duration,
            # Runnable but not running: the share of the window other processes took from it.
            "worker_wait_pct": 100 * (wait1 - wait0) / plan.duration,
            "client_cpu_pct": 100 * stats.client_cpu / plan.duration,
            "by_10s": by_window(stats),
            "latency_histogram": histogram(stats.latencies),
        }
        peak = max(v for _, v in in_window)
        out["memory"] = {
            "peak_mb": peak,
            "vmhwm_mb": procs.memory(setup.worker_pid)["VmHWM"] / 1024,
            "slope_mb_per_min": slope_mb_per_min(tail),
            "at_10s_mb": _at(in_window, 10),
            "at_30s_mb": _at(in_window, 30),
            "at_end_mb": in_window[-1][1],
            "after_load_mb": worker[-1][1],
            "samples": [(round(t, 2), round(v, 2)) for t, v in worker],
        }
        if "writer" in pids:
            series = sampler.series("writer")
            out["writer_memory"] = {
                "peak_mb": max(v for _, v in series),
                "slope_mb_per_min": slope_mb_per_min(
                    [(t, v) for t, v in series if plan.duration - plan.slope_window <= t]
                ),
            }
        if trace and all(dumps):
            out["trace"] = trace_diff(dumps[0], dumps[1])

        # Nothing lost: let the writer catch up, stop the worker (SIGTERM: the sink flushes),
        # count again.
        where = str(tmp / "var" / "costr.sqlite3") if mode == "embedded" else database
        stored_live, waited = wait_for_events(mode, where, tally.forwarded)
        worker_exit = _stop_worker(setup)
        if mode == "redis":
            _wait_stream_drained(redis_url, stream)
        stored, _ = wait_for_events(mode, where, tally.forwarded, limit=30)
        out["events"] = {
            **asdict(tally),
            "forwarded": tally.forwarded,
            "uncertain": tally.uncertain,
            "stored_while_running": stored_live,
            "seconds_to_catch_up": waited,
            "stored": stored,
            "spool_bytes_left": spool_bytes(tmp / "var"),
            "worker_exit": worker_exit,
            "lost": max(0, tally.forwarded - stored),
        }
        out["worker_log"] = log_summary(tmp / "gunicorn.log")
        out["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        return out
    except Exception:
        for name in ("gunicorn.log", "fake.log", "writer.log"):
            path = tmp / name
            if path.exists():
                print(
                    f"--- {name} ---\n{path.read_text(errors='replace')[-3000:]}", file=sys.stderr
                )
        raise
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        if redis_url:
            import redis

            with contextlib.suppress(Exception):
                redis.Redis.from_url(redis_url).flushdb()


def log_summary(path: Path, top: int = 6) -> list[tuple[str, int]]:
    """The worker's log lines counted by message, numbers masked."""
    import collections
    import re

    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(" ", 2)
        text = parts[2] if len(parts) == 3 and parts[0][:2] == "20" else line
        counts[re.sub(r"-?\d+(\.\d+)?", "#", text)[:160]] += 1
    return counts.most_common(top)


def by_window(stats: OpenLoop, width: float = 10.0) -> list[dict]:
    """Answers per second and latency percentiles in windows of ``width`` seconds."""
    rows = []
    start = 0.0
    pairs = sorted(zip(stats.done_at, stats.latencies, strict=True))
    while start < stats.duration:
        inside = [lat for t, lat in pairs if start <= t < start + width]
        rows.append(
            {
                "from_s": start,
                "served_rate": len(inside) / width,
                "p50_ms": 1000 * percentile(inside, 50),
                "p99_ms": 1000 * percentile(inside, 99),
            }
        )
        start += width
    return rows


def run_delay(pid: int) -> float:
    """Seconds the event loop's thread spent runnable but waiting for a CPU (schedstat): other
    processes on its core, or its own threads holding it (the embedded writer)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError):
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
    return 0.0


LATENCY_BUCKETS = (0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)


def histogram(latencies: list[float]) -> dict[str, int]:
    """Answers per latency bucket (upper bounds in seconds; the last is everything slower)."""
    counts = dict.fromkeys([f"<{b:g}s" for b in LATENCY_BUCKETS] + ["slower"], 0)
    for value in latencies:
        for bound in LATENCY_BUCKETS:
            if value < bound:
                counts[f"<{bound:g}s"] += 1
                break
        else:
            counts["slower"] += 1
    return counts


def _at(series: list[tuple[float, float]], t: float) -> float:
    return min(series, key=lambda point: abs(point[0] - t))[1]


def _stop_worker(setup: run.Setup) -> int | None:
    """SIGTERM to gunicorn's master: the worker's lifespan shutdown flushes the sink."""
    os.kill(setup.master_pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not Path(f"/proc/{setup.worker_pid}").exists():
            return 0
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{setup.worker_pid}/stat").read_text().split(")")[-1].split()[0]
            if state == "Z":
                return 0
        time.sleep(0.1)
    return None


def _wait_stream_drained(url: str, stream: str, limit: float = 60.0) -> None:
    import redis

    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and client.xlen(stream):
        time.sleep(0.5)


# --- report ----------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def section(results: list[dict], plan: Plan, meta: dict) -> str:
    lines = [
        "## Worker memory under sustained overload",
        "",
        f"`python -m bench.memory`, {meta['date']}; load average {meta['loadavg_start']} at the "
        f"start, {meta['loadavg_end']} at the end. One worker as the Procfile runs it (gunicorn, "
        "`costr.server.UvicornWorker`, one worker) pinned to CPU 0, the fake provider and the "
        "load generator on CPU 1 (and `run_usage_writer` in the Redis mode). Its capacity is "
        "found first (closed loop at concurrency 32, then an open-loop ramp at 0.6-1.4x of that, "
        f"{plan.ramp_step:.0f} s a step); then it is offered {plan.factor:g}x its capacity, open "
        f"loop, for {plan.duration:.0f} s: non-streamed chat completions over {CUSTOMERS} "
        f"customers, each on an idle keep-alive connection or a new one up to {plan.max_conns:,} "
        "(with all busy the request is shed by the client), so the worker holds that many "
        "requests at once throughout. Its VmRSS is read from `/proc` every "
        f"{plan.sample_every:g} s; the slope is a least-squares fit over the last "
        f"{plan.slope_window:.0f} s. Targets: peak ≤ {PEAK_LIMIT_MB:.0f} MB and flat "
        f"(≤ {SLOPE_LIMIT_MB_PER_MIN:g} MB/min). Events stored are counted after the writer "
        "caught up and the worker was stopped with SIGTERM, against every answer the client got "
        "without `X-Costr-Error` in all the phases of the mode.",
        "",
        "| mode | capacity req/s | offered req/s | served req/s | shed by the client | "
        "errors | p50 / p99 / max ms | worker CPU % / loop waiting for CPU 0 % | RSS before MB | "
        "RSS at 10 s / 30 s / end MB | peak RSS MB | slope MB/min | after load MB | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | --- |",
    ]
    for r in results:
        o, m = r["overload"], r["memory"]
        ok = m["peak_mb"] <= PEAK_LIMIT_MB and m["slope_mb_per_min"] <= SLOPE_LIMIT_MB_PER_MIN
        lines.append(
            f"| {r['mode']} | {r['capacity']['capacity']:,.0f} | {o['offered_rate']:,.0f} | "
            f"{o['served_rate']:,.0f} | {o['shed']:,} | {o['errors']:,} | "
            f"{o['p50_ms']:.0f} / {o['p99_ms']:.0f} / {o['max_ms']:.0f} | "
            f"{o['worker_cpu_pct']:.0f} / {o['worker_wait_pct']:.0f} | "
            f"{r['rss_before_overload_mb']:.1f} | "
            f"{m['at_10s_mb']:.1f} / {m['at_30s_mb']:.1f} / {m['at_end_mb']:.1f} | "
            f"{m['peak_mb']:.1f} | {m['slope_mb_per_min']:+.2f} | {m['after_load_mb']:.1f} | "
            f"{_verdict(ok)} |"
        )
    lines += [
        "",
        "| mode | answers forwarded (2xx + provider errors) | refused by Costr | lost / timed out "
        "(client side) | events stored while running | stored after SIGTERM | lost events | "
        "spool left |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        e = r["events"]
        lines.append(
            f"| {r['mode']} | {e['forwarded']:,} | {e['refused']:,} | {e['lost']:,} / "
            f"{e['timeouts']:,} | {e['stored_while_running']:,} | {e['stored']:,} | "
            f"{max(0, e['forwarded'] - e['stored']):,} | {e['spool_bytes_left']:,} B |"
        )
    for r in results:
        if "writer_memory" in r:
            w = r["writer_memory"]
            lines.append(
                f"\n`run_usage_writer` ({r['mode']} mode): peak RSS {w['peak_mb']:.1f} MB, slope "
                f"{w['slope_mb_per_min']:+.2f} MB/min."
            )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=Plan.duration)
    parser.add_argument("--factor", type=float, default=Plan.factor)
    parser.add_argument("--max-conns", type=int, default=Plan.max_conns)
    parser.add_argument("--modes", default="embedded,redis")
    parser.add_argument("--json", help="also write the raw figures (RSS samples included) here")
    parser.add_argument("--trace", action="store_true", help="tracemalloc diagnosis (slow)")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    plan = Plan(
        duration=args.duration,
        factor=args.factor,
        max_conns=args.max_conns,
        slope_window=min(Plan.slope_window, args.duration * 2 / 3),
    )
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    results = []
    for mode in args.modes.split(","):
        try:
            results.append(measure_mode(mode, plan, pin, args.trace))
        except Exception as error:
            if mode == "redis" and len(args.modes.split(",")) > 1:
                log(f"redis mode not measured: {error!r}")
                continue
            raise
        r = results[-1]
        log(
            f"{mode}: peak {r['memory']['peak_mb']:.1f} MB, slope "
            f"{r['memory']['slope_mb_per_min']:+.2f} MB/min, served "
            f"{r['overload']['served_rate']:,.0f}/s, events {r['events']['stored']:,} of "
            f"{r['events']['forwarded']:,}"
        )
        if "trace" in r:
            print(json.dumps(r["trace"], indent=1), file=sys.stderr)
    meta["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    if args.json:
        Path(args.json).write_text(
            json.dumps({"meta": meta, "plan": asdict(plan), "results": results}, indent=1)
        )
    print(section(results, plan, meta))
    return 0


if __name__ == "__main__":
    # Each mode's asyncio.run uses the default loop; the load generator wants uvloop's.
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main())
