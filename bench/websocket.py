"""`make bench`: one WebSocket session relayed by Costr, and the same session direct to the fake.

One run, one machine, the same client: the fake provider and Costr (gunicorn, one uvicorn worker,
as ``bench.run`` starts them), a ``websockets`` client in this process. The session is the fake's
echo mode on the OpenAI Realtime path (``x-fake-ws-echo``): the client sends FRAMES binary
messages of SIZE bytes as fast as the session takes them while a second task reads the echoes,
so every message crosses Costr twice (client to provider, provider to client). Reported: messages
per second the client gets back, directly and through Costr, and the CPU time of Costr's worker
(and of the fake) per relayed message.

    .venv/bin/python -m bench.websocket [--frames N] [--size BYTES]
"""

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import websockets

from bench import procs, run

WARM_UP = 500


async def _session(url: str, headers: dict[str, str], frames: int, size: int) -> float:
    """Seconds for ``frames`` messages of ``size`` bytes to go out and come back."""
    payload = os.urandom(size)
    async with websockets.connect(
        url, additional_headers=headers, max_size=None, compression=None
    ) as conn:

        async def send(count: int) -> None:
            for _ in range(count):
                await conn.send(payload)

        async def receive(count: int) -> None:
            for _ in range(count):
                assert await conn.recv() == payload

        await asyncio.gather(send(WARM_UP), receive(WARM_UP))
        started = time.perf_counter()
        await asyncio.gather(send(frames), receive(frames))
        return time.perf_counter() - started


def measure(frames: int, size: int) -> dict[str, dict[str, float]]:
    pin = len(os.sched_getaffinity(0)) >= 2
    children = procs.Processes()
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="costr-bench-ws-") as scratch:
        try:
            setup = run.start(run.Plan(), Path(scratch), children, pin)
            host = run.HOST
            sessions = {
                "direct": (
                    f"ws://{host}:{setup.fake_port}/v1/realtime?model=gpt-realtime",
                    {"authorization": f"Bearer {run.KEYS['openai']}"},
                ),
                "costr": (
                    f"ws://{host}:{setup.costr_port}/p/{run.ORG}/openai/v1/realtime"
                    "?model=gpt-realtime",
                    {"authorization": f"Bearer {setup.token}"},
                ),
            }
            for name, (url, headers) in sessions.items():
                worker_before = procs.settle_cpu(setup.worker_pid)
                fake_before = procs.cpu_sample(setup.fake_pid)
                elapsed = asyncio.run(
                    _session(url, {**headers, "x-fake-ws-echo": "1"}, frames, size)
                )
                worker = procs.cpu_sample(setup.worker_pid) - worker_before
                fake = procs.cpu_sample(setup.fake_pid) - fake_before
                relayed = 2 * (frames + WARM_UP)
                figures[name] = {
                    "per_second": frames / elapsed,
                    "costr_cpu_us": worker.threads / relayed * 1e6,
                    "fake_cpu_us": fake.threads / relayed * 1e6,
                }
        finally:
            children.stop_all()
    return figures


def section(figures: dict[str, dict[str, float]], frames: int, size: int) -> str:
    direct, costr = figures["direct"], figures["costr"]
    lines = [
        "## WebSocket relay",
        "",
        f"One session, the fake's echo mode: {frames} binary messages of {size} bytes sent as "
        "fast as the session takes them while the echoes are read (each message crosses Costr "
        "twice). CPU time is per message crossing, warm-up included (`bench/websocket.py`).",
        "",
        "| | messages echoed per second | Costr worker CPU per message | fake CPU per message |",
        "| --- | --- | --- | --- |",
        f"| direct to the fake | {direct['per_second']:,.0f} | - | "
        f"{direct['fake_cpu_us']:.1f} µs |",
        f"| through Costr | {costr['per_second']:,.0f} | {costr['costr_cpu_us']:.1f} µs | "
        f"{costr['fake_cpu_us']:.1f} µs |",
        "",
        f"Through Costr: {costr['per_second'] / direct['per_second']:.2f} of the direct rate.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args(argv)
    print(section(measure(args.frames, args.size), args.frames, args.size))


if __name__ == "__main__":
    main()
