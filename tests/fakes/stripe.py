"""A fake Stripe API for tests and the demo, served on 127.0.0.1 like the fake provider.

It behaves like Stripe's v1 list API where Costr depends on it:

- lists (``GET /v1/customers``, ``/v1/charges``, ``/v1/balance_transactions``, ``/v1/invoices``,
  ``/v1/disputes``) answer ``{"object": "list", "url", "has_more", "data"}``, newest first, with
  cursor pagination (``limit`` 1 to 100, default 10; ``starting_after``), ``created[gte|gt|lte|lt]``
  filters and ``expand[]=data.source`` on balance transactions (list params arrive as
  ``expand[0]=…``, the way the SDK encodes them, or ``expand[]=…``);
- ``GET /v1/charges/{id}``, ``GET /v1/customers/{id}`` (a deleted one answers
  ``{"deleted": true}``) and ``GET /v1/account``;
- authentication by ``Authorization: Bearer <key>`` or HTTP basic with the key as user name; an
  unknown key answers 401 in Stripe's error shape;
- per-key permissions: a key lacking one answers 403 with Stripe's own message, which names the
  permission (``Having the 'rak_charge_read' permission would allow this request to continue.``),
  also when an expanded balance-transaction source needs a permission the key lacks;
- ``rate_limit(n, retry_after=…)`` makes the next n requests answer 429 (with ``Retry-After``
  unless None);
- every request is recorded (method, path, query, key) in ``requests``, so a test can assert that
  no write ever arrived. Anything but GET answers 403 naming a write permission, as Stripe does
  for a read-only restricted key.

Objects are built by ``FakeAccount.customer``, ``charge`` (which also makes the charge's balance
transaction with Stripe's US card fee unless one is given), ``refund``, ``dispute``, ``invoice``
and ``payout``. Ids and ``created`` times are deterministic.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from tests.asgi_server import ThreadedServer

READ_ALL = frozenset(
    {
        "rak_customer_read",
        "rak_charge_read",
        "rak_balance_read",
        "rak_invoice_read",
        "rak_dispute_read",
        "rak_accounts_kyc_basic_read",
    }
)
# Which permission each list needs, and which one each kind of expanded source needs.
LIST_PERMISSIONS = {
    "customers": "rak_customer_read",
    "charges": "rak_charge_read",
    "balance_transactions": "rak_balance_read",
    "invoices": "rak_invoice_read",
    "disputes": "rak_dispute_read",
}
SOURCE_PERMISSIONS = {
    "charge": "rak_charge_read",
    "refund": "rak_charge_read",
    "dispute": "rak_dispute_read",
}
WRITE_PERMISSIONS = {
    "customers": "rak_customer_write",
    "charges": "rak_charge_write",
    "refunds": "rak_refund_write",
    "invoices": "rak_invoice_write",
}
EPOCH = 1767225600  # 2026-01-01T00:00:00Z


def stripe_fee(amount: int) -> int:
    """Stripe's standard US card pricing, 2.9% + 30¢, rounded half up to the cent."""
    return (amount * 29 + 500) // 1000 + 30


def masked_key(key: str) -> str:
    prefix = key[:8] if key[:3] in ("rk_", "sk_") else key[:3]
    return prefix + "*" * max(len(key) - len(prefix) - 4, 0) + key[-4:]


