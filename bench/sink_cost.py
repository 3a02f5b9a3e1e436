"""What the usage sink costs the proxy: one worker sending usage to a Redis stream (production)
and one whose sink is a no-op (`bench/sink_off.py`), measured side by side.

Both workers are started once and pinned to the same core; the fake providers, the load generator
and a Redis of the benchmark's own (`redis-server`, nothing kept on disk) share the other, as the
fake provider does in every proxy benchmark: in production Redis is not on the web worker's core.
Measurement windows of WINDOW seconds at concurrency 32 alternate between the two workers, ROUNDS
times each, so whatever else the machine does meanwhile falls on both alike; each window ends only
when its worker has gone quiet (the sink thread's last batch counted). The worker is saturated at
that concurrency, so its CPU time per request is what bounds its throughput; both are reported,
as medians over the rounds. Issue #5's target: the sink costs under 5 %.

    .venv/bin/python -m bench.sink_cost [--rounds 5]
"""

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import redis

from bench import loadgen, procs, run

CONCURRENCY = 32
WINDOW_SECONDS = 5.0
TARGET = 0.05


async def _window(setup: run.Setup) -> tuple[float, float]:
    """(requests per second, worker CPU ms per request) of one window."""
    _, through = run.targets(setup, run.CHAT_BODY)
    await loadgen.run_closed_loop(through, CONCURRENCY, requests=200, warmup=5)
    before = procs.settle_cpu(setup.worker_pid)
    stats = await loadgen.run_closed_loop(through, CONCURRENCY, duration=WINDOW_SECONDS, warmup=3)
    after = procs.settle_cpu(setup.worker_pid)
    if stats.errors:
        raise RuntimeError(f"{stats.errors} requests failed against worker {setup.worker_pid}")
    return stats.rps, (after - before).threads * 1000 / len(stats.results)


async def _measure(setups: dict[str, run.Setup], rounds: int) -> dict[str, list]:
    figures: dict[str, list] = {mode: [] for mode in setups}
    for _ in range(rounds):
        for mode, setup in setups.items():
            figures[mode].append(await _window(setup))
    return figures


def _redis(children: procs.Processes, scratch: Path, pin: bool) -> str:
    """A Redis of this benchmark's own on the other core; its URL."""
    port = procs.free_port()
    children.start(
        "redis",
        [
            shutil.which("redis-server") or "redis-server",
            "--bind",
            run.HOST,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        env=dict(os.environ),
        cwd=scratch,
        log=scratch / "redis.log",
        cpus={1} if pin else None,
    )
    url = f"redis://{run.HOST}:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def measure(rounds: int) -> dict[str, list]:
    pin = len(os.sched_getaffinity(0)) >= 2
    children = procs.Processes()
    with tempfile.TemporaryDirectory(prefix="costr-sink-cost-") as scratch:
        try:
            stream = (_redis(children, Path(scratch), pin), "costr:usage")
            setups = {}
            for mode in ("off", "redis"):
                tmp = Path(scratch) / mode
                tmp.mkdir()
                setups[mode] = run.start(
                    run.Plan(),
                    tmp,
                    children,
                    pin,
                    usage_stream=stream if mode == "redis" else None,
                    sink_off=mode == "off",
                )
            return asyncio.run(_measure(setups, rounds))
        finally:
            children.stop_all()


def section(figures: dict[str, list]) -> str:
    rps = {mode: statistics.median(r for r, _ in runs) for mode, runs in figures.items()}
    cpu = {mode: statistics.median(c for _, c in runs) for mode, runs in figures.items()}
    rounds = len(figures["off"])
    throughput_cost = 1 - rps["redis"] / rps["off"]
    cpu_cost = cpu["redis"] / cpu["off"] - 1
    lines = [
        "## Usage sink: cost to the proxy",
        "",
        f"Two workers side by side on the same core, windows of {WINDOW_SECONDS:.0f} s at "
        f"concurrency {CONCURRENCY} alternating between them, {rounds} rounds each; medians. "
        "*redis*: usage records go to a Redis stream (production), Redis on the other core; "
        "*off*: the worker's sink replaced by a no-op (`bench/sink_off.py`). Target: the sink "
        "costs under 5 %.",
        "",
        "| sink | req/s (each round) | req/s, median | CPU ms/request (each round) | "
        "CPU ms/request, median |",
        "| --- | --- | ---: | --- | ---: |",
    ]
    for mode in ("off", "redis"):
        each_rps = ", ".join(f"{r:,.0f}" for r, _ in figures[mode])
        each_cpu = ", ".join(f"{c:.4f}" for _, c in figures[mode])
        lines.append(f"| {mode} | {each_rps} | {rps[mode]:,.0f} | {each_cpu} | {cpu[mode]:.4f} |")
    verdict = "PASS" if max(throughput_cost, cpu_cost) < TARGET else "MISS"
    lines += [
        "",
        f"Cost of the sink: {throughput_cost * 100:.1f} % of throughput, "
        f"{cpu_cost * 100:+.1f} % CPU per request "
        f"({(cpu['redis'] - cpu['off']) * 1000:.1f} µs); {verdict} against 5 %.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    started = time.monotonic()
    print(section(measure(args.rounds)))
    print(f"<!-- measured in {time.monotonic() - started:.0f} s -->")


if __name__ == "__main__":
    main()
