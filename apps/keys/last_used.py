"""Last-use times of tokens and provider keys, written to their rows.

The proxy notes a use in memory (``keycache.record_use``), never in the database on its path;
the times reach the rows here, in batches: from the embedded flusher thread, or from the
periodic task that collects every process's times from Redis.
"""

from datetime import UTC, datetime

from django.db import transaction

from apps.keys.models import ProviderKey, ProxyToken


def last_used_apply(uses: dict[str, float]) -> int:
    """Write last-use times (``token:<id>`` / ``key:<secret uuid>`` → epoch seconds) to the rows.

    Only moves times forward, so applying an older batch after a newer one changes nothing.
    """
    reason = "last-use times arrive for every tenant at once"
    wanted = {
        (ProxyToken, "pk"): {n[6:]: t for n, t in uses.items() if n.startswith("token:")},
        (ProviderKey, "secret_id"): {n[4:]: t for n, t in uses.items() if n.startswith("key:")},
    }
    updated = 0
    with transaction.atomic():
        for (model, field), times in wanted.items():
            if not times:
                continue
            changed = []
            for row in model.objects.unscoped(reason=reason).filter(**{f"{field}__in": times}):
                when = datetime.fromtimestamp(times[str(getattr(row, field))], tz=UTC)
                if row.last_used_at is None or row.last_used_at < when:
                    row.last_used_at = when
                    changed.append(row)
            model.objects.unscoped(reason=reason).bulk_update(changed, ["last_used_at"])
            updated += len(changed)
    return updated
