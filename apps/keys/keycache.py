"""Token → organization and key ciphertexts, for the proxy, with no database query in steady state.

Each process keeps what it learned of a token for ``COSTR_KEYCACHE_TTL_SECONDS``. Changes
(revoke, key added or deleted, rotation, organization deleted) invalidate entries at once in the
process that made them (through ``transaction.on_commit``) and, with Redis configured, in every
other process through a pub/sub message. A process that misses the message still drops the entry
when its TTL runs out, which bounds how long a revoked token can work anywhere.

Entries hold ciphertexts, never plaintext: a provider key is decrypted per request, in memory,
by ``provider_key_plaintext``.

The proxy looks tokens up in a worker thread that lives as long as the process, outside Django's
request cycle, so those lookups and the last-use flush go through ``costr.db.run_outside_request``
(a connection killed by a database restart is replaced, not reused forever). A lookup that does
not answer within ``LOOKUP_DEADLINE_SECONDS`` (a frozen or unreachable server) is treated as a
failed one: a known token is served from what was known, so traffic keeps flowing.
"""

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from costr.db import run_outside_request

logger = logging.getLogger("costr.keys.keycache")

INVALIDATION_CHANNEL = "costr:keycache:invalidate"
# When the database cannot be reached, a token last seen valid within this window keeps working
# (fail-open: Costr's own trouble must not stop traffic); revocations heard over Redis still
# remove it at once.
STALE_IF_ERROR_SECONDS = 300.0
MAX_ENTRIES = 10_000
# An unknown token is remembered briefly too, so a client retrying a bad token in a loop does
# not turn every request into a query; short, so a fresh token works almost at once elsewhere.
NEGATIVE_TTL_SECONDS = 1.0
# A lookup normally answers in milliseconds. One that takes longer than this is waiting on a
# database that does not answer (frozen, partitioned): the request stops waiting for it and is
# answered from what was known, as if the lookup had failed. While such a lookup is still
# stuck, later lookups do not queue behind it (they would wait on the same thread) and fail at
# once in the same way.
LOOKUP_DEADLINE_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class ProviderKeyRef:
    secret_id: str
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class ResolvedToken:
    token_id: int
    organization_id: int
    organization_slug: str
    scopes: frozenset[str]
    expires_at: datetime | None
    provider_keys: dict  # provider → ProviderKeyRef of its default key
    inject_openai_stream_usage: bool = True
    # The organization's budgets as the proxy enforces them (``apps.budgets.policy.Policy``),
    # None when it has none: then the request path does no budget work at all.
    budgets: Any = None

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


_entries: dict[str, tuple[float, ResolvedToken | None]] = {}
# organization → its budget policy or None; set by the budgets app (it sits above keys).
_budget_loader: Callable[[Any], Any] | None = None


def set_budget_loader(loader: Callable[[Any], Any]) -> None:
    """Have each token's organization's budgets loaded with it (``apps.budgets`` does this when
    Django starts). A budget change invalidates the organization's tokens like a key change."""
    global _budget_loader
    _budget_loader = loader


_lock = threading.Lock()
_subscriber_started = False


def _ttl() -> float:
    return settings.COSTR_KEYCACHE_TTL_SECONDS


def _load(token_hash: str) -> ResolvedToken | None:
    from apps.keys.models import ProviderKey, ProxyToken

    token = (
        ProxyToken.objects.unscoped(reason="a token names its own organization")
        .select_related("organization")
        .filter(token_hash=token_hash, revoked_at__isnull=True)
        .first()
    )
    if token is None:
        return None
    keys = ProviderKey.objects.for_org(token.organization_id).filter(is_default=True)
    return ResolvedToken(
        token_id=token.pk,
        organization_id=token.organization_id,
        organization_slug=token.organization.slug,
        scopes=frozenset(token.scopes),
        expires_at=token.expires_at,
        provider_keys={
            key.provider: ProviderKeyRef(str(key.secret_id), bytes(key.ciphertext)) for key in keys
        },
        inject_openai_stream_usage=token.organization.inject_openai_stream_usage,
        budgets=_budget_loader(token.organization) if _budget_loader is not None else None,
    )


