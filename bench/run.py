"""`make bench`: Costr's proxy overhead against the fake provider, written to docs/benchmarks.md.

One run, one machine: the fake provider (tests/fakes/provider.py, uvicorn + httptools + uvloop)
and Costr under gunicorn with ONE uvicorn worker, as in the Procfile, in front of it. The same
client sends the same request direct to the fake and through Costr; the difference is what Costr
adds. See docs/benchmarks.md ("Method") for what each figure means.

    .venv/bin/python -m bench.run [--quick] [--no-pin] [--output docs/benchmarks.md]
                                  [--usage-redis redis://127.0.0.1:6379/15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import loadgen, procs, report
from bench.loadgen import Target, percentile

ROOT = Path(__file__).resolve().parent.parent
ORG = "bench"
HOST = "127.0.0.1"
# Keys in the shape Costr's key checks accept; the fake is told to expect exactly these.
KEYS = {
    "openai": "sk-proj-bench" + "0123456789abcdefghijklmnopqrstuvwxyz",
    "anthropic": "sk-ant-api03-bench" + "0123456789abcdefghijklmnopqrstuv",
    "google": "AIza" + "Bench0123456789abcdefghijklmnopqrst",  # AIza + exactly 35
}
CHAT_BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]},
    separators=(",", ":"),
).encode()
STREAM_BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Say hello."}],
    },
    separators=(",", ":"),
).encode()
# What most SDK calls send: no stream_options, so Costr injects include_usage and filters the
# extra usage chunk back out (the one body change). Used for the CPU-per-chunk figure as well.
STREAM_BODY_NO_USAGE = json.dumps(
    {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
    separators=(",", ":"),
).encode()
# Variables that would point the benchmark at a real database, Redis or keyring.
SCRUBBED_ENV = (
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "COSTR_ENCRYPTION_KEYS",
    "DJANGO_SETTINGS_MODULE",
    "DEBUG",
    "ALLOWED_HOSTS",
    "WEB_CONCURRENCY",
    "GUNICORN_CMD_ARGS",
)


@dataclass
class Plan:
    """How much to measure; --quick shrinks every phase for a smoke run."""

    c1_pairs: int = 3000
    duration: float = 3.0
    stream_chunks: int = 20
    stream_delay_ms: int = 2
    stream_c1_pairs: int = 100
    stream_duration: float = 3.0
    long_chunks: int = 400
    long_delay_ms: int = 1
    long_streams: int = 32
    long_concurrency: int = 8
    concurrencies: tuple[int, ...] = (1, 8, 32)

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            c1_pairs=300,
            duration=1.0,
            stream_c1_pairs=20,
            stream_duration=1.0,
            long_chunks=100,
            long_streams=16,
        )


@dataclass
class Setup:
    fake_port: int
    costr_port: int
    token: str
    master_pid: int
    worker_pid: int
    fake_pid: int
    pinned: bool
    server: str = "gunicorn"
    versions: dict[str, str] = field(default_factory=dict)


def isolated_env(var_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env = {k: v for k, v in env.items() if not k.startswith("COSTR_")}
    env.update(
        DJANGO_SETTINGS_MODULE="costr.settings.local",
        DEBUG="0",
        COSTR_VAR_DIR=str(var_dir),
        LOG_LEVEL="WARNING",
        PYTHONDONTWRITEBYTECODE="1",
        BENCH_OPENAI_KEY=KEYS["openai"],
        BENCH_ANTHROPIC_KEY=KEYS["anthropic"],
        BENCH_GOOGLE_KEY=KEYS["google"],
    )
    return env


def provision(env: dict[str, str], root: Path = ROOT) -> str:
    done = subprocess.run(  # noqa: S603 -- our own interpreter and module
        [sys.executable, "-m", "bench.provision", ORG],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"provisioning failed:\n{done.stdout}\n{done.stderr}")
    token = done.stdout.strip().splitlines()[-1]
    if not token.startswith("costr_"):
        raise RuntimeError(f"createtoken printed no token: {done.stdout!r}")
    return token


# The Procfile's worker class: uvicorn with Costr's limits on request heads (costr/server.py).
WORKER_CLASS = "costr.server.UvicornWorker"
# uvicorn-worker's own class: what the Procfile named before costr/server.py existed (used to run
# an older tree, or to see what Costr's protocol class costs).
PLAIN_WORKER_CLASS = "uvicorn_worker.UvicornWorker"


def server_argv(server: str, port: int, worker_class: str = WORKER_CLASS) -> list[str]:
    """Costr's server: gunicorn with one uvicorn worker as in the Procfile, or granian (only to
    compare; granian is not a dependency: `--server granian` needs it installed)."""
    if server == "granian":
        return [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "costr.asgi:application",
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--host",
            HOST,
            "--port",
            str(port),
            "--no-ws",
            "--log-level",
            "warning",
        ]
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "costr.asgi:application",
        "--worker-class",
        worker_class,
        "--workers",
        "1",
        "--bind",
        f"{HOST}:{port}",
        "--graceful-timeout",
        "5",
        "--log-level",
        "warning",
        "--no-control-socket",
    ]


def start(
    plan: Plan,
    tmp: Path,
    children: procs.Processes,
    pin: bool,
    server: str = "gunicorn",
    usage_stream: tuple[str, str] | None = None,
    sink_off: bool = False,
    *,
    root: Path = ROOT,
    worker_class: str = WORKER_CLASS,
    extra_env: dict[str, str] | None = None,
    config: str | None = None,
) -> Setup:
    """The fake and Costr, running. ``usage_stream`` is (Redis URL, stream name) to send usage
    to a Redis stream, as in production, instead of the embedded writer. ``root`` is the tree
    Costr runs from (another checkout, to compare; the fake always comes from this one),
    ``extra_env`` is added to Costr's environment (``DATABASE_URL``, ``REDIS_URL``…), ``config``
    a gunicorn ``--config``."""
    env = {**isolated_env(tmp / "var"), **(extra_env or {})}
    token = provision(env, root)
    fake_port, costr_port = procs.free_port(), procs.free_port()
    # Two cores: Costr's worker gets CPU 0 to itself; the fake provider and this load generator
    # share CPU 1. Without pinning the scheduler moves them about and the figures get noisier.
    costr_cpus, other_cpus = ({0}, {1}) if pin else (None, None)
    fake = children.start(
        "fake provider",
        [
            sys.executable,
            "-m",
            "tests.fakes.provider",
            "--host",
            HOST,
            "--port",
            str(fake_port),
            "--openai-key",
            KEYS["openai"],
            "--anthropic-key",
            KEYS["anthropic"],
            "--google-key",
            KEYS["google"],
        ],
        env=env,
        cwd=ROOT,
        log=tmp / "fake.log",
        cpus=other_cpus,
    )
    upstream = f"http://{HOST}:{fake_port}"
    costr_env = {
        **env,
        "COSTR_UPSTREAM_OPENAI": upstream,
        "COSTR_UPSTREAM_ANTHROPIC": upstream,
        "COSTR_UPSTREAM_GOOGLE": upstream,
    }
    if usage_stream is not None:
        costr_env["COSTR_USAGE_REDIS_URL"], costr_env["COSTR_USAGE_STREAM"] = usage_stream
    argv = server_argv(server, costr_port, worker_class)
    if sink_off:
        config = "python:bench.sink_off"
    if config:
        argv += ["--config", config]
    master = children.start(
        server,
        argv,
        env=costr_env,
        cwd=root,
        log=tmp / "gunicorn.log",
        cpus=costr_cpus,
    )
    if other_cpus:
        os.sched_setaffinity(0, other_cpus)
    procs.wait_http(f"{upstream}/v1/models", 60, children)
    procs.wait_http(f"http://{HOST}:{costr_port}/healthz", 90, children)
    workers = procs.children_of(master.pid)
    if len(workers) != 1:
        raise RuntimeError(f"expected one {server} worker, found {workers}")
    return Setup(fake_port, costr_port, token, master.pid, workers[0], fake.pid, pin, server)


def targets(setup: Setup, body: bytes, extra: dict[str, str] | None = None):
    extra = extra or {}
    common = {"content-type": "application/json", "user-agent": "costr-bench/1", **extra}
    direct = Target(
        "direct",
        HOST,
        setup.fake_port,
        loadgen.build_request(
            "POST",
            HOST,
            setup.fake_port,
            "/v1/chat/completions",
            {**common, "authorization": f"Bearer {KEYS['openai']}"},
            body,
        ),
    )
    through = Target(
        "costr",
        HOST,
        setup.costr_port,
        loadgen.build_request(
            "POST",
            HOST,
            setup.costr_port,
            f"/p/{ORG}/openai/v1/chat/completions",
            {
                **common,
                "authorization": f"Bearer {setup.token}",
                "x-costr-customer": "bench-customer",
            },
            body,
        ),
    )
    return direct, through


def _fetch(port: int, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}", data=body, headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return response.status, response.read()


def sanity_check(setup: Setup) -> None:
    """Through Costr, the same request must get the same bytes as direct (ids are fixed)."""
    for body in (CHAT_BODY, STREAM_BODY):
        headers = {"content-type": "application/json"}
        status_d, direct = _fetch(
            setup.fake_port,
            "/v1/chat/completions",
            {**headers, "authorization": f"Bearer {KEYS['openai']}"},
            body,
        )
        status_c, through = _fetch(
            setup.costr_port,
            f"/p/{ORG}/openai/v1/chat/completions",
            {**headers, "authorization": f"Bearer {setup.token}"},
            body,
        )
        if (status_d, status_c) != (200, 200) or direct != through:
            raise RuntimeError(
                f"sanity check failed: direct {status_d} {direct[:200]!r} vs "
                f"Costr {status_c} {through[:200]!r}"
            )


def _ms(seconds: float) -> float:
    return seconds * 1000


def latency_row(stats: loadgen.RunStats) -> dict:
    lat = [r.latency for r in stats.results]
    return {
        "n": len(lat),
        "p50": _ms(percentile(lat, 50)),
        "p99": _ms(percentile(lat, 99)),
        "rps": stats.rps,
        "errors": stats.errors,
        "client_cpu_pct": 100 * stats.client_cpu / stats.elapsed if stats.elapsed else 0.0,
    }


def stream_row(stats: loadgen.RunStats) -> dict:
    ttfc = [r.ttfc for r in stats.results if r.ttfc is not None]
    gaps = [g for r in stats.results for g in r.gaps()]
    total = [r.latency for r in stats.results]
    return {
        "n": len(stats.results),
        "ttfc_p50": _ms(percentile(ttfc, 50)),
        "ttfc_p99": _ms(percentile(ttfc, 99)),
        "gap_p50": _ms(percentile(gaps, 50)),
        "gap_p99": _ms(percentile(gaps, 99)),
        "gap_max": _ms(max(gaps)) if gaps else float("nan"),
        "total_p50": _ms(percentile(total, 50)),
        "total_p99": _ms(percentile(total, 99)),
        "rps": stats.rps,
        "errors": stats.errors,
        "reads_per_stream": sum(len(r.reads) for r in stats.results) / max(1, len(stats.results)),
    }


def _cpu_row(delta: procs.CpuSample, count: int) -> dict:
    return {
        "count": count,
        "process_ms": _ms(delta.process) / count,
        "threads_ms": _ms(delta.threads) / count,
        "loop_ms": _ms(delta.main_thread) / count,
    }


async def measure(plan: Plan, setup: Setup, log) -> dict:
    worker, fake = setup.worker_pid, setup.fake_pid
    out: dict = {"plain": {}, "stream": {}, "cpu": {}}

    direct, through = targets(setup, CHAT_BODY)
    # Warm Costr: token cache, upstream pool, imports on first use.
    await loadgen.run_closed_loop(through, 8, requests=400, warmup=5)
    await loadgen.run_closed_loop(direct, 8, requests=400, warmup=5)
    procs.settle_cpu(worker)
    idle0 = procs.cpu_sample(worker)
    time.sleep(1.0)
    out["idle_cpu_ms_per_s"] = _ms((procs.cpu_sample(worker) - idle0).threads)
    out["rss_after_warmup_kib"] = procs.memory(worker)["VmRSS"]

    # Non-streamed chat completions.
    for c in plan.concurrencies:
        log(f"non-streamed, concurrency {c}")
        if c == 1:
            cpu0, fake0 = procs.settle_cpu(worker), procs.cpu_sample(fake)
            stats, _ = await loadgen.run_interleaved([direct, through], plan.c1_pairs)
            cpu1, fake1 = procs.settle_cpu(worker), procs.cpu_sample(fake)
            d, t = stats["direct"], stats["costr"]
            paired = [b.latency - a.latency for a, b in zip(d.results, t.results, strict=True)]
            overhead = [r.overhead for r in t.results if r.overhead is not None]
            out["paired"] = {
                "p50": _ms(percentile(paired, 50)),
                "p99": _ms(percentile(paired, 99)),
                "overhead_header_p50": percentile(overhead, 50) if overhead else None,
                "overhead_header_p99": percentile(overhead, 99) if overhead else None,
            }
            fake_requests = 2 * plan.c1_pairs
        else:
            d = await loadgen.run_closed_loop(direct, c, duration=plan.duration, warmup=3)
            cpu0, fake0 = procs.settle_cpu(worker), procs.cpu_sample(fake)
            t = await loadgen.run_closed_loop(through, c, duration=plan.duration, warmup=3)
            cpu1, fake1 = procs.settle_cpu(worker), procs.cpu_sample(fake)
            fake_requests = len(t.results)
        out["plain"][c] = {"direct": latency_row(d), "costr": latency_row(t)}
        out["cpu"][f"plain_c{c}"] = _cpu_row(cpu1 - cpu0, len(t.results))
        out["cpu"][f"fake_c{c}"] = _cpu_row(fake1 - fake0, fake_requests)

    # Streamed chat completions: time to first chunk, gaps between chunks, total.
    knobs = {"x-fake-chunks": str(plan.stream_chunks), "x-fake-delay-ms": str(plan.stream_delay_ms)}
    s_direct, s_through = targets(setup, STREAM_BODY, knobs)
    for c in plan.concurrencies:
        log(f"streamed, concurrency {c}")
        cpu0 = procs.settle_cpu(worker)
        if c == 1:
            stats, _ = await loadgen.run_interleaved(
                [s_direct, s_through], plan.stream_c1_pairs, warmup=3
            )
            d, t = stats["direct"], stats["costr"]
            paired = [
                b.ttfc - a.ttfc
                for a, b in zip(d.results, t.results, strict=True)
                if a.ttfc is not None and b.ttfc is not None
            ]
            out["stream_paired_ttfc"] = {
                "p50": _ms(percentile(paired, 50)),
                "p99": _ms(percentile(paired, 99)),
            }
        else:
            running = asyncio.ensure_future(
                loadgen.run_closed_loop(s_through, c, duration=plan.stream_duration, warmup=1)
            )
            if "nodelay" not in out:
                # Mid-run, with every connection open: is Nagle off on both sides of Costr?
                await asyncio.sleep(min(1.0, plan.stream_duration / 2))
                out["nodelay"] = {
                    "costr": await asyncio.to_thread(
                        procs.tcp_nodelay, worker, setup.costr_port, setup.fake_port
                    ),
                    "fake": await asyncio.to_thread(procs.tcp_nodelay, fake, setup.fake_port, 0),
                }
            t = await running
            cpu1 = procs.settle_cpu(worker)
            d = await loadgen.run_closed_loop(s_direct, c, duration=plan.stream_duration, warmup=1)
        if c == 1:
            cpu1 = procs.settle_cpu(worker)
        out["stream"][c] = {"direct": stream_row(d), "costr": stream_row(t)}
        out["cpu"][f"stream_c{c}"] = _cpu_row(cpu1 - cpu0, len(t.results))

    # CPU per forwarded chunk: the same number of streams with few and with many chunks; the
    # difference divided by the extra chunks is the marginal cost of one chunk.
    for variant, body in (("pass-through", STREAM_BODY), ("usage injected", STREAM_BODY_NO_USAGE)):
        log(f"CPU per chunk ({variant})")
        runs = {}
        for chunks in (0, plan.long_chunks):
            knobs = {"x-fake-chunks": str(chunks), "x-fake-delay-ms": str(plan.long_delay_ms)}
            _, s_through = targets(setup, body, knobs)
            cpu0 = procs.settle_cpu(worker)
            stats = await loadgen.run_closed_loop(
                s_through, plan.long_concurrency, requests=plan.long_streams, warmup=1
            )
            cpu1 = procs.settle_cpu(worker)
            reads = sum(len(r.reads) for r in stats.results)
            runs[chunks] = (cpu1 - cpu0, len(stats.results), reads, stats.errors)
        (short, n_short, _, e1), (long_, n_long, reads_long, e2) = (
            runs[0],
            runs[plan.long_chunks],
        )
        extra_chunks = plan.long_chunks * n_long
        delta = long_ - short
        out["cpu"][f"chunk_{variant}"] = {
            "streams": n_long,
            "chunks": plan.long_chunks,
            "extra_chunks": extra_chunks,
            "reads_per_long_stream": reads_long / max(1, n_long),
            "process_ms": _ms(delta.process) / extra_chunks,
            "threads_ms": _ms(delta.threads) / extra_chunks,
            "loop_ms": _ms(delta.main_thread) / extra_chunks,
            "per_stream_ms": _ms(short.threads) / max(1, n_short),
            "errors": e1 + e2,
        }

    out["memory_kib"] = procs.memory(worker)
    out["worker_pid_unchanged"] = procs.children_of(setup.master_pid) == [worker]
    return out


def versions() -> dict[str, str]:
    from importlib import metadata

    names = ("django", "uvicorn", "gunicorn", "uvicorn-worker", "uvloop")
    found = {"python": platform.python_version()}
    for name in (*names, "httptools", "h11", "anyio"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def machine() -> dict[str, str]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mhz = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            mhz = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": model,
        "mhz": mhz,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "loadavg": Path("/proc/loadavg").read_text().split(" ")[0:3],
    }


def _on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases, for a smoke run")
    parser.add_argument("--no-pin", action="store_true", help="let the scheduler place processes")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--json", help="also dump the raw figures to this file")
    parser.add_argument(
        "--server",
        choices=("gunicorn", "granian"),
        default="gunicorn",
        help="gunicorn + one uvicorn worker (the Procfile's), or granian to compare",
    )
    parser.add_argument(
        "--usage-redis",
        metavar="URL",
        help="send usage to a Redis stream at URL (the production layout: no writer in the "
        "worker) instead of the embedded writer; the stream is deleted afterwards",
    )
    parser.add_argument(
        "--usage-sink-off",
        action="store_true",
        help="replace the worker's usage sink by a no-op (to measure what metering costs)",
    )
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2

    signal.signal(signal.SIGTERM, _on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="costr-bench-"))
    children = procs.Processes()
    started = time.monotonic()
    usage_stream = None

    def log(message: str) -> None:
        print(f"[bench {time.monotonic() - started:6.1f}s] {message}", flush=True)

    try:
        log(f"setting up an isolated Costr in {tmp}")
        meta = {"machine": machine(), "versions": versions()}
        usage_stream = (
            (args.usage_redis, f"costr:bench:{os.getpid()}") if args.usage_redis else None
        )
        setup = start(
            plan, tmp, children, pin, args.server, usage_stream, sink_off=args.usage_sink_off
        )
        log(f"fake on :{setup.fake_port}, Costr on :{setup.costr_port} (worker {setup.worker_pid})")
        sanity_check(setup)
        try:
            import uvloop

            results = uvloop.run(measure(plan, setup, log))
        except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
            results = asyncio.run(measure(plan, setup, log))
        children.check_alive()
        meta.update(
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            pinned=setup.pinned,
            server=setup.server,
            usage_sink="off" if args.usage_sink_off else "redis" if usage_stream else "embedded",
            quick=args.quick,
            plan=plan,
            duration_s=time.monotonic() - started,
            loadavg_end=Path("/proc/loadavg").read_text().split(" ")[0:3],
        )
        text = report.render(results, meta)
        Path(args.output).write_text(text)
        if not args.quick:
            summary_path = Path(args.output).with_suffix(".json")
            summary_path.write_text(json.dumps(report.security_summary(results, meta), indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps({"results": results}, indent=1, default=str))
        print(report.summary(results))
        log(f"wrote {args.output}")
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except Exception:
        for name in ("gunicorn.log", "fake.log"):
            path = tmp / name
            if path.exists():
                tail = path.read_text(errors="replace")[-3000:]
                print(f"--- {name} (tail) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        if usage_stream is not None:
            _delete_stream(*usage_stream)


def _delete_stream(url: str, stream: str) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=5).delete(stream)
    except redis.RedisError as error:
        print(f"could not delete the usage stream {stream}: {error}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
