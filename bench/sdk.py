"""`make bench`: the Python client SDK (sdk/python) against the plain official client.

One machine, one run: the fake provider and Costr (gunicorn, one uvicorn worker, as
``bench.run`` starts them), the openai client in this process, one call at a time.
- Costr up: chat completions through Costr with ``openai.OpenAI`` and with
  ``costr_sdk.OpenAI``; the difference per call is what the SDK's transport costs (wall time and
  this process's CPU time).
- Costr down: the SDK pointed at a port that refuses connections, and at one that never
  completes a connect (a listener whose backlog is full, as a host that drops packets). The first
  call meets the failure and goes direct; later calls go direct at once (the breaker). Compared
  with the same call made straight to the fake.

    .venv/bin/python -m bench.sdk [--calls N]
"""

import argparse
import contextlib
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import costr_sdk
import httpx2
import openai

from bench import procs, run

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}
WARM_UP = 50
ROUNDS = 5


def _per_call(client, calls: int) -> tuple[float, float]:
    """Mean wall and CPU (this process) microseconds per call."""
    for _ in range(WARM_UP):
        client.chat.completions.create(**CHAT)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        client.chat.completions.create(**CHAT)
    return (
        (time.perf_counter() - wall) / calls * 1e6,
        (time.process_time() - cpu) / calls * 1e6,
    )


def _unresponsive_port() -> tuple[int, list[socket.socket]]:
    """A port whose connects never complete: a listener that never accepts, its backlog full."""
    listener = socket.socket()
    listener.bind((run.HOST, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    held = [listener]
    for _ in range(4):
        client = socket.socket()
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            client.connect((run.HOST, port))
        held.append(client)
    time.sleep(0.2)
    return port, held


def _outage(url: str, settings: dict, later: int) -> tuple[float, float]:
    """Milliseconds of the first call after Costr went away, and the mean of the later ones."""
    costr_sdk.configure(**{**settings, "url": url})
    client = costr_sdk.OpenAI(max_retries=0)
    started = time.perf_counter()
    client.chat.completions.create(**CHAT)
    first = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    for _ in range(later):
        client.chat.completions.create(**CHAT)
    return first, (time.perf_counter() - started) / later * 1000


def measure(calls: int) -> dict[str, float]:
    pin = len(os.sched_getaffinity(0)) >= 2
    children = procs.Processes()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="costr-bench-sdk-") as scratch:
        try:
            setup = run.start(run.Plan(), Path(scratch), children, pin)
            costr_url = f"http://{run.HOST}:{setup.costr_port}"
            fake_url = f"http://{run.HOST}:{setup.fake_port}"
            settings = {
                "url": costr_url,
                "org": run.ORG,
                "token": setup.token,
                "fallback_keys": {"openai": run.KEYS["openai"]},
                "fallback_base_urls": {"openai": f"{fake_url}/v1"},
                "spool_dir": Path(scratch) / "spool",
            }
            costr_sdk.configure(**settings)
            plain = openai.OpenAI(
                base_url=f"{costr_url}/p/{run.ORG}/openai/v1",
                api_key=setup.token,
                max_retries=0,
                http_client=httpx2.Client(),
            )
            sdk = costr_sdk.OpenAI(max_retries=0)
            # Alternating rounds, the median of each: Costr and the fake warm up and drift
            # while one client runs, which a single run of each would count against it.
            rounds: dict[str, list[tuple[float, float]]] = {"plain": [], "sdk": []}
            for _ in range(ROUNDS):
                rounds["plain"].append(_per_call(plain, calls // ROUNDS))
                rounds["sdk"].append(_per_call(sdk, calls // ROUNDS))
            for name, results in rounds.items():
                figures[f"{name}_us"] = statistics.median(r[0] for r in results)
                figures[f"{name}_cpu_us"] = statistics.median(r[1] for r in results)
            direct = openai.OpenAI(
                base_url=f"{fake_url}/v1",
                api_key=run.KEYS["openai"],
                max_retries=0,
                http_client=httpx2.Client(),
            )
            figures["direct_ms"] = _per_call(direct, calls // 4)[0] / 1000
            with socket.socket() as probe:
                probe.bind((run.HOST, 0))
                refused_port = probe.getsockname()[1]
            later = calls // 4
            figures["refused_first_ms"], figures["refused_later_ms"] = _outage(
                f"http://{run.HOST}:{refused_port}", settings, later
            )
            port, held = _unresponsive_port()
            try:
                figures["silent_first_ms"], figures["silent_later_ms"] = _outage(
                    f"http://{run.HOST}:{port}", settings, later
                )
            finally:
                for sock in held:
                    sock.close()
            figures["connect_timeout_s"] = costr_sdk.runtime().settings.connect_timeout
            costr_sdk.runtime().close()
        finally:
            children.stop_all()
    return figures


def section(f: dict[str, float], calls: int) -> str:
    lines = [
        "## Python client SDK",
        "",
        f"`costr_sdk.OpenAI` against the plain `openai.OpenAI`, both through Costr, {calls} "
        f"chat completions one at a time from one process, in {ROUNDS} alternating rounds "
        "(medians); then Costr away (`bench/sdk.py`).",
        "",
        "| Costr up | per call | client CPU per call |",
        "| --- | --- | --- |",
        f"| openai.OpenAI through Costr | {f['plain_us']:,.0f} µs | {f['plain_cpu_us']:,.0f} µs |",
        f"| costr_sdk.OpenAI through Costr | {f['sdk_us']:,.0f} µs | {f['sdk_cpu_us']:,.0f} µs |",
        f"| the SDK's own cost | {f['sdk_us'] - f['plain_us']:+,.0f} µs | "
        f"{f['sdk_cpu_us'] - f['plain_cpu_us']:+,.0f} µs |",
        "",
        f"Costr down (direct to the fake without Costr: {f['direct_ms']:.2f} ms a call; connect "
        f"timeout {f['connect_timeout_s']:g} s):",
        "",
        "| Costr | first call | each later call (breaker open) |",
        "| --- | --- | --- |",
        f"| refuses connections | {f['refused_first_ms']:.2f} ms | "
        f"{f['refused_later_ms']:.2f} ms |",
        f"| never completes a connect | {f['silent_first_ms']:,.0f} ms | "
        f"{f['silent_later_ms']:.2f} ms |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    print(section(measure(args.calls), args.calls))


if __name__ == "__main__":
    main()