def _cached(token_hash: str):
    """(hit, value): a hit with value None is a remembered unknown token."""
    entry = _entries.get(token_hash)
    if entry is None:
        return False, None
    expires, value = entry
    if expires <= time.monotonic():
        return False, None
    return True, value


def _stale_or_raise(token_hash: str, error: Exception) -> ResolvedToken:
    entry = _entries.get(token_hash)
    if entry is not None and entry[1] is not None:
        expired_for = time.monotonic() - entry[0]
        if expired_for <= STALE_IF_ERROR_SECONDS:
            logger.warning("token lookup failed; using what was known %.0fs ago", expired_for)
            return entry[1]
    raise error


def _store(token_hash: str, value: ResolvedToken | None) -> None:
    ttl = _ttl() if value is not None else min(_ttl(), NEGATIVE_TTL_SECONDS)
    now = time.monotonic()
    with _lock:
        _entries[token_hash] = (now + ttl, value)
        if len(_entries) > MAX_ENTRIES:
            # Bad tokens sprayed at the proxy must not grow memory without bound.
            for key, (expires, known) in list(_entries.items()):
                if expires <= now and (known is None or now - expires > STALE_IF_ERROR_SECONDS):
                    del _entries[key]


def _usable(value: ResolvedToken | None) -> ResolvedToken | None:
    if value is None or value.is_expired(timezone.now()):
        return None
    return value


def resolve(token_hash: str) -> ResolvedToken | None:
    """The live token behind a hash, or None when it is unknown, revoked or expired."""
    _ensure_subscriber()
    hit, value = _cached(token_hash)
    if not hit:
        try:
            value = _load(token_hash)
        except Exception as error:
            return _usable(_stale_or_raise(token_hash, error))
        _store(token_hash, value)
    return _usable(value)


def resolve_known(token_hash: str) -> ResolvedToken | None:
    """The live token behind a hash if this process knows it now, without asking anyone: for
    requests from an address that is being throttled, whose unknown tokens get no look-up."""
    hit, value = _cached(token_hash)
    return _usable(value) if hit else None


async def aresolve(token_hash: str) -> ResolvedToken | None:
    """``resolve`` for async code (the proxy): the database is touched only on a cache miss,
    once per token however many requests miss it together, and a request waits at most
    ``LOOKUP_DEADLINE_SECONDS`` for it."""
    hit, value = _cached(token_hash)
    if not hit:
        _ensure_subscriber()
        try:
            value = await _lookup_within_deadline(token_hash)
        except Exception as error:
            return _usable(_stale_or_raise(token_hash, error))
    return _usable(value)


# Lookups started by aresolve and not finished yet, with when they started. A lookup that
# outlives its deadline keeps running in its thread (a thread cannot be cancelled); it is kept
# here, referenced, until it ends.
_lookups_in_flight: "dict[asyncio.Future, float]" = {}
# The lookup in flight for each (event loop, token): when an entry expires under load, every
# request for that token misses at once, and they all wait for one lookup instead of queueing
# one each on the lookup thread (which, under overload, outlasted the deadline and failed them).
_lookups_by_token: "dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future]" = {}


def _load_outside_request(token_hash: str) -> ResolvedToken | None:
    """``_load`` on a live connection: the proxy's lookup thread is outside any request."""
    return run_outside_request(functools.partial(_load, token_hash), idempotent=True)


async def _lookup_within_deadline(token_hash: str) -> ResolvedToken | None:
    key = (asyncio.get_running_loop(), token_hash)
    lookup = _lookups_by_token.get(key)
    if lookup is None:
        now = time.monotonic()
        stuck_for = max((now - started for started in _lookups_in_flight.values()), default=0.0)
        if stuck_for > LOOKUP_DEADLINE_SECONDS:
            raise TimeoutError(
                f"a token lookup has had no answer from the database for {stuck_for:.0f}s"
            )
        lookup = asyncio.ensure_future(sync_to_async(_load_outside_request)(token_hash))
        _lookups_in_flight[lookup] = now
        _lookups_by_token[key] = lookup
        lookup.add_done_callback(functools.partial(_lookup_ended, key))
    try:
        # shield: on timeout, stop waiting without cancelling (which would wait for the thread).
        return await asyncio.wait_for(asyncio.shield(lookup), LOOKUP_DEADLINE_SECONDS)
    except TimeoutError as error:
        raise TimeoutError(
            f"no answer from the database within {LOOKUP_DEADLINE_SECONDS}s for a token lookup"
        ) from error