@dataclass
class FakeAccount:
    account_id: str
    name: str = "Fake Stripe account"
    livemode: bool = False
    objects: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    _seq: itertools.count = field(default_factory=lambda: itertools.count(1))
    _clock: itertools.count = field(default_factory=lambda: itertools.count(EPOCH, 60))

    def _add(self, kind: str, prefix: str, created: int | None, **fields) -> dict[str, Any]:
        number = next(self._seq)
        obj = {
            "id": fields.pop("id", None) or f"{prefix}_{self.account_id[-6:]}{number:08d}",
            "object": kind,
            "created": created if created is not None else next(self._clock),
            "livemode": self.livemode,
            **fields,
        }
        obj["_seq"] = number
        self.objects.setdefault(kind, []).append(obj)
        self.by_id[obj["id"]] = obj
        return obj

    def customer(
        self, *, email="", name="", metadata=None, currency=None, created=None, id=None
    ) -> dict[str, Any]:
        return self._add(
            "customer",
            "cus",
            created,
            id=id,
            email=email or None,
            name=name or None,
            metadata=dict(metadata or {}),
            currency=currency,
            deleted=False,
        )

    def delete_customer(self, customer_id: str) -> None:
        """As Stripe: gone from lists, retrieving it answers ``{"deleted": true}``."""
        self.by_id[customer_id]["deleted"] = True

    def _balance_transaction(
        self, *, type, amount, fee, currency, created, source_id, reporting_category
    ) -> dict[str, Any]:
        return self._add(
            "balance_transaction",
            "txn",
            created,
            type=type,
            reporting_category=reporting_category,
            amount=amount,
            fee=fee,
            net=amount - fee,
            currency=currency,
            source=source_id,
            status="available",
        )

    def charge(
        self,
        customer: dict | str | None,
        amount: int,
        currency: str = "usd",
        *,
        fee: int | None = None,
        created: int | None = None,
        settlement: tuple[int, str] | None = None,
        type: str = "charge",
    ) -> dict[str, Any]:
        """A succeeded charge and its balance transaction. ``settlement`` = (amount, currency)
        when the balance settles in another currency than the charge's."""
        customer_id = customer["id"] if isinstance(customer, dict) else customer
        charge = self._add(
            "charge",
            "py" if type == "payment" else "ch",
            created,
            amount=amount,
            amount_refunded=0,
            currency=currency,
            customer=customer_id,
            paid=True,
            status="succeeded",
            disputed=False,
        )
        settled_amount, settled_currency = settlement or (amount, currency)
        txn = self._balance_transaction(
            type=type,
            amount=settled_amount,
            fee=stripe_fee(settled_amount) if fee is None else fee,
            currency=settled_currency,
            created=charge["created"],
            source_id=charge["id"],
            reporting_category="charge",
        )
        charge["balance_transaction"] = txn["id"]
        return charge

    def refund(self, charge: dict, amount: int, *, created: int | None = None) -> dict[str, Any]:
        txn_of_charge = self.by_id[charge["balance_transaction"]]
        ratio_amount = amount
        if txn_of_charge["currency"] != charge["currency"]:
            ratio_amount = txn_of_charge["amount"] * amount // charge["amount"]
        refund = self._add(
            "refund",
            "re",
            created,
            amount=amount,
            currency=charge["currency"],
            charge=charge["id"],
            status="succeeded",
        )
        charge["amount_refunded"] += amount
        self._balance_transaction(
            type="payment_refund" if charge["id"].startswith("py_") else "refund",
            amount=-ratio_amount,
            fee=0,
            currency=txn_of_charge["currency"],
            created=refund["created"],
            source_id=refund["id"],
            reporting_category="refund",
        )
        return refund

    def dispute(
        self, charge: dict, *, fee: int = 1500, created: int | None = None, won_later=False
    ) -> dict[str, Any]:
        """A dispute over the whole charge: the amount is withdrawn plus Stripe's dispute fee; a
        dispute won later reinstates the amount (the fee is not returned)."""
        txn_of_charge = self.by_id[charge["balance_transaction"]]
        dispute = self._add(
            "dispute",
            "du",
            created,
            amount=charge["amount"],
            currency=charge["currency"],
            charge=charge["id"],
            status="won" if won_later else "lost",
        )
        charge["disputed"] = True
        self._balance_transaction(
            type="adjustment",
            amount=-txn_of_charge["amount"],
            fee=fee,
            currency=txn_of_charge["currency"],
            created=dispute["created"],
            source_id=dispute["id"],
            reporting_category="dispute",
        )
        if won_later:
            self._balance_transaction(
                type="adjustment",
                amount=txn_of_charge["amount"],
                fee=0,
                currency=txn_of_charge["currency"],
                created=dispute["created"] + 86400,
                source_id=dispute["id"],
                reporting_category="dispute_reversal",
            )
        return dispute

    def payout(self, amount: int, currency: str = "usd", *, created=None) -> dict[str, Any]:
        """Money leaving for the bank: a balance transaction that is nobody's revenue."""
        payout = self._add("payout", "po", created, amount=amount, currency=currency)
        self._balance_transaction(
            type="payout",
            amount=-amount,
            fee=0,
            currency=currency,
            created=payout["created"],
            source_id=payout["id"],
            reporting_category="payout",
        )
        return payout

    def invoice(
        self,
        customer: dict | str,
        amount_paid: int,
        currency: str = "usd",
        *,
        status: str = "paid",
        created: int | None = None,
        paid_at: int | None = None,
    ) -> dict[str, Any]:
        customer_id = customer["id"] if isinstance(customer, dict) else customer
        invoice = self._add(
            "invoice",
            "in",
            created,
            customer=customer_id,
            status=status,
            currency=currency,
            amount_paid=amount_paid if status == "paid" else 0,
            amount_due=amount_paid,
        )
        paid = (paid_at or invoice["created"]) if status == "paid" else None
        invoice["status_transitions"] = {"paid_at": paid, "finalized_at": invoice["created"]}
        return invoice


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


