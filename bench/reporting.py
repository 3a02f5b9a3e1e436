"""Reporting at scale: how fast the dashboards and the spend report answer over a million events.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/x .venv/bin/python -m bench.reporting \\
        [--events 1000000] [--customers 500] [--days 90] [--runs 20] [--reuse]

On the PostgreSQL server that DATABASE_URL names (its database part is ignored), the scratch
database ``costr_bench_reporting`` is dropped, created and migrated. The demo traffic generator
(``apps.demo.traffic``, the one behind ``manage.py costr_demo``) then writes the events through
``usage_events_write``, the writer real traffic goes through, so the daily rollups are what
production would have; how long that takes is reported too (a writer throughput figure: pricing,
COPY, rollup upserts, customers). ``--reuse`` keeps data already generated with the same sizes.

Then, warm and logged in (Django's test client, in process, no network), each page and API call
is requested once untimed and ``--runs`` times timed: the overview and customers pages for the
default period and for 90 days, and ``/api/v1/reports/spend/`` grouped each way. Targets (issue
#6): pages under 300 ms, the spend API under 200 ms, at p95. For anything over its target the
slowest SQL statements of one request are listed, the slowest with PostgreSQL's EXPLAIN
ANALYZE.

``run(...)`` returns the markdown section for docs/benchmarks.md; the measuring itself happens in
a child process, so the caller's own Django set-up (if any) never meets the scratch database.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "costr_bench_reporting"
DEFAULT_SERVER = "postgres://postgres@127.0.0.1:5432/postgres"
ORG = "bench-reporting"
PAGE_TARGET_MS = 300
API_TARGET_MS = 200
WRITE_BATCH = 20_000


def _scratch_url(server_url: str) -> str:
    parts = urlsplit(server_url)
    if not parts.scheme.startswith("postgres"):
        raise SystemExit(f"DATABASE_URL must name a PostgreSQL server, not {parts.scheme!r}")
    return urlunsplit(parts._replace(path=f"/{DATABASE}"))


def _recreate_database(scratch_url: str) -> None:
    import psycopg

    maintenance = urlunsplit(urlsplit(scratch_url)._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{DATABASE}"')


def run(
    events: int = 1_000_000,
    customers: int = 500,
    days: int = 90,
    runs: int = 20,
    reuse: bool = False,
) -> str:
    """Measure in a child process (fresh Django, the scratch database); the markdown section."""
    scratch = _scratch_url(os.environ.get("DATABASE_URL") or DEFAULT_SERVER)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"REDIS_URL", "COSTR_USAGE_REDIS_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(
        DATABASE_URL=scratch,
        DJANGO_SETTINGS_MODULE="costr.settings.local",
        DEBUG="False",
        ALLOWED_HOSTS="testserver,127.0.0.1,localhost",
    )
    argv = [
        sys.executable,
        "-m",
        "bench.reporting",
        "--inner",
        f"--events={events}",
        f"--customers={customers}",
        f"--days={days}",
        f"--runs={runs}",
    ]
    if reuse:
        argv.append("--reuse")
    else:
        _recreate_database(scratch)
    child = subprocess.run(  # noqa: S603 - our own interpreter and module
        argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if child.returncode != 0:
        sys.stderr.write(child.stderr)
        raise SystemExit(f"bench.reporting failed (exit {child.returncode})")
    return child.stdout


# --- the child: everything below runs with Django set up on the scratch database ----------------


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[rank]


def _generate(events: int, customers: int, days: int, reuse: bool) -> dict:
    from django.db import connection

    from apps.accounts.models import Organization, User
    from apps.accounts.services import organization_create
    from apps.demo.customers import demo_customer_names_apply
    from apps.demo.organization import demo_organization_destroy
    from apps.demo.traffic import demo_records
    from apps.keys.services import proxy_token_create
    from apps.usage.metering.events import usage_events_write
    from apps.usage.models import UsageEvent

    organization = Organization.objects.filter(slug=ORG).first()
    params = {"events": events, "customers": customers, "days": days}
    marker = Path(ROOT / "var" / "bench-reporting.json")
    if reuse and organization is not None and marker.exists():
        saved = json.loads(marker.read_text())
        if (
            saved.get("params") == params
            and UsageEvent.objects.for_org(organization).count() == events
        ):
            return {**saved, "reused": True}
    if organization is not None:
        demo_organization_destroy(organization=organization)
    owner = User.objects.filter(email="bench@example.com").first() or User.objects.create_user(
        email="bench@example.com", password=None
    )
    organization = organization_create(name="Reporting bench", slug=ORG, owner=owner)

    end = datetime.now(UTC)
    # The generator and the writer timed apart: the writer's share is the throughput figure.
    generating = writing = 0.0
    stored = 0
    records = demo_records(
        organization_id=organization.pk, days=days, customers=customers, events=events, end=end
    )
    while True:
        started = time.perf_counter()
        batch = list(itertools.islice(records, WRITE_BATCH))
        generating += time.perf_counter() - started
        if not batch:
            break
        started = time.perf_counter()
        stored += usage_events_write(batch)
        writing += time.perf_counter() - started
    seconds = generating + writing
    demo_customer_names_apply(organization=organization, customers=customers, days=days)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    proxy_token_create(organization=organization, name="bench", scopes=["read"], actor=None)
    result = {
        "params": params,
        "stored": stored,
        "seconds": seconds,
        "generating": generating,
        "writing": writing,
        "end": end.isoformat(),
        "reused": False,
    }
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(result))
    return result


def _targets(days: int) -> list[tuple[str, str, int]]:
    """(what, path, target ms); pages by the URL names the dashboards register. Both take dates
    as whole days, the last one included: ``end`` is today."""
    from django.urls import NoReverseMatch, reverse

    today = datetime.now(UTC).date()
    start = (today - timedelta(days=days - 1)).isoformat()
    month_ago = (today - timedelta(days=29)).isoformat()
    found = []
    for what, name, query in (
        ("overview, default period (30 days)", "org_home", ""),
        (f"overview, {days} days", "org_home", f"?period=custom&start={start}&end={today}"),
        ("customers, default period, by spend", "customers", ""),
        (f"customers, {days} days", "customers", f"?period=custom&start={start}&end={today}"),
    ):
        try:
            path = reverse(name, args=[ORG])
        except NoReverseMatch:
            path = f"(no URL named {name!r})"
        found.append((what, path + query, PAGE_TARGET_MS))
    spend = "/api/v1/reports/spend/"
    for group_by in ("customer", "day", "model", "provider", "property:feature"):
        found.append(
            (
                f"spend API by {group_by}, 30 days",
                f"{spend}?group_by={group_by}&start={month_ago}&end={today}",
                API_TARGET_MS,
            )
        )
    found.append(
        (
            f"spend API by customer, {days} days",
            f"{spend}?group_by=customer&start={start}&end={today}",
            API_TARGET_MS,
        )
    )
    return found


def _summary(sql: str) -> str:
    """A statement in a few words: what it reads and how it groups."""
    table = re.search(r'\bFROM "(\w+)"', sql)
    grouped = re.search(r"\bGROUP BY (.+)$", sql)
    percentile = "percentile, " if "PERCENTILE" in sql.upper() else ""
    return f"{percentile}from {table[1] if table else '?'}" + (
        f", group by {grouped[1][:60]}" if grouped else ""
    )


def _explain(sql: str) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


def _measure(runs: int, days: int) -> list[dict]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from apps.accounts.models import Organization, User
    from apps.keys.services import proxy_token_create

    organization = Organization.objects.get(slug=ORG)
    page_client = Client()
    page_client.force_login(User.objects.get(email="bench@example.com"))
    token = proxy_token_create(
        organization=organization, name="bench run", scopes=["read"], actor=None
    ).plaintext
    api_client = Client(headers={"authorization": f"Bearer {token}"})
    results = []
    for what, path, target in _targets(days):
        if not path.startswith("/"):
            results.append({"what": what, "path": path, "status": None, "target": target})
            continue
        client = api_client if path.startswith("/api/") else page_client
        response = client.get(path)  # warm: caches, connection, templates
        if response.status_code != 200:
            results.append(
                {"what": what, "path": path, "status": response.status_code, "target": target}
            )
            continue
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            response = client.get(path)
            if hasattr(response, "streaming_content"):
                b"".join(response.streaming_content)
            timings.append((time.perf_counter() - started) * 1000)
        with CaptureQueriesContext(connection) as queries:
            client.get(path)
        statements = [(float(q["time"]) * 1000, q["sql"]) for q in queries.captured_queries]
        statements.sort(key=lambda item: item[0], reverse=True)
        slowest = statements[0] if statements else (0.0, "")
        row = {
            "what": what,
            "path": path,
            "status": 200,
            "target": target,
            "p50": _percentile(timings, 50),
            "p95": _percentile(timings, 95),
            "queries": len(statements),
            "sql_ms": sum(ms for ms, _ in statements),
            "slowest_ms": slowest[0],
            "slowest_sql": slowest[1],
            "top": [(ms, _summary(sql)) for ms, sql in statements[:5]],
        }
        if row["p95"] > target and slowest[1].lstrip().upper().startswith("SELECT"):
            row["explain"] = _explain(slowest[1])
        results.append(row)
    return results


def _render(generation: dict, results: list[dict], runs: int) -> str:
    from django.db import connection

    params = generation["params"]
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        (server_version,) = cursor.fetchone()
    lines = [
        "## Reporting",
        "",
        f"`python -m bench.reporting`: {params['events']:,} events for {params['customers']} "
        f"customers over {params['days']} days (the demo traffic generator), on PostgreSQL "
        f"{server_version} (scratch database `{DATABASE}`), measured "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Pages and API through Django's test client in "
        f"one process, warm (one untimed request first), {runs} timed requests each. Targets "
        f"(issue #6): pages under {PAGE_TARGET_MS} ms, spend API under {API_TARGET_MS} ms (p95).",
        "",
    ]
    if generation["reused"]:
        lines += [
            f"Data reused from an earlier run of the same sizes (written then at "
            f"{generation['stored'] / generation['writing']:,.0f} events/s).",
            "",
        ]
    else:
        lines += [
            f"Writing: {generation['stored']:,} events stored in batches of "
            f"{WRITE_BATCH:,} through `usage_events_write` (pricing, COPY, rollup upserts, "
            f"customers) in {generation['writing']:.1f} s, "
            f"**{generation['stored'] / generation['writing']:,.0f} events/s**; the generator "
            f"itself took {generation['generating']:.1f} s more "
            f"({generation['stored'] / generation['seconds']:,.0f} events/s end to end). "
            "`VACUUM ANALYZE` after writing, as autovacuum would have done.",
            "",
        ]
    lines += [
        "| what | request | queries | SQL ms | p50 ms | p95 ms | target | verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        if r["status"] != 200:
            status = "not built yet" if r["status"] in (None, 404) else f"HTTP {r['status']}"
            lines.append(f"| {r['what']} | `{r['path']}` | | | | | {r['target']} | {status} |")
            continue
        verdict = "PASS" if r["p95"] <= r["target"] else "**MISS**"
        lines.append(
            f"| {r['what']} | `{r['path']}` | {r['queries']} | {r['sql_ms']:.0f} | "
            f"{r['p50']:.0f} | {r['p95']:.0f} | {r['target']} | {verdict} |"
        )
    misses = [r for r in results if r["status"] == 200 and r["p95"] > r["target"]]
    for r in misses:
        lines += [
            "",
            f"**{r['what']}**: {r['sql_ms']:.0f} ms of SQL in {r['queries']} queries; the "
            "slowest: "
            + "; ".join(f"{ms:.0f} ms ({what})" for ms, what in r["top"])
            + ". The slowest statement and its plan:",
            "",
            "```sql",
            r["slowest_sql"][:2000],
            "```",
        ]
        if r.get("explain"):
            lines += ["", "```", r["explain"], "```"]
    lines.append("")
    return "\n".join(lines)


def _inner(args) -> None:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    generation = _generate(args.events, args.customers, args.days, args.reuse)
    results = _measure(args.runs, args.days)
    sys.stdout.write(_render(generation, results, args.runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--reuse", action="store_true", help="keep data of the same sizes")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        _inner(args)
        return
    print(
        run(
            events=args.events,
            customers=args.customers,
            days=args.days,
            runs=args.runs,
            reuse=args.reuse,
        )
    )


if __name__ == "__main__":
    main()