def _lookup_ended(key: tuple[asyncio.AbstractEventLoop, str], lookup: asyncio.Future) -> None:
    """Remember what a lookup found, also when it came after its waiters' deadline."""
    _lookups_in_flight.pop(lookup, None)
    if _lookups_by_token.get(key) is lookup:
        del _lookups_by_token[key]
    if lookup.cancelled():
        return
    if lookup.exception() is None:  # a failure was answered to the waiters (stale or 503)
        _store(key[1], lookup.result())


@sensitive_variables("plaintext")
def provider_key_plaintext(resolved: ResolvedToken, provider: str) -> str | None:
    """Decrypt the organization's default key for ``provider``, in memory, for one request."""
    from apps.keys.keyring import open_secret
    from apps.keys.models import ProviderKey
    from apps.keys.vault import Context

    ref = resolved.provider_keys.get(provider)
    if ref is None:
        return None
    context = Context(
        org_id=resolved.organization_id,
        record_id=ref.secret_id,
        purpose=ProviderKey.VAULT_PURPOSE,
    )
    plaintext = open_secret(ciphertext=ref.ciphertext, context=context)
    return plaintext


def _drop_local(organization_id: int | None) -> None:
    with _lock:
        if organization_id is None:
            _entries.clear()
            return
        for token_hash, (_, value) in list(_entries.items()):
            if value is None or value.organization_id == organization_id:
                _entries.pop(token_hash, None)


def invalidate_organization(organization_id: int) -> None:
    """Forget every token of one organization, here and (with Redis) in every process."""
    _drop_local(organization_id)
    _publish(str(organization_id))


def invalidate_all() -> None:
    _drop_local(None)
    _publish("*")


def _redis(*, socket_timeout: float | None = 2):
    import redis

    return redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=socket_timeout, socket_connect_timeout=2
    )


def _publish(message: str) -> None:
    if not settings.REDIS_URL:
        return
    try:
        _redis().publish(INVALIDATION_CHANNEL, message)
    except Exception:
        # The TTL still bounds staleness; a cache message must never fail the change itself.
        logger.warning("keycache invalidation could not be published", exc_info=True)


def _on_message(message) -> None:
    data = message.get("data")
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    try:
        organization_id = None if data == "*" else int(data)
    except (TypeError, ValueError):
        organization_id = None  # not a message of Costr's: forgetting everything is always safe
    _drop_local(organization_id)


# The subscriber tries Redis again after this long, doubling up to the maximum while it stays
# away. Whatever is published meanwhile is missed, but nothing missed outlives the outage: every
# cached entry still expires after its TTL, and the cache is cleared on resubscribing.
SUBSCRIBER_RETRY_FIRST_SECONDS = 0.5
SUBSCRIBER_RETRY_MAX_SECONDS = 10.0


def _listen_forever() -> None:
    """Hear invalidations for as long as the process lives. A Redis outage is logged once when it
    begins and once when the subscription is back (not once per attempt), with the error's type
    only: a Redis error names the server, and the URL it came from may hold a password."""
    retry_in = SUBSCRIBER_RETRY_FIRST_SECONDS
    lost_at: float | None = None  # monotonic time the outage began, None while subscribed
    while True:
        pubsub = None
        try:
            # No read timeout: the subscription waits for messages indefinitely.
            pubsub = _redis(socket_timeout=None).pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(**{INVALIDATION_CHANNEL: _on_message})
            # Anything published while disconnected was missed: start clean.
            _drop_local(None)
            if lost_at is not None:
                logger.warning(
                    "keycache subscriber: subscribed to Redis again after %.0fs; cached tokens "
                    "dropped, so no revocation published meanwhile is missed",
                    time.monotonic() - lost_at,
                )
                lost_at = None
            retry_in = SUBSCRIBER_RETRY_FIRST_SECONDS
            for _ in pubsub.listen():
                pass
        except Exception as error:
            if lost_at is None:
                lost_at = time.monotonic()
                logger.warning(
                    "keycache subscriber: Redis does not answer (%s); retrying every %.0fs at "
                    "most, and until it is back each cached token is trusted for at most its TTL",
                    type(error).__name__,
                    SUBSCRIBER_RETRY_MAX_SECONDS,
                )
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    pubsub.close()
        time.sleep(retry_in)
        retry_in = min(retry_in * 2, SUBSCRIBER_RETRY_MAX_SECONDS)


