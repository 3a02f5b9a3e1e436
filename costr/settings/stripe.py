"""Stripe settings: where the API is, how long to wait for it, how hard to retry, how far back
each incremental sync looks again. Costr only ever reads from Stripe (DESIGN.md, promise 3)."""

from costr.env import env

# An origin without /v1. Tests point it at the fake Stripe on 127.0.0.1.
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="https://api.stripe.com").rstrip("/")
STRIPE_CONNECT_TIMEOUT = env.float("STRIPE_CONNECT_TIMEOUT", default=10.0)
STRIPE_READ_TIMEOUT = env.float("STRIPE_READ_TIMEOUT", default=30.0)
# The SDK's own retries: connection errors, 409 and 5xx, with its exponential backoff.
STRIPE_MAX_NETWORK_RETRIES = env.int("STRIPE_MAX_NETWORK_RETRIES", default=2)
# 429s are retried by Costr: Retry-After when Stripe sends one, else 1 s, 2 s, 4 s, … each wait
# capped at STRIPE_MAX_BACKOFF_SECONDS, at most STRIPE_RATE_LIMIT_RETRIES times per call.
STRIPE_RATE_LIMIT_RETRIES = env.int("STRIPE_RATE_LIMIT_RETRIES", default=5)
STRIPE_MAX_BACKOFF_SECONDS = env.float("STRIPE_MAX_BACKOFF_SECONDS", default=30.0)
# Incremental syncs list objects created since the newest one seen minus this window, so objects
# that became visible late (same second, list consistency) are still picked up.
STRIPE_SYNC_SAFETY_WINDOW_SECONDS = env.int("STRIPE_SYNC_SAFETY_WINDOW_SECONDS", default=3600)
# Invoices are paid after they are created: the invoice walk looks this far back again.
STRIPE_INVOICE_LOOKBACK_DAYS = env.int("STRIPE_INVOICE_LOOKBACK_DAYS", default=45)
# Customers change after creation (metadata, name, deletion): every this many hours the sync
# walks all of them instead of only the new ones.
STRIPE_FULL_CUSTOMER_SYNC_HOURS = env.int("STRIPE_FULL_CUSTOMER_SYNC_HOURS", default=24)
# Objects per list page: Stripe's maximum. Tests lower it to walk several pages of a few objects.
STRIPE_PAGE_SIZE = env.int("STRIPE_PAGE_SIZE", default=100)
