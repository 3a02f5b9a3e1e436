"""What the usage sink costs the proxy: one worker sending usage to a Redis stream (production)
and one whose sink is a no-op (`bench/sink_off.py`), loaded at the same time.

Both workers are pinned to the same core; the fake providers, the load generator
and a Redis of the benchmark's own (`redis-server`, nothing kept on disk) share the other, as the
fake provider does in every proxy benchmark: in production Redis is not on the web worker's core.
In each round both workers are loaded at once, at concurrency 32 each, for WINDOW seconds: they
share their core, so whatever slows the machine meanwhile slows both alike, and each round gives
a ratio of the two. Each window ends only when its worker has gone quiet (the sink's last batch
counted). The worker started first runs about 1 % slower whatever its sink, so half the rounds
are measured on a pair started the other way round. Reported: every round's throughput and CPU
per request, and the medians of the rounds' ratios. Issue #5's target: the sink costs under 5 %.

Windows taking turns instead (one worker loaded at a time) were the method before: on a shared
machine whose speed drifts by 20 % within a minute, their rounds differed by as much, while the
ratio of two workers loaded together holds within about 1 % with both sinks off (``--same``).

    .venv/bin/python -m bench.sink_cost [--rounds 6] [--same]
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


async def _round(setups: dict[str, run.Setup]) -> dict[str, tuple[float, float]]:
    """(requests per second, worker CPU ms per request) of each worker, loaded together."""
    through = {mode: run.targets(setup, run.CHAT_BODY)[1] for mode, setup in setups.items()}
    await asyncio.gather(
        *(loadgen.run_closed_loop(t, CONCURRENCY, requests=200, warmup=5) for t in through.values())
    )
    before = {mode: procs.settle_cpu(setup.worker_pid) for mode, setup in setups.items()}
    together = loadgen.StartTogether(len(through))  # one start for every window
    stats = await asyncio.gather(
        *(
            loadgen.run_closed_loop(
                t, CONCURRENCY, duration=WINDOW_SECONDS, warmup=3, together=together
            )
            for t in through.values()
        )
    )
    after = {mode: procs.settle_cpu(setup.worker_pid) for mode, setup in setups.items()}
    figures = {}
    for (mode, setup), stat in zip(setups.items(), stats, strict=True):
        if stat.errors:
            raise RuntimeError(f"{stat.errors} requests failed against worker {setup.worker_pid}")
        cpu = (after[mode] - before[mode]).threads * 1000 / len(stat.results)
        figures[mode] = (stat.rps, cpu)
    return figures


async def _measure(setups: dict[str, run.Setup], rounds: int) -> dict[str, list]:
    figures: dict[str, list] = {mode: [] for mode in setups}
    for index in range(rounds):
        # Which worker is loaded first alternates, so neither gains from the order.
        order = list(setups.items())[:: -1 if index % 2 else 1]
        for mode, figure in (await _round(dict(order))).items():
            figures[mode].append(figure)
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


def measure(rounds: int, *, same: bool = False) -> dict[str, list]:
    """Figures per round for "off" and "redis"; with ``same``, the second worker's sink is off
    too (the method's own error: both figures should agree).

    The worker started first comes out about 1 % slower, whatever its sink (seen with
    ``--same``), so half the rounds are measured on a pair started in the other order."""
    pin = len(os.sched_getaffinity(0)) >= 2
    figures: dict[str, list] = {"off": [], "redis": []}
    services = procs.Processes()
    with tempfile.TemporaryDirectory(prefix="costr-sink-cost-") as scratch:
        try:
            stream = (_redis(services, Path(scratch), pin), "costr:usage")
            for half, order in enumerate((("off", "redis"), ("redis", "off"))):
                workers = procs.Processes()
                try:
                    setups = {}
                    for mode in order:
                        tmp = Path(scratch) / f"{mode}-{half}"
                        tmp.mkdir()
                        setups[mode] = run.start(
                            run.Plan(),
                            tmp,
                            workers,
                            pin,
                            usage_stream=stream if mode == "redis" else None,
                            sink_off=mode == "off" or same,
                        )
                    count = rounds // 2 if half == 0 else rounds - rounds // 2
                    for mode, runs in asyncio.run(_measure(setups, count)).items():
                        figures[mode] += runs
                finally:
                    workers.stop_all()
        finally:
            services.stop_all()
    return figures


def section(figures: dict[str, list], *, same: bool = False) -> str:
    pairs = list(zip(figures["off"], figures["redis"], strict=True))
    throughput_cost = statistics.median(
        1 - redis_rps / off_rps for (off_rps, _), (redis_rps, _) in pairs
    )
    cpu_cost = statistics.median(redis_cpu / off_cpu - 1 for (_, off_cpu), (_, redis_cpu) in pairs)
    cpu_off = statistics.median(cpu for _, cpu in figures["off"])
    second = "off (second worker)" if same else "redis"
    lines = [
        "## Usage sink: cost to the proxy",
        "",
        f"Two workers on the same core, loaded together at concurrency {CONCURRENCY} each for "
        f"{WINDOW_SECONDS:.0f} s, {len(pairs)} rounds; each round gives the ratio of the two, "
        "and the medians of those ratios are reported. *redis*: usage records go to a Redis "
        "stream (production), Redis on the other core; *off*: the worker's sink replaced by a "
        "no-op (`bench/sink_off.py`). Target: the sink costs under 5 %."
        + (" Both sinks off here: the method's own error." if same else ""),
        "",
        "| sink | req/s (each round) | CPU ms/request (each round) |",
        "| --- | --- | --- |",
    ]
    for mode, label in (("off", "off"), ("redis", second)):
        each_rps = ", ".join(f"{r:,.0f}" for r, _ in figures[mode])
        each_cpu = ", ".join(f"{c:.4f}" for _, c in figures[mode])
        lines.append(f"| {label} | {each_rps} | {each_cpu} |")
    verdict = "PASS" if max(throughput_cost, cpu_cost) < TARGET else "MISS"
    lines += [
        "",
        f"Cost of the sink: {throughput_cost * 100:.1f} % of throughput, "
        f"{cpu_cost * 100:+.1f} % CPU per request "
        f"(about {cpu_cost * cpu_off * 1000:.1f} µs); "
        + ("no sink measured (`--same`)." if same else f"{verdict} against 5 %."),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--same", action="store_true", help="both sinks off: measure the method's own error"
    )
    args = parser.parse_args()
    started = time.monotonic()
    print(section(measure(args.rounds, same=args.same), same=args.same))
    print(f"<!-- measured in {time.monotonic() - started:.0f} s -->")


if __name__ == "__main__":
    main()
