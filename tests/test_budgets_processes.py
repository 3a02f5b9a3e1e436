"""Budgets enforced by the Procfile's processes (DESIGN.md "Budgets, limits and alerts"; issue
#18's "tests with real processes").

``web`` is gunicorn with two uvicorn workers, as the Procfile runs it, with the usage ``writer``
beside it, both on a PostgreSQL database of this module's own and a redis-server of this
module's own (``tests.outage.RedisServer``: it is flushed, frozen with SIGSTOP and thawed; the
shared Redis is never touched). The fake provider reports, per request, the usage the test
chose (``x-fake-usage``), no larger than the request's own upper estimate (input tokens at most
the body's bytes, output at most ``max_tokens``), as a real provider does.

What is checked is what the design promises: two workers never admit more together than the
limit plus one request, whatever the concurrency; other customers and organizations go on; the
spend outlives the workers and a flush of Redis (counters rebuilt from the stored events); a
store that does not answer forwards fail-open budgets' requests and refuses fail-closed ones,
and enforcement resumes by itself once it answers again.
"""

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import redis

from costr.throttle import StoreHealth
from tests.outage import ROOT, RedisServer, free_port, wait_until
from tests.test_production import Process, _procfile, _production_env, _with_database

PYTHON = str(Path(sys.executable))
# gpt-4o-mini in the price catalog: $0.15 per million input tokens, $0.60 per million output.
MODEL = "gpt-4o-mini"
INPUT_PRICE, OUTPUT_PRICE = Decimal("0.15"), Decimal("0.60")
MAX_TOKENS = 100
# The race's limit: each request reserves about $0.000095 (its ~230-byte body as input tokens,
# MAX_TOKENS as output), so about 30 requests fit however the 200 arrive.
RACE_LIMIT = Decimal("0.003")
RACE_REQUESTS = 200
# Small limits, reached after a handful of requests sent one at a time.
SMALL_LIMIT = Decimal("0.0003")
# Bounds on how long a test may hang, not performance thresholds.
WRITER_TIMEOUT = 60.0
REQUEST_TIMEOUT = 30.0

SEED = """
import json, zoneinfo
from datetime import UTC, datetime
from apps.accounts.models import Organization
from apps.accounts.services import user_signup
from apps.budgets.services import budget_create
from apps.keys.services import provider_key_create, proxy_token_create

# A zone where it is about noon: no day budget's period ends while the module runs.
offset = datetime.now(UTC).hour - 12
zone = "Etc/GMT" if offset == 0 else f"Etc/GMT{offset:+d}"
zoneinfo.ZoneInfo(zone)
seeded = {"zone": zone}
for slug, budgets in SLUGS.items():
    _, organization = user_signup(
        email=f"owner@{slug}.test", password=None, organization_name=slug, organization_slug=slug
    )
    Organization.objects.filter(pk=organization.pk).update(time_zone=zone)
    organization.refresh_from_db()
    provider_key_create(organization=organization, provider="openai", key=KEY, actor=None)
    token = proxy_token_create(organization=organization, name="app", scopes=["proxy"], actor=None)
    ids = {}
    for customer, (limit, fail_closed) in budgets.items():
        budget = budget_create(
            organization=organization, actor=None, scope="customer", customer=customer,
            period="day", limit_usd=limit, enforce=True, fail_closed=fail_closed,
        )
        ids[customer] = budget.public_id
    seeded[slug] = {"id": organization.pk, "token": token.plaintext, "budgets": ids}
print(json.dumps(seeded))
"""
ORG, OTHER = "budget-procs", "budget-procs-other"
BUDGETS = {
    ORG: {
        "race-capped": (str(RACE_LIMIT), False),
        "restart-capped": (str(SMALL_LIMIT), False),
        "pause-capped": (str(SMALL_LIMIT), False),
        "pause-open": ("100", False),
        "pause-closed": ("100", True),
    },
    # The same customer name in another organization, with room to spare.
    OTHER: {"race-capped": ("100", False)},
}


def cost_of(usage: dict) -> Decimal:
    """What the catalog charges for ``usage`` (worked out here, not by the code under test)."""
    return (
        Decimal(usage["prompt_tokens"]) * INPUT_PRICE
        + Decimal(usage["completion_tokens"]) * OUTPUT_PRICE
    ) / 10**6


def _nanos(usd: Decimal) -> int:
    return int((usd * 10**9).to_integral_value(rounding=ROUND_CEILING))


