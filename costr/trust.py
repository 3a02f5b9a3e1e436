"""The public trust pages: security, privacy, terms and the DPA.

They live beside the URLconf, not in one app, because they describe the whole deployment: every
figure they state is read from the code and settings that enforce it (the vault's algorithm, the
retention default, the proxy's timeouts, the last benchmark run), so a page cannot drift from what
the code does.
"""

import json

from django.conf import settings
from django.http import Http404
from django.shortcuts import render

from apps.accounts import legal
from apps.billing.client import READ_METHODS
from apps.billing.services import RESOURCES
from apps.keys import keycache, vault
from apps.keys.keyring import get_keyring
from apps.proxy.limits import ALLOWED_METHODS, MAX_HEAD_BYTES
from apps.usage import batch_polling, batches, lifecycle
from apps.usage.metering import contract
from costr import throttle
from costr.schedule import PURGE_HOUR_UTC, PURGE_MINUTE_UTC, REPRICE_SWEEP_MINUTES

BENCHMARKS_JSON = settings.BASE_DIR / "docs" / "benchmarks.json"


def security(request):
    keyring = get_keyring()
    return render(
        request,
        "legal/security.html",
        {
            "key_bits": vault.KEY_SIZE * 8,
            "nonce_bits": vault.NONCE_SIZE * 8,
            "primary_key_id": keyring.primary_id,
            "key_ids": keyring.ids,
            "keys_generated": settings.COSTR_ENCRYPTION_KEYS_GENERATED,
            "default_retention_days": settings.COSTR_DEFAULT_RETENTION_DAYS,
            "keycache_ttl": settings.COSTR_KEYCACHE_TTL_SECONDS,
            "connect_timeout": settings.COSTR_UPSTREAM_CONNECT_TIMEOUT,
            "read_timeout": settings.COSTR_UPSTREAM_READ_TIMEOUT,
            "drain_minutes": round(settings.COSTR_PROXY_DRAIN_SECONDS / 60),
            "stale_minutes": round(keycache.STALE_IF_ERROR_SECONDS / 60),
            "budget_store_timeout_ms": round(settings.COSTR_BUDGET_STORE_TIMEOUT_SECONDS * 1000),
            "max_body_mb": settings.COSTR_PROXY_MAX_BODY_BYTES / 1024 / 1024,
            "benchmark": benchmark_summary(),
            "stripe_permissions": [permission for _, permission, _ in RESOURCES.values()],
            "stripe_methods": sorted(method.upper() for method in READ_METHODS),
            "purge_time": f"{PURGE_HOUR_UTC:02d}:{PURGE_MINUTE_UTC:02d}",
            "reprice_sweep_minutes": REPRICE_SWEEP_MINUTES * 2,
            "deletion_hours": lifecycle.DELETION_DEADLINE_HOURS,
            "throttles": throttles_in_force(),
            "limits": proxy_limits_in_force(),
            "batches": {
                "first_minutes": round(batches.FIRST_CHECK_AFTER.total_seconds() / 60),
                "max_minutes": round(batch_polling.BACKOFF_MAX.total_seconds() / 60),
                "limit_days": batch_polling.TRACKING_LIMIT.days,
            },
        },
    )


def throttles_in_force() -> dict:
    """The abuse limits as configured, for the page to state exactly."""
    return {
        "login_failures": settings.COSTR_THROTTLE_LOGIN_FAILURES,
        "login_lockout_minutes": round(settings.COSTR_THROTTLE_LOGIN_LOCKOUT_SECONDS / 60),
        "reset_per_email": throttle.describe("COSTR_THROTTLE_PASSWORD_RESET_PER_EMAIL"),
        "reset_per_address": throttle.describe("COSTR_THROTTLE_PASSWORD_RESET_PER_ADDRESS"),
        "invalid_tokens": throttle.describe("COSTR_THROTTLE_INVALID_TOKENS_PER_ADDRESS"),
        "shared": bool(settings.REDIS_URL),
        "store_retry_seconds": round(throttle.StoreHealth.retry_seconds),
    }


def proxy_limits_in_force() -> dict:
    """The proxy's limits on what clients and providers send, as configured."""
    return {
        "head_kib": MAX_HEAD_BYTES // 1024,
        "allowed_methods": sorted(ALLOWED_METHODS),
        "header_timeout": settings.COSTR_PROXY_HEADER_READ_TIMEOUT,
        "body_timeout": settings.COSTR_PROXY_BODY_READ_TIMEOUT,
        "max_decoded_mib": settings.COSTR_PROXY_MAX_DECODED_BYTES // (1024 * 1024),
        "inspect_mib": settings.COSTR_PROXY_INSPECT_BYTES / (1024 * 1024),
        "queue_records": settings.COSTR_USAGE_QUEUE_MAX_RECORDS,
        "customer_length": contract.MAX_CUSTOMER_LENGTH,
        "property_name_length": contract.MAX_PROPERTY_NAME_LENGTH,
        "property_value_length": contract.MAX_PROPERTY_VALUE_LENGTH,
        "properties": contract.MAX_PROPERTIES,
    }


def benchmark_summary() -> dict | None:
    """The proxy overhead measured by the last ``make bench`` committed with this code."""
    try:
        return json.loads(BENCHMARKS_JSON.read_text())
    except (OSError, ValueError):
        return None


def privacy(request):
    return render(
        request,
        "legal/privacy.html",
        {"default_retention_days": settings.COSTR_DEFAULT_RETENTION_DAYS},
    )


def terms(request):
    return render(request, "legal/terms.html")


def dpa(request):
    version = legal.dpa_version(request.GET.get("version", legal.CURRENT_DPA.version))
    if version is None:
        raise Http404("There is no such DPA version.")
    return render(
        request,
        "legal/dpa.html",
        {
            "dpa": version,
            "current": legal.CURRENT_DPA,
            "versions": legal.DPA_VERSIONS,
            "subprocessors": legal.subprocessors(),
        },
    )
