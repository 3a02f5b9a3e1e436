"""What a budget costs the proxy, and how far a 200-request race gets past one (issue #18).

Two Costr workers, each as ``bench.run`` starts it (gunicorn, one uvicorn worker, embedded usage
writer, its own SQLite, pinned to CPU 0) and both with ``REDIS_URL`` on a Redis of this
benchmark's own (on CPU 1 with the fakes and the client), so the budget store is Redis as in
production; they differ in one thing: the second one's organization has a customer budget on the
customer every benchmark request names (``bench-customer``), its limit too high ever to refuse,
so each request reserves before it is forwarded and settles after. Each block is
``bench.regression``'s: at concurrency 1, rounds of one request direct to the fake and one
through each worker, order alternating (added p50 = a worker's p50 minus direct's; CPU per
request = the worker's CPU time, all threads, over its requests), then a window at concurrency
32 on both at once. Target: the budget adds at most 0.3 ms at p50.

Then the race: a second budget on the budgeted worker, for customer ``bench-race``, with a limit
about 30 requests' reservations fill, and 200 requests for that customer sent at once (usage
drawn per request within what its body and ``max_tokens`` allow, held 50 ms at the fake so they
overlap). Reported: admitted spend (the stored events' cost, once the worker's writer has them)
over the limit; DESIGN.md's promise is at most the limit plus one request's cost.

Prints a markdown section; merges its figures into docs/benchmarks.json under "budgets".

    .venv/bin/python -m bench.budgets [--blocks 4] [--pairs 1000] [--json docs/benchmarks.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import redis

from bench import procs, regression, run, sink_cost

ROOT = run.ROOT
TARGET_MS = 0.3
NO_BUDGET, BUDGET = "no budget", "one customer budget"
# High enough never to refuse: each benchmark request reserves at most about $0.08 (no
# max_tokens, so the model's whole context window as output).
HIGH_LIMIT = "1000000"
RACE_CUSTOMER, RACE_LIMIT, RACE_REQUESTS, RACE_MAX_TOKENS = "bench-race", Decimal("0.003"), 200, 100

CREATE_BUDGET = """
from apps.accounts.models import Organization
from apps.budgets.services import budget_create
budget = budget_create(
    organization=Organization.objects.get(slug=ORG), actor=None, scope="customer",
    customer=CUSTOMER, period="day", limit_usd=LIMIT,
)
print(budget.public_id)
"""
EVENTS = """
import json
from django.db.models import Count, Max, Sum
from apps.accounts.models import Organization
from apps.usage.models import UsageEvent
found = UsageEvent.objects.for_org(Organization.objects.get(slug=ORG)).filter(
    customer__external_id=CUSTOMER
).aggregate(count=Count("id"), total=Sum("cost_usd"), largest=Max("cost_usd"))
print(json.dumps({key: str(value) for key, value in found.items()}))
"""


def log(message: str) -> None:
    print(f"[budgets {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _shell(env: dict[str, str], script: str, **names: str) -> str:
    """``manage.py shell -c`` in a worker's environment (its SQLite); the last line printed."""
    head = "".join(f"{name} = {value!r}\n" for name, value in names.items())
    done = subprocess.run(  # noqa: S603 - our own interpreter and manage.py
        [sys.executable, "manage.py", "shell", "-c", head + script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py shell failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def _wait_for_counter(setup: run.Setup, redis_url: str, budget_id: str) -> None:
    """Until a request through ``setup`` has a counter in Redis: the budget is enforced."""
    url = f"http://{run.HOST}:{setup.costr_port}/p/{run.ORG}/openai/v1/chat/completions"
    headers = {
        "authorization": f"Bearer {setup.token}",
        "content-type": "application/json",
        "x-costr-customer": "bench-customer",
    }
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 30
    try:
        while not list(client.scan_iter(match=f"costr:budget:*:{budget_id}:*")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"budget {budget_id} has no counter: the worker ignores it")
            httpx.post(url, headers=headers, content=run.CHAT_BODY, timeout=10).raise_for_status()
            time.sleep(0.2)
    finally:
        client.close()


def _race_request(setup: run.Setup, index: int, rng: random.Random):
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {
                    "role": "user",
                    "content": f"race {index}: summarise the attached note in two short "
                    "sentences for the customer's weekly report, please.",
                }
            ],
            "max_tokens": RACE_MAX_TOKENS,
        },
        separators=(",", ":"),
    ).encode()
    prompt, completion = rng.randint(20, len(body)), rng.randint(1, RACE_MAX_TOKENS)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    headers = {
        "authorization": f"Bearer {setup.token}",
        "content-type": "application/json",
        "x-costr-customer": RACE_CUSTOMER,
        "x-fake-usage": json.dumps({**usage, "total_tokens": prompt + completion}),
        "x-fake-first-byte-delay-ms": "50",
    }
    return body, headers