def _server_url() -> str:
    """The maintenance database of this run's PostgreSQL server (DATABASE_URL's, else the local
    one). The Procfile's processes share one database, so this module needs a server even when
    the rest of the suite runs embedded."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        url = "postgres://postgres@127.0.0.1:5432/postgres"
    try:
        psycopg.connect(_with_database(url, "postgres"), connect_timeout=5).close()
    except psycopg.OperationalError as error:
        pytest.fail(f"these tests need a PostgreSQL server ({urlsplit(url).netloc}): {error}")
    return _with_database(url, "postgres")


@pytest.fixture(scope="module")
def database():
    server = _server_url()
    name = f"costr_budgets_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run(args: list[str], env: dict[str, str], **kwargs) -> str:
    done = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kwargs
    )
    assert done.returncode == 0, f"{args[:3]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass
class Stack:
    """The web and writer processes, their Redis and database, and the seeded organizations."""

    env: dict[str, str]
    database: str
    redis: RedisServer
    base: str
    seeded: dict
    logs: Path
    web: Process
    writer: Process

    def output(self) -> str:
        return self.web.output()[-6000:] + "\n--- writer ---\n" + self.writer.output()[-3000:]

    def start_web(self) -> None:
        self.web = Process(_procfile()["web"], self.env, self.logs / f"web-{time.time()}.log")

        def healthy():
            assert self.web.alive(), self.web.output()
            try:
                return httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=90, message=self.web.output)

    def token(self, slug: str) -> str:
        return self.seeded[slug]["token"]

    def budget_id(self, slug: str, customer: str) -> str:
        return self.seeded[slug]["budgets"][customer]

    def request(self, slug: str, customer: str, tag: str, rng: random.Random):
        """(url, headers, body, usage) of one chat completion for ``customer``: usage drawn
        at random within what the body and max_tokens allow."""
        body = json.dumps(
            {
                "model": MODEL,
                "messages": [
                    {
                        "role": "user",
                        "content": f"{tag}: summarise the attached note in two short "
                        "sentences for the customer's weekly report, please.",
                    }
                ],
                "max_tokens": MAX_TOKENS,
            },
            separators=(",", ":"),
        ).encode()
        prompt = rng.randint(20, len(body))
        completion = rng.randint(1, MAX_TOKENS)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        headers = {
            "authorization": f"Bearer {self.token(slug)}",
            "content-type": "application/json",
            "x-costr-customer": customer,
            "x-fake-usage": json.dumps(usage),
        }
        return f"{self.base}/p/{slug}/openai/v1/chat/completions", headers, body, usage

    def chat(self, slug: str, customer: str, rng: random.Random | None = None) -> httpx.Response:
        """One request on a connection of its own (so either worker may take it)."""
        url, headers, body, _ = self.request(
            slug, customer, f"{customer}-{uuid.uuid4().hex}", rng or random.Random()
        )
        return httpx.post(url, headers=headers, content=body, timeout=REQUEST_TIMEOUT)

    def stored(self, slug: str, customer: str) -> dict[str, Decimal]:
        """request id → cost_usd of the stored events of ``customer`` in ``slug``."""
        with psycopg.connect(self.database, connect_timeout=5) as db:
            rows = db.execute(
                "SELECT e.request_id, e.cost_usd FROM usage_usageevent e"
                " JOIN usage_customer c ON c.id = e.customer_id"
                " JOIN accounts_organization o ON o.id = e.organization_id"
                " WHERE o.slug = %s AND c.external_id = %s",
                [slug, customer],
            ).fetchall()
        return dict(rows)

    def wait_stored(self, slug: str, customer: str, request_ids: set[str]) -> dict[str, Decimal]:
        wait_until(
            lambda: request_ids <= self.stored(slug, customer).keys(),
            timeout=WRITER_TIMEOUT,
            message=self.output,
        )
        return self.stored(slug, customer)

    def counters(self, slug: str, customer: str) -> dict[str, tuple[int, int]]:
        """The store's counters of that customer's budget: key → (spent, reserved) nanos."""
        client = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        try:
            pattern = (
                f"costr:budget:{{{self.seeded[slug]['id']}}}:{self.budget_id(slug, customer)}:*"
            )
            found = {}
            for key in client.scan_iter(match=pattern):
                spent, reserved = client.hmget(key, "spent", "reserved")
                found[key.decode()] = (int(spent), int(reserved))
            return found
        finally:
            client.close()


@pytest.fixture(scope="module")
def stack(database, fake_provider, tmp_path_factory):
    logs = tmp_path_factory.mktemp("budget-processes")
    server = RedisServer(logs / "redis")
    server.start()
    port = free_port()
    env = _production_env(
        DATABASE_URL=database,
        REDIS_URL=server.url,
        PORT=str(port),
        WEB_CONCURRENCY="2",
        COSTR_UPSTREAM_OPENAI=fake_provider.url,
        COSTR_VAR_DIR=str(logs / "var"),
        COSTR_USAGE_SPOOL_DIR=str(logs / "var" / "spool"),
        SECURE_SSL_REDIRECT="False",
    )
    (logs / "var").mkdir()
    writer = built = None
    try:
        _run(["/bin/sh", "-c", f"exec {_procfile()['release']}"], env)
        seed = f"KEY = {fake_provider.keys['openai']!r}\nSLUGS = {BUDGETS!r}\n{SEED}"
        out = _run([PYTHON, "manage.py", "shell", "-c", seed], env)
        seeded = json.loads(out.strip().splitlines()[-1])
        writer = Process(_procfile()["usage_writer"], env, logs / "writer.log")
        built = Stack(
            env=env,
            database=database,
            redis=server,
            base=f"http://127.0.0.1:{port}",
            seeded=seeded,
            logs=logs,
            web=None,  # started below
            writer=writer,
        )
        built.start_web()
        yield built
    finally:
        # The web now running (a test restarts it), then the writer; each stops cleanly.
        statuses = [p.stop() for p in (built and built.web, writer) if p is not None]
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        server.stop()
    assert statuses == [0] * len(statuses)


def _cap(stack: Stack, customer: str) -> set[str]:
    """Send requests for ``customer`` one at a time until its budget refuses one; the request
    ids of those admitted."""
    admitted = set()
    for _ in range(40):
        answer = stack.chat(ORG, customer)
        if answer.status_code == 429:
            assert answer.headers["x-costr-error"] == "budget_exceeded", answer.text
            return admitted
        assert answer.status_code == 200, answer.text
        admitted.add(answer.headers["x-costr-request-id"])
    raise AssertionError(f"{customer}'s budget never refused:\n{stack.output()}")


def _store_warnings(stack: Stack) -> str:
    """The web workers' log lines about the budget store, for a failure message."""
    lines = [line for line in stack.web.output().splitlines() if "costr.budgets" in line]
    return "\n".join(lines[-20:])


