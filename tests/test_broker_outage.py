"""The task queue's broker (Redis) stopped or frozen while people use the dashboard.

A dashboard action changes the database and then queues the work that follows (purge now,
delete an organization's data, re-price). With the broker down the change must stand, the page
must answer normally, and the work must still happen, exactly once, when the broker is back
(DESIGN.md, Promise 5; Promise 8 for retention and deletion).

The processes are real: the dashboard runs in a child process with the settings a deployment
has (``costr.settings.local`` with ``REDIS_URL``: tasks are published, not run in process; the
test settings run them eagerly), against a redis-server of this test's own
(``tests.outage.RedisServer``; the shared Redis is never stopped); a real Celery worker takes
the work once the broker is back.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import AuditEvent, Organization
from apps.accounts.tests.factories import MembershipFactory, OrganizationFactory
from apps.usage.models import PendingReprice, UsageEvent
from apps.usage.tests.factories import store_usage
from tests.outage import ROOT, RedisServer, child_env, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

# Limits on hanging, not performance thresholds.
CHILD_TIMEOUT = 120.0
RECOVERY_TIMEOUT = 60.0

# The dashboard, as a deployment runs it: each action a POST through Django's whole stack, as a
# signed-in person; what came back is printed as JSON (status, then the page it led to).
DASHBOARD = textwrap.dedent(
    """
    import json, sys
    import django
    django.setup()
    from django.test import Client
    from apps.accounts.models import User

    user_id, actions = int(sys.argv[1]), json.loads(sys.argv[2])
    client = Client(raise_request_exception=False)
    client.force_login(User.objects.get(pk=user_id))
    answers = []
    for url, data in actions:
        response = client.post(url, data)
        page = ""
        if response.status_code == 302:
            page = client.get(response["Location"], follow=True).content.decode()
        answers.append({"status": response.status_code, "page": page})
    print("ANSWERS " + json.dumps(answers), flush=True)
    """
)


def _deployment_env(settings, redis_url: str) -> dict[str, str]:
    return child_env(
        settings,
        DJANGO_SETTINGS_MODULE="costr.settings.local",
        DEBUG="False",
        REDIS_URL=redis_url,
        ALLOWED_HOSTS="testserver",
        HOME=os.environ.get("HOME", str(ROOT)),
    )


def _dashboard(settings, redis_url: str, user, actions, log) -> list[dict]:
    """Run the actions in a child process; the hang guard fails a request that never ends."""
    with open(log, "ab") as output:
        result = subprocess.run(
            [sys.executable, "-c", DASHBOARD, str(user.pk), json.dumps(actions)],
            cwd=ROOT,
            env=_deployment_env(settings, redis_url),
            stdout=subprocess.PIPE,
            stderr=output,
            text=True,
            timeout=CHILD_TIMEOUT,
        )
    assert result.returncode == 0, log.read_text()
    line = next(li for li in result.stdout.splitlines() if li.startswith("ANSWERS "))
    return json.loads(line.removeprefix("ANSWERS "))


class Worker:
    """``celery worker`` with the deployment's settings, on the test's broker and database."""

    def __init__(self, settings, redis_url: str, log) -> None:
        self.log = log
        self._output = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "--app", "costr", "worker", "--pool", "solo"),
                *("--loglevel", "INFO", "--without-heartbeat", "--without-mingle"),
            ],
            cwd=ROOT,
            env=_deployment_env(settings, redis_url),
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: "ready" in self.text(), timeout=RECOVERY_TIMEOUT, message=self.text)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def succeeded(self, task_name: str) -> int:
        return len(re.findall(rf"Task {re.escape(task_name)}\[[^\]]+\] succeeded", self.text()))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._output.close()


@pytest.fixture
def broker(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)
    server.stop()


def _days_ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def _sweep(broker_url: str, *task_names: str) -> None:
    """What beat does on its schedule: send the sweep tasks by name."""
    from celery import Celery

    sender = Celery(broker=broker_url)
    try:
        for name in task_names:
            sender.send_task(name)
    finally:
        sender.close()


SWEEPS = (
    "usage.purge_expired_all",
    "usage.organization_deletions_resume",
    "usage.reprices_resume",
)


def test_with_the_broker_stopped_dashboard_actions_answer_and_their_work_runs_once_it_is_back(
    settings, broker, tmp_path
):
    kept = OrganizationFactory()
    admin = MembershipFactory(organization=kept, role="owner").user
    old = store_usage(kept, timestamp=_days_ago(40).isoformat())
    recent = store_usage(
        kept,
        timestamp=_days_ago(1).isoformat(),
        model="gpt-4o-mini",
        input_tokens=1_000_000,
        cached_input_tokens=0,
        output_tokens=1_000_000,
    )
    doomed = OrganizationFactory()
    owner = MembershipFactory(organization=doomed, role="owner").user
    store_usage(doomed, timestamp=_days_ago(2).isoformat())
    since = _days_ago(2).strftime("%Y-%m-%d %H:%M")
    log = tmp_path / "dashboard.log"

    broker.stop()
    price, reprice, retention = _dashboard(
        settings,
        broker.url,
        admin,
        [
            (
                reverse("price_overrides", args=[kept.slug]),
                {
                    "model_pattern": "gpt-4o-mini",
                    "provider": "openai",
                    "valid_from": since,
                    "input_per_mtok": "2.5",
                    "cached_input_per_mtok": "1.25",
                    "cache_write_per_mtok": "",
                    "output_per_mtok": "10",
                },
            ),
            (reverse("price_reprice", args=[kept.slug]), {"since": since}),
            (reverse("retention", args=[kept.slug]), {"retention_days": 30, "confirm": "yes"}),
        ],
        log,
    )
    (deletion,) = _dashboard(
        settings,
        broker.url,
        owner,
        [(reverse("org_delete", args=[doomed.slug]), {"confirm_slug": doomed.slug})],
        log,
    )

    # Every page answered as usual, and says when the work will happen.
    assert [a["status"] for a in (price, reprice, retention, deletion)] == [302] * 4, (
        log.read_text()
    )
    assert "will start within" in reprice["page"]
    assert "will be deleted by the daily purge" in retention["page"]
    assert "will be gone within" in deletion["page"]
    # Each change was made; its work waits.
    kept.refresh_from_db()
    assert kept.retention_days == 30
    assert PendingReprice.objects.for_org(kept).count() == 1
    assert Organization.objects.get(pk=doomed.pk).deletion_requested_at is not None
    events = UsageEvent.objects.for_org(kept)
    assert events.filter(request_id=old["request_id"]).exists()
    assert events.get(request_id=recent["request_id"]).price_source == "catalog"
    # One line for each publish that failed, naming the task and the sweep that runs it.
    text = log.read_text()
    for task, sweep in [
        ("usage.reprice", "usage.reprices_resume"),
        ("usage.purge_expired", "usage.purge_expired_all"),
        ("usage.organization_data_delete", "usage.organization_deletions_resume"),
    ]:
        failed = [line for line in text.splitlines() if f"could not queue task {task}(" in line]
        assert len(failed) == 1 and sweep in failed[0], text

    # The broker is back; some minutes pass (the re-pricing sweep leaves a fresh request alone,
    # its message may still be on its way), then beat's sweeps run.
    broker.start()
    PendingReprice.objects.for_org(kept).update(requested_at=timezone.now() - timedelta(hours=1))
    worker = Worker(settings, broker.url, tmp_path / "worker.log")
    try:
        _sweep(broker.url, *SWEEPS)
        wait_until(
            lambda: (
                not Organization.objects.filter(pk=doomed.pk).exists()
                and not PendingReprice.objects.for_org(kept).exists()
                and not events.filter(request_id=old["request_id"]).exists()
            ),
            timeout=RECOVERY_TIMEOUT,
            message=worker.text,
        )
        # Beat runs again: nothing is left to do, so nothing is done twice.
        _sweep(broker.url, *SWEEPS)
        wait_until(
            lambda: all(worker.succeeded(name) == 2 for name in SWEEPS),
            timeout=RECOVERY_TIMEOUT,
            message=worker.text,
        )
        live = Organization.objects.filter(deletion_requested_at__isnull=True).count()
        wait_until(
            lambda: worker.succeeded("usage.purge_expired") == 2 * live,
            timeout=RECOVERY_TIMEOUT,
            message=worker.text,
        )
    finally:
        worker.stop()

    repriced = events.get(request_id=recent["request_id"])
    assert (repriced.cost_usd, repriced.price_source) == (Decimal("12.5"), "override")
    assert worker.succeeded("usage.reprice") == 1, worker.text()
    assert worker.succeeded("usage.organization_data_delete") == 1, worker.text()
    purges = AuditEvent.objects.for_org(kept).filter(action="retention.purged")
    assert purges.count() == 1
    assert purges.get().details["events"] == 1
    assert events.count() == 1


def test_a_frozen_broker_does_not_hold_the_page_and_the_work_still_runs(settings, broker, tmp_path):
    organization = OrganizationFactory()
    admin = MembershipFactory(organization=organization, role="owner").user
    old = store_usage(organization, timestamp=_days_ago(40).isoformat())
    log = tmp_path / "dashboard.log"

    broker.process.send_signal(signal.SIGSTOP)  # open connections stay open; nothing answers
    try:
        (retention,) = _dashboard(
            settings,
            broker.url,
            admin,
            [
                (
                    reverse("retention", args=[organization.slug]),
                    {"retention_days": 30, "confirm": "yes"},
                )
            ],
            log,
        )
    finally:
        broker.process.send_signal(signal.SIGCONT)

    assert retention["status"] == 302, log.read_text()
    organization.refresh_from_db()
    assert organization.retention_days == 30
    # A publish that timed out may still reach the broker once it answers again, and the daily
    # purge queues the same work: whichever comes first does it, and the other finds nothing.
    worker = Worker(settings, broker.url, tmp_path / "worker.log")
    try:
        _sweep(broker.url, "usage.purge_expired_all")
        events = UsageEvent.objects.for_org(organization)
        wait_until(
            lambda: not events.filter(request_id=old["request_id"]).exists(),
            timeout=RECOVERY_TIMEOUT,
            message=worker.text,
        )
    finally:
        worker.stop()
    assert AuditEvent.objects.for_org(organization).filter(action="retention.purged").count() == 1
