"""Metering: how a usage record goes from the proxy to the database, in reading order.

1. ``contract``: what the proxy hands over (``UsageRecord``), the endpoint and outcome names,
   the limits and the string cleaning both sides hold to. No Django import: the proxy imports it.
2. ``sink``: the in-process hand-over (``emit``, ``emit_refusal``, ``flush``); memory only on the
   caller's thread. The proxy imports it.
3. ``transports``: how the sink's thread delivers, to the database (embedded mode) or to the Redis
   stream, and to the spool meanwhile.
4. ``stream``: the Redis stream between web processes and ``run_usage_writer``, and how records
   are packed onto it.
5. ``spool``: the local files where batches wait while Redis or the database does not answer.
6. ``writer``: storing batches, a record that cannot be stored set aside alone; ``StreamWriter``
   behind ``run_usage_writer``.
7. ``events``: the events writer itself: pricing, the idempotent insert and the rollups added in
   the same transaction; refusal counts.
8. ``counters``: the rollup counters, one definition with its SQL, ORM and Python renderings.

``docs/architecture.md`` walks one request through these files; ``docs/metering.md`` has the
detail of storing and summing.
"""