class FakeStripe:
    """The server: accounts, the keys that open them, and what it was asked."""

    def __init__(self):
        self.accounts: dict[str, FakeAccount] = {}
        self.keys: dict[str, tuple[str, frozenset[str]]] = {}
        self.requests: list[dict[str, Any]] = []
        self._rate_limits: list[str | None] = []
        self._lock = threading.Lock()
        self._server: ThreadedServer | None = None
        self._key_numbers = itertools.count(1)

    # --- set-up ---------------------------------------------------------------------------

    def account(self, account_id: str = "acct_1FakeDefault00001", **kwargs) -> FakeAccount:
        if account_id not in self.accounts:
            self.accounts[account_id] = FakeAccount(account_id=account_id, **kwargs)
        return self.accounts[account_id]

    def restricted_key(
        self,
        account: FakeAccount,
        *,
        permissions=READ_ALL,
        live: bool = False,
        key: str | None = None,
    ) -> str:
        """A restricted key for ``account`` with these permissions (``rak_*_read`` names): a new
        one, or ``key`` when the test made its own."""
        number = next(self._key_numbers)
        key = key or f"rk_{'live' if live else 'test'}_51Fake{account.account_id[-6:]}" + (
            f"{number:04d}Kq7ZrT2mVx9LpW4nB8cY3dH6fJ1sG5aQ0eU"
        )
        self.keys[key] = (account.account_id, frozenset(permissions))
        return key

    def rate_limit(self, times: int, *, retry_after: str | None = "1", after: int = 0) -> None:
        """Answer 429 to ``times`` requests, starting after the next ``after`` ones."""
        with self._lock:
            self._rate_limits.extend(["absent"] * after + [retry_after] * times)

    def writes(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] != "GET"]

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # --- serving --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake first"
        return self._server.url

    def start(self) -> FakeStripe:
        async def asgi(scope, receive, send):  # a plain function: uvicorn detects ASGI 3
            await self.app(scope, receive, send)

        self._server = ThreadedServer(asgi).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    async def app(self, scope, receive, send):
        if scope["type"] != "http":
            return
        while True:  # drain the body: Costr never sends one, but a broken client might
            message = await receive()
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qsl(scope["query_string"].decode(), keep_blank_values=True)
        status, body, extra = self.handle(scope["method"], scope["path"], query, headers)
        payload = json.dumps(body).encode()
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"request-id", f"req_fake{len(self.requests):010d}".encode()),
            *[(k.encode(), v.encode()) for k, v in extra.items()],
        ]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})

    # --- the API --------------------------------------------------------------------------

    def handle(self, method, path, query, headers):
        key = _key_from(headers)
        with self._lock:
            self.requests.append(
                {"method": method, "path": path, "query": query, "key_last4": (key or "")[-4:]}
            )
            retry_after = self._rate_limits.pop(0) if self._rate_limits else "absent"
        if retry_after != "absent":
            extra = {"retry-after": retry_after} if retry_after is not None else {}
            return (
                429,
                _error(
                    "Request rate limit exceeded. Learn more about rate limits here "
                    "https://stripe.com/docs/rate-limits.",
                    code="rate_limit",
                ),
                extra,
            )
        if key is None:
            return (
                401,
                _error(
                    "You did not provide an API key. You need to provide your API key in the "
                    "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_"
                    "SECRET_KEY')."
                ),
                {},
            )
        if key not in self.keys:
            return 401, _error(f"Invalid API Key provided: {masked_key(key)}"), {}
        account_id, permissions = self.keys[key]
        account = self.accounts[account_id]
        parts = path.strip("/").split("/")
        if len(parts) < 2 or parts[0] != "v1":
            return 404, _error(f"Unrecognized request URL ({method}: {path})."), {}
        resource = parts[1]

        def forbidden(permission):
            return (
                403,
                _error(
                    f"The provided key '{masked_key(key)}' does not have the required permissions "
                    f"for this endpoint on account '{account_id}'. Having the '{permission}' "
                    "permission would allow this request to continue."
                ),
                {},
            )

        if method != "GET":
            return forbidden(WRITE_PERMISSIONS.get(resource, f"rak_{resource.rstrip('s')}_write"))
        if resource == "account" and len(parts) == 2:
            if "rak_accounts_kyc_basic_read" not in permissions:
                return forbidden("rak_accounts_kyc_basic_read")
            return (
                200,
                {
                    "id": account_id,
                    "object": "account",
                    "business_profile": {"name": account.name},
                    "settings": {"dashboard": {"display_name": account.name}},
                },
                {},
            )
        if resource not in LIST_PERMISSIONS:
            return 404, _error(f"Unrecognized request URL ({method}: {path})."), {}
        if LIST_PERMISSIONS[resource] not in permissions:
            return forbidden(LIST_PERMISSIONS[resource])
        kind = {"balance_transactions": "balance_transaction"}.get(resource, resource[:-1])
        if len(parts) == 3:
            obj = account.by_id.get(parts[2])
            if obj is None or obj["object"] != kind:
                return 404, _error(f"No such {kind}: '{parts[2]}'", param="id"), {}
            if obj.get("deleted"):
                return 200, {"id": obj["id"], "object": kind, "deleted": True}, {}
            return 200, _public(obj), {}
        return self._list(account, resource, kind, dict(query), query, permissions, forbidden)

    def _list(self, account, resource, kind, params, query, permissions, forbidden):
        try:
            limit = int(params.get("limit", 10))
        except ValueError:
            return 400, _error("Invalid integer: limit", param="limit"), {}
        if not 1 <= limit <= 100:
            return (
                400,
                _error(
                    "This value must be greater than or equal to 1 and less than or equal to 100.",
                    param="limit",
                ),
                {},
            )
        expand = [v for k, v in query if re.fullmatch(r"expand\[\d*\]", k)]
        rows = [o for o in account.objects.get(kind, []) if not o.get("deleted")]
        for op, test in (
            ("gte", lambda a, b: a >= b),
            ("gt", lambda a, b: a > b),
            ("lte", lambda a, b: a <= b),
            ("lt", lambda a, b: a < b),
        ):
            if f"created[{op}]" in params:
                bound = int(params[f"created[{op}]"])
                rows = [o for o in rows if test(o["created"], bound)]
        if "created" in params:
            rows = [o for o in rows if o["created"] == int(params["created"])]
        rows.sort(key=lambda o: (o["created"], o["_seq"]), reverse=True)
        after = params.get("starting_after")
        if after:
            ids = [o["id"] for o in rows]
            if after not in ids:
                if after not in account.by_id:
                    return 400, _error(f"No such {kind}: '{after}'", param="starting_after"), {}
                anchor = account.by_id[after]
                rows = [
                    o
                    for o in rows
                    if (o["created"], o["_seq"]) < (anchor["created"], anchor["_seq"])
                ]
            else:
                rows = rows[ids.index(after) + 1 :]
        page = [_public(o) for o in rows[:limit]]
        if "data.source" in expand:
            for obj in page:
                source = account.by_id.get(obj["source"]) if obj.get("source") else None
                if source is None:
                    continue
                needed = SOURCE_PERMISSIONS.get(source["object"])
                if needed and needed not in permissions:
                    return forbidden(needed)
                obj["source"] = _public(source)
        return (
            200,
            {
                "object": "list",
                "url": f"/v1/{resource}",
                "has_more": len(rows) > limit,
                "data": page,
            },
            {},
        )


def _key_from(headers) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    if auth.lower().startswith("basic "):
        try:
            user = base64.b64decode(auth[6:].strip()).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            return None
        return user or None
    return None


def _error(message: str, *, code: str | None = None, param: str | None = None) -> dict:
    error: dict[str, Any] = {"message": message, "type": "invalid_request_error"}
    if code:
        error["code"] = code
    if param:
        error["param"] = param
    return {"error": error}
