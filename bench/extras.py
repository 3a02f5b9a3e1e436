"""`make bench`, second part: the metering and reporting benchmarks, appended to the proxy's
docs/benchmarks.md as sections of their own.

They measure PostgreSQL, so they run against a server, never the embedded SQLite: the one
``BENCH_DATABASE_URL`` names (default ``postgres://postgres@127.0.0.1:5432/postgres``). The sink
and writer benchmarks write into a scratch database ``costr_bench`` (dropped and created here);
the reporting benchmark makes its own (``costr_bench_reporting``). Without a reachable
PostgreSQL the sections say so instead of guessing.

With ``BENCH_BASE_TREE`` set to a checkout of an older commit (``git worktree add``), the proxy's
CPU per request and added latency are also compared with that tree's, in the same run
(``bench.regression``).

    .venv/bin/python -m bench.extras [--output docs/benchmarks.md]
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bench import sink_cost

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = "costr_bench"
# Each benchmark is its own process: each sets Django up on the database it is given.
# Each prints a markdown section with its own heading.
SECTIONS = [
    ("Usage sink", "bench.sink"),
    ("Usage writer", "bench.writer"),
    ("Usage writer: from the Redis stream", "bench.stream_writer"),
    ("Reporting", "bench.reporting"),
    # One worker offered more than it serves for 60 s, embedded and Redis mode (Redis db 7 or
    # BENCH_REDIS_URL; its own database costr_bench_memory on the same server).
    ("Worker memory under sustained overload", "bench.memory"),
    # One WebSocket session relayed, against the same session to the fake directly (embedded
    # Costr, as bench.run starts it: the scratch database is not used).
    ("WebSocket relay", "bench.websocket"),
    ("Python client SDK", "bench.sdk"),  # costr_sdk.OpenAI against openai.OpenAI, and outages
    # A customer budget's cost per request (Redis store) and the 200-request race's overspend;
    # two embedded workers and a Redis of its own; also merges its figures into benchmarks.json.
    ("Budgets", "bench.budgets"),
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
        try:
            sections.append(sink_cost.section(sink_cost.measure(rounds=6)))
        except Exception as error:  # a benchmark that could not run says so in the report
            sections.append(f"## Usage sink: cost to the proxy\n\nNot measured: {error}\n")
    base = os.environ.get("BENCH_BASE_TREE")
    if base:
        # The proxy's overhead against an older checkout (a git worktree), in the same run.
        print(f"[bench] Proxy overhead against {base}…", flush=True)
        title = "Proxy overhead: this tree against an older one"
        done = subprocess.run(  # noqa: S603 - our own module, run with this interpreter
            [sys.executable, "-m", "bench.regression", "--base", base],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            sections.append(done.stdout.strip() + "\n")
        else:
            tail = (done.stderr or done.stdout)[-2000:]
            sections.append(f"## {title}\n\nNot measured:\n\n```\n{tail}\n```\n")
    with Path(args.output).open("a") as output:
        output.write("\n" + "\n".join(sections))
    print(f"[bench] appended {len(sections)} sections to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
