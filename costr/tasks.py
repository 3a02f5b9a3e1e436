"""Queuing a Celery task from a request, once its transaction has committed, without ever failing
the request.

A dashboard action changes the database and then queues the work that follows from it (purge
now, delete an organization's data, re-price, first Stripe sync). The queuing happens after the
commit (``transaction.on_commit``), so when the broker (Redis) is down or frozen the change has
already been made: an exception there would answer 500 for something that was done, and a
publish that waits on a frozen Redis would hold the request for as long as it stays frozen.
``enqueue_on_commit`` therefore:

- bounds the publish: at most one retry (``PUBLISH_RETRY_POLICY``), each attempt bounded by the
  broker's socket timeouts (``CELERY_BROKER_TRANSPORT_OPTIONS`` in ``costr.settings.celery``), so
  a frozen broker costs a request a few seconds, not forever;
- logs a publish that failed once, with the task, its (id) arguments, the error's type and what
  runs the work later, never the broker URL (it may hold a password) nor the error's text;
- answers normally. Every task queued this way must be covered by a periodic sweep that finds
  the work still to be done in the database and queues it again (``fallback`` names it), so a
  message that was never sent, or sent and lost, delays the work and never loses it.

A publish that timed out may still reach the broker when it answers again, so the same work can
arrive twice (once from the message, once from the sweep): every task is safe to run twice
(STYLE.md).

In embedded mode (``CELERY_TASK_ALWAYS_EAGER``) the task runs in this process and its errors are
its own, not a broker's: they propagate as before.
"""

import logging
from dataclasses import dataclass

from celery import current_app
from django.db import transaction

logger = logging.getLogger("costr.tasks")

# One retry, at once: it reconnects a pooled connection that a Redis restart left dead, which
# is the usual reason a single publish fails while Redis is fine. More would only hold the
# request longer while the broker is really down.
PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}


@dataclass
class Enqueued:
    """What became of one ``enqueue_on_commit``: ``queued`` is None until the transaction
    commits (a view inside an outer transaction learns nothing before it returns), then True
    when the broker took the message and False when the work waits for ``fallback``."""

    task_name: str
    fallback: str
    queued: bool | None = None


def enqueue(task_name: str, *args, fallback: str) -> bool:
    """Queue the task named ``task_name`` now; False (logged) when the broker did not take it.

    Tasks are named, not imported: a service that queues its own follow-up work would
    otherwise import the tasks module that imports it (each app's ``ready()`` registers its
    tasks)."""
    task = current_app.tasks[task_name]
    if task.app.conf.task_always_eager:
        task.apply_async(args)
        return True
    try:
        task.apply_async(args, retry_policy=PUBLISH_RETRY_POLICY)
    except Exception as error:
        logger.warning(
            "could not queue task %s%r: the broker did not take it (%s); %s",
            task.name,
            args,
            type(error).__name__,
            fallback,
        )
        return False
    return True


def enqueue_on_commit(task_name: str, *args, fallback: str) -> Enqueued:
    """Queue the task named ``task_name`` once the current transaction commits (at once outside
    one), never raising for the broker's sake. ``args`` are ids and primitives (JSON only);
    ``fallback`` says which periodic sweep runs the work if this message is never sent."""
    outcome = Enqueued(task_name=task_name, fallback=fallback)

    def send() -> None:
        outcome.queued = enqueue(task_name, *args, fallback=fallback)

    transaction.on_commit(send)
    return outcome