def _assert_refused(answer: httpx.Response, budget_id: str, code: str = "budget_exceeded"):
    assert answer.status_code == 429, answer.text
    assert answer.headers["x-costr-error"] == code
    assert answer.headers["x-costr-budget-id"] == budget_id
    assert int(answer.headers["retry-after"]) > 0
    assert answer.json()["error"]["code"] == code  # OpenAI's error shape


async def _race(stack: Stack, tag: str) -> dict[str, list]:
    """RACE_REQUESTS requests for the capped customer at once, and meanwhile requests for
    another customer of the organization and for the same customer name in another one."""
    rng = random.Random(tag)
    plan = [(ORG, "race-capped")] * RACE_REQUESTS + [
        (ORG, "race-neighbour"),
        (OTHER, "race-capped"),
    ] * 20
    rng.shuffle(plan)
    limits = httpx.Limits(max_connections=len(plan), max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT) as client:

        async def send(index: int, slug: str, customer: str):
            url, headers, body, usage = stack.request(slug, customer, f"{tag}-{index}", rng)
            # Held at the provider a moment, so that the requests overlap there.
            headers["x-fake-first-byte-delay-ms"] = "50"
            answer = await client.post(url, headers=headers, content=body)
            return slug, customer, answer, usage

        done = await asyncio.gather(*(send(i, *target) for i, target in enumerate(plan)))
    found: dict[str, list] = {"capped": [], "neighbour": [], "other": []}
    for slug, customer, answer, usage in done:
        name = "other" if slug == OTHER else "capped" if customer == "race-capped" else "neighbour"
        found[name].append((answer, usage))
    return found


