"""Every periodic task in one place, on crontab schedules, so what runs when is read in one file."""

from celery.schedules import crontab

# The daily retention purge; the retention page tells people when it runs.
PURGE_HOUR_UTC, PURGE_MINUTE_UTC = 3, 30

# How often pending re-pricings are looked for; the page says the work starts within this.
REPRICE_SWEEP_MINUTES = 5

# How often customers' spend today is compared with their trailing week (spend anomalies).
ANOMALY_SCAN_MINUTES = 15

BEAT_SCHEDULE: dict[str, dict] = {
    "keys-last-used-flush": {"task": "keys.last_used_flush", "schedule": crontab(minute="*")},
    "usage-purge-expired": {
        "task": "usage.purge_expired_all",
        "schedule": crontab(hour=PURGE_HOUR_UTC, minute=PURGE_MINUTE_UTC),
    },
    "usage-organization-deletions": {
        "task": "usage.organization_deletions_resume",
        "schedule": crontab(minute="41"),
    },
    # Re-pricing someone asked for whose task was never queued (broker down) or was lost.
    "usage-reprices-resume": {
        "task": "usage.reprices_resume",
        "schedule": crontab(minute=f"*/{REPRICE_SWEEP_MINUTES}"),
    },
    # Provider batches created through the proxy, looked at when due (their own back-off).
    "usage-batches-poll-due": {"task": "usage.batches_poll_due", "schedule": crontab(minute="*")},
    "billing-stripe-sync": {"task": "billing.stripe_sync_all", "schedule": crontab(minute="17")},
    # Budget alerts (apps/budgets/tasks.py): thresholds and the deliveries whose message was
    # lost every minute, anomalies every 15 minutes; the budget store's counters raised to the
    # database's spend every minute.
    "budgets-thresholds-scan": {"task": "budgets.thresholds_scan", "schedule": crontab(minute="*")},
    "budgets-anomalies-scan": {
        "task": "budgets.anomalies_scan",
        "schedule": crontab(minute=f"*/{ANOMALY_SCAN_MINUTES}"),
    },
    "budgets-deliveries-sweep": {
        "task": "budgets.deliveries_sweep",
        "schedule": crontab(minute="*"),
    },
    # Alerts describe usage: they go when the usage does (the organization's retention).
    "budgets-alerts-purge-expired": {
        "task": "budgets.alerts_purge_expired",
        "schedule": crontab(hour=PURGE_HOUR_UTC, minute=PURGE_MINUTE_UTC + 5),
    },
    "budgets-counters-reconcile": {
        "task": "budgets.counters_reconcile",
        "schedule": crontab(minute="*"),
    },
}
