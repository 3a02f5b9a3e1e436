"""Database access outside Django's request cycle: threads, long-running commands, workers.

Inside a request, Django drops a connection that broke or outlived ``CONN_MAX_AGE`` when the
request starts and ends (``close_old_connections`` on ``request_started``/``request_finished``).
Nothing does that for a thread or a loop that lives for the whole process: after a PostgreSQL
restart its connection is dead, every query on it fails, and it stays dead until the process
restarts. ``run_outside_request`` gives such code what a request gets, plus one retry:

1. before the work, a connection that is broken, obsolete, or (when persistent) no longer
   answers is closed, so the work opens a fresh one;
2. the work runs;
3. if it fails because the connection died (``InterfaceError``, or an ``OperationalError``
   after which the connection no longer answers), the connection is closed and the work runs
   once more, on a new connection, provided that is safe:

   - ``idempotent=True`` work (reads; writes that a second run cannot double, such as the usage
     events, unique by request id) is always run again;
   - other work is run again only when none of its statements reached the server (the
     connection could not be opened). A statement that was sent may have committed even though
     its answer was lost, and running a non-idempotent write twice would count it twice;

4. after the work, the connection is closed if it is obsolete, as at the end of a request, so
   an idle thread holds no connection with the default ``CONN_MAX_AGE`` of 0.

Errors that do not mean a dead connection (a constraint violation, a statement timeout, SQLite's
"database is locked") are never retried here: they are the caller's to handle.

Inside a transaction (``atomic``) the caller owns the connection: closing it would lose the
transaction and retrying one statement of it would be wrong, so the work just runs.
"""

import contextlib
import logging
from collections.abc import Callable
from typing import TypeVar

from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    InterfaceError,
    OperationalError,
    connections,
)

logger = logging.getLogger("costr.db")

T = TypeVar("T")

CONNECTION_ERRORS = (InterfaceError, OperationalError)

# Celery tasks: Celery's Django fixup already closes every connection before and after each task
# a worker runs (``DjangoWorkerFixup.on_task_prerun``/``on_task_postrun``), so a dead connection
# never outlives the task that met it. What it does not do is run that task again: without this,
# a task that met the database restarting (a reprice, a purge or a deletion that queues its own
# next step) would be lost until beat queues it again, if beat does at all. Every task is safe
# to run twice (STYLE.md), so each retries with backoff on these errors, on a new connection.
TASK_RETRY_ON_CONNECTION_ERRORS = {
    "autoretry_for": CONNECTION_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 8,
}


def run_outside_request(
    work: Callable[[], T], *, idempotent: bool, using: str = DEFAULT_DB_ALIAS
) -> T:
    """``work()`` on a live connection, retried once if the connection dies under it and a
    second run is safe (see the module docstring). ``idempotent`` is required so that every
    call site says whether its work may run twice."""
    connection = connections[using]
    if connection.in_atomic_block:
        return work()
    _drop_dead_connection(connection)
    statements = _SentStatements()
    try:
        try:
            with statements.watched(connection, enabled=not idempotent):
                return work()
        except CONNECTION_ERRORS as error:
            if not _connection_lost(connection, error):
                raise
            _close(connection)
            if not idempotent and statements.sent:
                raise
            logger.warning(
                "database connection lost (%s: %s); running the work again on a new one",
                type(error).__name__,
                error,
            )
        return work()
    finally:
        _close_if_obsolete(connection)


class _SentStatements:
    """Whether any statement of the work was handed to the server. Only watched for
    non-idempotent work, the only kind for which it decides anything."""

    def __init__(self) -> None:
        self.sent = False

    def _note(self, execute, sql, params, many, context):
        self.sent = True
        return execute(sql, params, many, context)

    def watched(self, connection, *, enabled: bool):
        if not enabled:
            return contextlib.nullcontext()
        return connection.execute_wrapper(self._note)


def _drop_dead_connection(connection) -> None:
    """What Django does at the start of a request (``close_old_connections``) and, with
    ``CONN_HEALTH_CHECKS``, at the first query: close a connection that had errors and no
    longer answers, or that is older than ``CONN_MAX_AGE``; then make sure a kept (persistent)
    one still answers, since a server restart kills it without any error having been seen."""
    with contextlib.suppress(DatabaseError):
        connection.close_if_unusable_or_obsolete()
    if connection.connection is not None and not connection.is_usable():
        _close(connection)


def _connection_lost(connection, error: BaseException) -> bool:
    """True when ``error`` came from a connection that is gone, not from the statement."""
    if isinstance(error, InterfaceError) or connection.connection is None:
        return True
    try:
        return not connection.is_usable()
    except DatabaseError:
        return True


def _close(connection) -> None:
    with contextlib.suppress(DatabaseError):
        connection.close()


def _close_if_obsolete(connection) -> None:
    if connection.in_atomic_block:
        return
    with contextlib.suppress(DatabaseError):
        connection.close_if_unusable_or_obsolete()