def test_two_workers_under_200_concurrent_requests_admit_at_most_the_limit_plus_one(
    stack, fake_provider
):
    tag = f"race-{uuid.uuid4().hex}"
    found = asyncio.run(_race(stack, tag))
    capped = found["capped"]
    admitted = [(a, usage) for a, usage in capped if a.status_code == 200]
    refused = [a for a, _ in capped if a.status_code == 429]
    assert len(capped) == RACE_REQUESTS
    assert len(admitted) + len(refused) == RACE_REQUESTS, [a.status_code for a, _ in capped]
    assert refused, "the budget refused nothing"
    assert admitted, "the budget admitted nothing"
    budget = stack.budget_id(ORG, "race-capped")
    for answer in refused:
        _assert_refused(answer, budget)
    # The other customer and the other organization were all served meanwhile.
    for name in ("neighbour", "other"):
        assert [a.status_code for a, _ in found[name]] == [200] * 20, name

    # Nothing refused reached the provider.
    reached = [r for r in fake_provider.requests if tag.encode() in (r.body or b"")]
    assert len(reached) == len(admitted) + 40

    # Each admitted request is one stored event, at the catalog's price of the usage reported.
    expected = {a.headers["x-costr-request-id"]: cost_of(usage) for a, usage in admitted}
    stored = stack.wait_stored(ORG, "race-capped", set(expected))
    assert stored == expected
    spent = sum(stored.values())
    # The promise: admitted spend never passes the limit by more than one request's cost.
    assert spent <= RACE_LIMIT + max(stored.values()), (
        spent,
        len(admitted),
        _store_warnings(stack),
    )
    # And the counter the two workers shared holds that spend, nothing left reserved.
    wait_until(
        lambda: [r for _, r in stack.counters(ORG, "race-capped").values()] == [0],
        timeout=WRITER_TIMEOUT,
        message=lambda: str(stack.counters(ORG, "race-capped")),
    )
    # Every admitted request was reserved and settled on it: none went past it unchecked, as
    # a request admitted fail-open (the store failing under the load) would.
    ((counted, _),) = stack.counters(ORG, "race-capped").values()
    assert counted == _nanos(spent), _store_warnings(stack)
    # The other organization's customer of the same name was counted apart from it.
    other = found["other"]
    other_stored = stack.wait_stored(
        OTHER, "race-capped", {a.headers["x-costr-request-id"] for a, _ in other}
    )
    assert other_stored == {a.headers["x-costr-request-id"]: cost_of(u) for a, u in other}
    wait_until(
        lambda: [r for _, r in stack.counters(OTHER, "race-capped").values()] == [0],
        timeout=WRITER_TIMEOUT,
    )
    ((other_counted, _),) = stack.counters(OTHER, "race-capped").values()
    assert other_counted == _nanos(sum(other_stored.values()))


def test_the_spend_outlives_a_restart_of_the_workers_and_a_flush_of_redis(stack):
    customer = "restart-capped"
    budget = stack.budget_id(ORG, customer)
    admitted = _cap(stack, customer)
    stored = stack.wait_stored(ORG, customer, admitted)
    assert stored.keys() == admitted

    # Both workers stopped as a platform stops them, then started again: the counter lives in
    # Redis, not in a worker.
    assert stack.web.stop() == 0, stack.web.output()
    stack.start_web()
    for _ in range(4):  # new connections, so both new workers answer
        _assert_refused(stack.chat(ORG, customer), budget)
    assert stack.chat(ORG, "restart-neighbour").status_code == 200

    # Redis loses everything: the counter is rebuilt from the events the writer stored.
    client = redis.Redis.from_url(stack.redis.url, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()
    assert stack.counters(ORG, customer) == {}
    for _ in range(4):
        _assert_refused(stack.chat(ORG, customer), budget)
    spent = sum(stored.values())
    ((counted, reserved),) = stack.counters(ORG, customer).values()
    assert (counted, reserved) == (_nanos(spent), 0)
    # The usage stream was flushed too; the writer picks up again.
    served = stack.chat(ORG, "restart-neighbour")
    assert served.status_code == 200
    stack.wait_stored(ORG, "restart-neighbour", {served.headers["x-costr-request-id"]})


def test_with_redis_frozen_fail_open_forwards_fail_closed_refuses_and_both_resume(stack):
    capped = "pause-capped"
    _cap(stack, capped)
    # Each budget's counter exists before the freeze.
    for customer in ("pause-open", "pause-closed"):
        assert stack.chat(ORG, customer).status_code == 200

    forwarded: set[str] = set()
    stack.redis.process.send_signal(signal.SIGSTOP)
    try:
        for _ in range(4):  # new connections, so both workers meet the frozen store
            # The client's timeout bounds the wait: the store's own timeout is half a second.
            opened = stack.chat(ORG, "pause-open")
            assert opened.status_code == 200, opened.text
            forwarded.add(opened.headers["x-costr-request-id"])
            closed = stack.chat(ORG, "pause-closed")
            _assert_refused(closed, stack.budget_id(ORG, "pause-closed"), "budget_unavailable")
    finally:
        stack.redis.process.send_signal(signal.SIGCONT)

    # The store is left alone a moment after failing; then the capped customer is refused
    # again by every worker, and the fail-closed budget admits again.
    time.sleep(StoreHealth.retry_seconds)
    capped_id = stack.budget_id(ORG, capped)

    def enforced() -> bool:
        answers = [stack.chat(ORG, capped) for _ in range(4)]
        for answer in answers:
            if answer.status_code == 200:  # fail-open until the worker asks the store again
                assert answer.headers.get("x-costr-request-id")
        return all(answer.status_code == 429 for answer in answers)

    wait_until(enforced, timeout=REQUEST_TIMEOUT, interval=0.5, message=stack.output)
    _assert_refused(stack.chat(ORG, capped), capped_id)
    assert stack.chat(ORG, "pause-closed").status_code == 200

    # The requests forwarded while Redis was frozen were spooled and arrive once it answers.
    stack.wait_stored(ORG, "pause-open", forwarded)
