"""`make bench`, second part: the metering and reporting benchmarks, appended to the proxy's
docs/benchmarks.md as sections of their own.

They measure PostgreSQL, so they run against a server, never the embedded SQLite: the one
``BENCH_DATABASE_URL`` names (default ``postgres://postgres@127.0.0.1:5432/postgres``). The sink
and writer benchmarks write into a scratch database ``costr_bench`` (dropped and created here);
the reporting benchmark makes its own (``costr_bench_reporting``). Without a reachable
PostgreSQL the sections say so instead of guessing.

    .venv/bin/python -m bench.extras [--output docs/benchmarks.md]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = "costr_bench"
# Each benchmark is its own process: each sets Django up on the database it is given.
# Each prints a markdown section with its own heading.
SECTIONS = [
    ("Usage sink", "bench.sink"),
    ("Usage writer", "bench.writer"),
    ("Usage writer: from the Redis stream", "bench.stream_writer"),
    ("Reporting", "bench.reporting"),
]


def _server() -> str:
    return os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def _recreate_scratch(server: str) -> str:
    import psycopg

    parts = urlsplit(server)
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)')
        db.execute(f'CREATE DATABASE "{SCRATCH}"')
    return urlunsplit(parts._replace(path=f"/{SCRATCH}"))


def _run_section(title: str, module: str, database_url: str) -> str:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "costr.settings.local",
    }
    done = subprocess.run(  # noqa: S603 - our own modules, run with this interpreter
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout)[-2000:]
        return f"## {title}\n\nNot measured: `python -m {module}` failed:\n\n```\n{tail}\n```\n"
    return done.stdout


def _proxy_run(extra: list[str], output: Path) -> dict:
    """One short proxy benchmark run (`bench.run --quick`), its raw figures."""
    subprocess.run(  # noqa: S603 - our own module, run with this interpreter
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--output",
            str(output.with_suffix(".md")),
            "--json",
            str(output),
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    return json.loads(output.read_text())["results"]


def sink_cost_section(redis_url: str, rounds: int = 2) -> str:
    """Throughput and CPU per request of one worker at the highest concurrency, usage sent to a
    Redis stream (production) against the sink replaced by a no-op; runs alternate."""
    figures: dict[str, list[tuple[float, float]]] = {"redis": [], "off": []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_number in range(rounds):
            for mode, extra in (
                ("redis", ["--usage-redis", redis_url]),
                ("off", ["--usage-sink-off"]),
            ):
                results = _proxy_run(extra, Path(scratch) / f"{mode}-{round_number}.json")
                top = max(results["plain"], key=int)
                figures[mode].append(
                    (
                        results["plain"][top]["costr"]["rps"],
                        results["cpu"][f"plain_c{top}"]["threads_ms"],
                    )
                )
    best = {mode: max(runs) for mode, runs in figures.items()}
    cpu = {mode: min(c for _, c in runs) for mode, runs in figures.items()}
    throughput_cost = 1 - best["redis"][0] / best["off"][0]
    lines = [
        "## Usage sink: cost to the proxy",
        "",
        f"`bench.run --quick`, {rounds} alternating rounds, one worker at the highest concurrency; "
        "best throughput and lowest CPU per request of each mode. *Redis*: usage records go to "
        "the Redis stream (production); *off*: the worker's sink replaced by a no-op "
        "(`bench/sink_off.py`). Target: the sink costs under 5 % of throughput.",
        "",
        "| sink | req/s (each round) | best req/s | CPU ms/request (lowest) |",
        "| --- | --- | ---: | ---: |",
    ]
    for mode in ("off", "redis"):
        rounds_text = ", ".join(f"{rps:,.0f}" for rps, _ in figures[mode])
        lines.append(f"| {mode} | {rounds_text} | {best[mode][0]:,.0f} | {cpu[mode]:.3f} |")
    lines += [
        "",
        f"Throughput cost of the sink: {throughput_cost * 100:.1f} % "
        f"({'PASS' if throughput_cost < 0.05 else 'MISS'} against 5 %); CPU per request "
        f"{(cpu['redis'] / cpu['off'] - 1) * 100:+.1f} %.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    server = _server()
    try:
        scratch = _recreate_scratch(server)
    except Exception as error:  # any failure to reach the server is reported
        sections = [
            f"## Metering and reporting\n\nNot measured: no PostgreSQL at `{server}` ({error}).\n"
        ]
    else:
        sections = []
        for title, module in SECTIONS:
            print(f"[bench] {title}…", flush=True)
            url = server if module == "bench.reporting" else scratch
            sections.append(_run_section(title, module, url).strip() + "\n")
        print("[bench] Usage sink: cost to the proxy…", flush=True)
        redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
        try:
            sections.append(sink_cost_section(redis_url))
        except subprocess.CalledProcessError as error:
            sections.append(f"## Usage sink: cost to the proxy\n\nNot measured: {error}\n")
    with Path(args.output).open("a") as output:
        output.write("\n" + "\n".join(sections))
    print(f"[bench] appended {len(sections)} sections to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