def _ensure_subscriber() -> None:
    global _subscriber_started
    if _subscriber_started or not settings.REDIS_URL:
        return
    with _lock:
        if _subscriber_started:
            return
        _subscriber_started = True
    threading.Thread(target=_listen_forever, name="keycache-invalidation", daemon=True).start()


# Last use of tokens and keys: noted in memory per request, written out in bulk every
# USE_FLUSH_SECONDS by a background thread (to Redis, for the periodic task to apply; or, in
# embedded mode, straight to the database), so the request path never writes.
USE_FLUSH_SECONDS = 30.0
LAST_USED_REDIS_KEY = "costr:keys:last_used"
_uses: dict[str, float] = {}
_flusher_started = False


def record_use(resolved: ResolvedToken, provider: str | None = None) -> None:
    now = time.time()
    _uses[f"token:{resolved.token_id}"] = now
    ref = resolved.provider_keys.get(provider) if provider else None
    if ref is not None:
        _uses[f"key:{ref.secret_id}"] = now
    _ensure_flusher()


def drain_uses() -> dict[str, float]:
    with _lock:
        drained = dict(_uses)
        _uses.clear()
    return drained


# Times that a flush could not deliver (Redis or, in embedded mode, the database unavailable),
# kept for the next one: the latest per token or key, so at most one entry each however long
# the outage lasts. Only flush_uses touches it, under _flush_lock.
_undelivered: dict[str, float] = {}
_flush_lock = threading.Lock()

# HSET each field only if its new time is later than the one there: a time held back by an
# outage must not replace a later one that another process wrote meanwhile.
_HSET_IF_LATER = """
for i = 1, #ARGV, 2 do
  local known = redis.call('HGET', KEYS[1], ARGV[i])
  if not known or tonumber(known) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 0
"""


def flush_uses() -> None:
    """Deliver the last-use times noted since the last flush, and any a failed flush kept. On
    failure they are kept for the next flush and the error is raised."""
    with _flush_lock:
        uses = drain_uses()
        for name, when in _undelivered.items():
            if uses.get(name, 0.0) < when:
                uses[name] = when
        _undelivered.clear()
        if not uses:
            return
        try:
            _deliver_uses(uses)
        except BaseException:
            _undelivered.update(uses)
            raise


def _deliver_uses(uses: dict[str, float]) -> None:
    if settings.REDIS_URL:
        client = _redis()
        try:
            fields = [item for name, when in uses.items() for item in (name, repr(when))]
            client.eval(_HSET_IF_LATER, 1, LAST_USED_REDIS_KEY, *fields)
        finally:
            client.close()
    else:
        from apps.keys.last_used import last_used_apply

        # Runs on the flusher thread, outside any request. Moving a time forward twice is
        # harmless (last_used_apply never moves one back), so a lost connection may retry.
        run_outside_request(functools.partial(last_used_apply, uses), idempotent=True)


def _flush_forever() -> None:
    failing = False
    while True:
        time.sleep(USE_FLUSH_SECONDS)
        try:
            flush_uses()
        except Exception as error:
            if not failing:
                failing = True
                # Logged once per outage; the first one's traceback says where it failed.
                logger.warning(
                    "last-used times could not be written (%s); they are kept and written "
                    "by the next flush that succeeds",
                    type(error).__name__,
                    exc_info=True,
                )
        else:
            if failing:
                failing = False
                logger.warning("last-used times are written again, the ones held back included")


def _ensure_flusher() -> None:
    global _flusher_started
    if _flusher_started:
        return
    with _lock:
        if _flusher_started:
            return
        _flusher_started = True
    threading.Thread(target=_flush_forever, name="keycache-last-used", daemon=True).start()