async def _race_statuses(setup: run.Setup) -> list[int]:
    rng = random.Random(20261207)  # noqa: S311 - usage figures, not secrets
    url = f"http://{run.HOST}:{setup.costr_port}/p/{run.ORG}/openai/v1/chat/completions"
    limits = httpx.Limits(max_connections=RACE_REQUESTS, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def send(index: int) -> int:
            body, headers = _race_request(setup, index, rng)
            return (await client.post(url, headers=headers, content=body)).status_code

        return await asyncio.gather(*(send(i) for i in range(RACE_REQUESTS)))


def race(setup: run.Setup, env: dict[str, str], log_path: Path) -> dict:
    _shell(env, CREATE_BUDGET, ORG=run.ORG, CUSTOMER=RACE_CUSTOMER, LIMIT=str(RACE_LIMIT))
    time.sleep(1.0)  # the worker hears of the new budget through Redis (keycache)
    warnings_before = log_path.read_text(errors="replace").count("budget store")
    statuses = asyncio.run(_race_statuses(setup))
    admitted = statuses.count(200)
    deadline = time.monotonic() + 60
    while True:
        found = json.loads(_shell(env, EVENTS, ORG=run.ORG, CUSTOMER=RACE_CUSTOMER))
        if int(found["count"]) >= admitted or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    nano = Decimal("0.000000001")
    total = Decimal(found["total"] if found["total"] != "None" else 0).quantize(nano)
    largest = Decimal(found["largest"] if found["largest"] != "None" else 0).quantize(nano)
    store_lines = [
        line for line in log_path.read_text(errors="replace").splitlines() if "budget store" in line
    ][warnings_before:]
    return {
        "requests": RACE_REQUESTS,
        "admitted": admitted,
        "refused": statuses.count(429),
        "other": len(statuses) - admitted - statuses.count(429),
        "stored": int(found["count"]),
        "limit_usd": str(RACE_LIMIT),
        "spent_usd": str(total),
        "largest_usd": str(largest),
        "ratio": float(total / RACE_LIMIT),
        "bound": float((RACE_LIMIT + largest) / RACE_LIMIT),
        "store_warnings": store_lines[:5],
    }


def measure(blocks: int, pairs: int) -> tuple[dict, dict, dict]:
    pin = len(os.sched_getaffinity(0)) >= 2
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "blocks": blocks,
        "pairs": pairs,
        "commit": regression._commit(ROOT),
    }
    services, workers = procs.Processes(), procs.Processes()
    scratch = Path(tempfile.mkdtemp(prefix="costr-bench-budgets-"))
    try:
        redis_url = sink_cost._redis(services, scratch, pin)
        # Redis is the budget store (and cache); usage stays with the embedded writer, as in
        # every other proxy benchmark, so the two workers differ only by the budget.
        extra = {"REDIS_URL": redis_url, "COSTR_USAGE_REDIS_URL": ""}
        setups, envs = {}, {}
        for index, name in enumerate((NO_BUDGET, BUDGET)):
            tmp = scratch / str(index)
            tmp.mkdir()
            envs[name] = {**run.isolated_env(tmp / "var"), **extra}
            log(f"starting the worker with {name}")
            setups[name] = run.start(run.Plan(), tmp, workers, pin, extra_env=extra)
            run.sanity_check(setups[name])
        budget_id = _shell(
            envs[BUDGET], CREATE_BUDGET, ORG=run.ORG, CUSTOMER="bench-customer", LIMIT=HIGH_LIMIT
        )
        _wait_for_counter(setups[BUDGET], redis_url, budget_id)
        results: dict[str, list[dict]] = {name: [] for name in setups}
        for index in range(blocks):
            log(f"block {index + 1}/{blocks}")
            for name, row in asyncio.run(regression._block(setups, pairs)).items():
                results[name].append(row)
            workers.check_alive()
        log("the 200-request race")
        raced = race(setups[BUDGET], envs[BUDGET], scratch / "1" / "gunicorn.log")
        meta["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        return results, raced, meta
    finally:
        workers.stop_all()
        services.stop_all()
        shutil.rmtree(scratch, ignore_errors=True)


def differences(results: dict) -> dict[str, float]:
    """Median over blocks of (budget minus no budget), for each figure of ``bench.regression``."""
    return {
        key: statistics.median(
            b[key] - a[key] for a, b in zip(results[NO_BUDGET], results[BUDGET], strict=True)
        )
        for key, _ in regression.FIGURES
    }


def summary(results: dict, raced: dict, meta: dict) -> dict:
    diff = differences(results)

    def median(name: str, key: str) -> float:
        return round(statistics.median(row[key] for row in results[name]), 4)

    return {
        "date": meta["date"],
        "added_p50_ms_no_budget": median(NO_BUDGET, "added_p50"),
        "added_p50_ms_budget": median(BUDGET, "added_p50"),
        "added_p50_ms_difference": round(diff["added_p50"], 4),
        "cpu_ms_per_request_no_budget": median(NO_BUDGET, "cpu_c1"),
        "cpu_ms_per_request_budget": median(BUDGET, "cpu_c1"),
        "race_admitted_spend_over_limit": round(raced["ratio"], 4),
        "race_limit_plus_one_request_over_limit": round(raced["bound"], 4),
    }


def section(results: dict, raced: dict, meta: dict) -> str:
    diff = differences(results)
    verdict = "PASS" if diff["added_p50"] <= TARGET_MS else "**MISS**"
    lines = [
        "## Budgets: cost per request and the 200-request race",
        "",
        f"`python -m bench.budgets`, {meta['date']}, tree {meta['commit']}; load average "
        f"{meta['loadavg_start']} at the start, {meta['loadavg_end']} at the end. Two workers "
        "as `bench.run` starts them, both with `REDIS_URL` on a Redis of the benchmark's own "
        "(the budget store) and the embedded usage writer; *one customer budget*: the "
        "organization has a budget on the customer every request names (limit never reached), "
        "so each request reserves in Redis before it is forwarded and settles after; *no "
        "budget*: the same without it. "
        f"{meta['blocks']} blocks as `bench.regression`'s: {meta['pairs']:,} rounds at "
        "concurrency 1 (direct, then each worker, order alternating), then "
        f"{regression.WINDOW:.0f} s at concurrency 32 on both at once (sharing CPU 0).",
        "",
        f"| figure | {NO_BUDGET} | {BUDGET} | difference (median of blocks) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, label in regression.FIGURES:
        digits = 0 if key == "rps_c32" else 3
        cells = [
            ", ".join(f"{row[key]:,.{digits}f}" for row in results[name])
            for name in (NO_BUDGET, BUDGET)
        ]
        lines.append(
            f"| {label} (each block) | {cells[0]} | {cells[1]} | {diff[key]:+,.{digits}f} |"
        )
    errors = {
        name: sum(row["errors_c1"] + row["errors_c32"] for row in rows)
        for name, rows in results.items()
    }
    lines += [
        "",
        f"Added p50 with the budget: {diff['added_p50']:+.3f} ms; {verdict} against "
        f"+{TARGET_MS} ms. CPU per request: {diff['cpu_c1'] * 1000:+.0f} µs at concurrency 1, "
        f"{diff['cpu_c32'] * 1000:+.0f} µs at 32. Errors: "
        + ", ".join(f"{name} {count}" for name, count in errors.items())
        + ".",
        "",
        f"**Race.** {raced['requests']} requests at once for one customer with a "
        f"${raced['limit_usd']} daily budget (about 30 requests' reservations), on the "
        f"budgeted worker: {raced['admitted']} admitted, {raced['refused']} refused, "
        f"{raced['other']} other; {raced['stored']} events stored. Admitted spend "
        f"${raced['spent_usd']} = **{raced['ratio']:.3f} times the limit**; the promise is at most "
        f"{raced['bound']:.3f} times (the limit plus the largest request, "
        f"${raced['largest_usd']}): "
        + ("held." if raced["ratio"] <= raced["bound"] else "**broken**.")
        + (
            " The worker logged, during the race: "
            + "; ".join(f"`{line.split(' ', 2)[-1]}`" for line in raced["store_warnings"][:2])
            + "."
            if raced["store_warnings"]
            else " The worker logged no budget store trouble during the race."
        ),
        "",
    ]
    return "\n".join(lines)


def write_summary(path: Path, figures: dict) -> None:
    """Merge the figures into ``path`` (docs/benchmarks.json, which ``bench.run`` rewrites)."""
    found = {}
    with contextlib.suppress(FileNotFoundError, ValueError):
        found = json.loads(path.read_text())
    found["budgets"] = figures
    path.write_text(json.dumps(found, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--json", default=str(ROOT / "docs" / "benchmarks.json"))
    args = parser.parse_args(argv)
    results, raced, meta = measure(args.blocks, args.pairs)
    if args.json:
        write_summary(Path(args.json), summary(results, raced, meta))
    print(section(results, raced, meta))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main())
