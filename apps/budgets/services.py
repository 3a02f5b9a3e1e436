"""Writes for budgets: create, change, delete. Each leaves an AuditEvent, and each drops the
organization's tokens from every process's token cache once committed, so the proxy enforces the
new budgets within moments (``keys.keycache``, which loads budgets with tokens).

A budget's scope and what it names (customer, token, property) cannot be changed: its spend so
far belongs to that scope. Delete it and create another instead. Its limit, period, enforcement,
fail-closed setting and thresholds can change.
"""

import re
import unicodedata
from decimal import Decimal, InvalidOperation

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.accounts.models import Organization, User
from apps.accounts.services import audit_event_record
from apps.budgets.models import DEFAULT_THRESHOLDS, Budget, Period, Scope
from apps.keys import keycache
from apps.keys.models import ProxyToken
from apps.usage.metering.contract import (
    MAX_CUSTOMER_LENGTH,
    MAX_PROPERTY_NAME_LENGTH,
    MAX_PROPERTY_VALUE_LENGTH,
)

MAX_LIMIT_USD = Decimal("1000000000")
MAX_THRESHOLDS = 10
# As the proxy reads X-Costr-Property-<name> (names arrive lowercased in HTTP/2 and ASGI).
PROPERTY_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
CHANGEABLE = ("period", "limit_usd", "enforce", "fail_closed", "alert_thresholds")


class BudgetError(Exception):
    """Refused input about a budget: ``errors`` maps each field to what is wrong with it, in
    words for the person who typed it."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = errors


def _invalidate_on_commit(organization_id: int) -> None:
    transaction.on_commit(lambda: keycache.invalidate_organization(organization_id))


def clean_limit(value) -> Decimal:
    try:
        limit = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise BudgetError(
            {"limit_usd": "Give the limit in dollars, such as 250 or 19.99."}
        ) from None
    if not limit.is_finite() or limit <= 0:
        raise BudgetError({"limit_usd": "The limit must be more than $0."})
    if limit > MAX_LIMIT_USD:
        raise BudgetError({"limit_usd": "The limit can be at most $1,000,000,000."})
    if limit.as_tuple().exponent < -6:
        raise BudgetError({"limit_usd": "The limit can have at most 6 decimal places."})
    return limit


def clean_thresholds(value) -> list[int]:
    if value is None:
        return list(DEFAULT_THRESHOLDS)
    if not isinstance(value, list | tuple) or len(value) > MAX_THRESHOLDS:
        raise BudgetError(
            {"alert_thresholds": f"Give up to {MAX_THRESHOLDS} percentages, such as [50, 80, 100]."}
        )
    cleaned = set()
    for item in value:
        if type(item) is not int or not 1 <= item <= 1000:
            raise BudgetError(
                {"alert_thresholds": "Each threshold is a whole percentage from 1 to 1000."}
            )
        cleaned.add(item)
    return sorted(cleaned)


def _changed_thresholds(value) -> list[int]:
    """A change names its thresholds: null is no list here (on create it means the default)."""
    if value is None:
        raise BudgetError(
            {"alert_thresholds": "Give a list of percentages, such as [80, 100], or [] for none."}
        )
    return clean_thresholds(value)


def _clean_choice(field: str, value, choices) -> str:
    if value not in choices.values:
        names = ", ".join(choices.values)
        raise BudgetError({field: f"Choose one of: {names}."})
    return value


def _clean_bool(field: str, value) -> bool:
    if type(value) is not bool:
        raise BudgetError({field: "Must be true or false."})
    return value


def _clean_text(field: str, value, max_length: int, message: str) -> str:
    """``value`` as stripped text, or a BudgetError: empty, too long, or holding a control
    character or a lone surrogate (no header can carry one, and PostgreSQL refuses a NUL)."""
    if value is not None and not isinstance(value, str):
        raise BudgetError({field: "Must be text."})
    text = (value or "").strip()
    if not text or len(text) > max_length:
        raise BudgetError({field: message})
    if any(unicodedata.category(character) in ("Cc", "Cs") for character in text):
        raise BudgetError({field: "Control characters and lone surrogates are not allowed."})
    return text


def active_tokens(organization):
    """The organization's tokens a budget may name: neither revoked nor expired."""
    return ProxyToken.objects.for_org(organization).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()), revoked_at__isnull=True
    )


def _clean_target(organization: Organization, scope: str, fields: dict) -> dict:
    """The fields naming what a budget of ``scope`` covers, checked; the others emptied."""
    target = {"customer": "", "token": None, "property_name": "", "property_value": ""}
    if scope == Scope.CUSTOMER:
        target["customer"] = _clean_text(
            "customer",
            fields.get("customer"),
            MAX_CUSTOMER_LENGTH,
            "Name the customer, as X-Costr-Customer sends it "
            f"(at most {MAX_CUSTOMER_LENGTH} characters).",
        )
    elif scope == Scope.TOKEN:
        prefix = _clean_text(
            "token",
            fields.get("token"),
            64,
            "Name one of this organization's active tokens by its prefix.",
        )
        token = active_tokens(organization).filter(prefix=prefix).first()
        if token is None:
            raise BudgetError(
                {"token": "Name one of this organization's active tokens by its prefix."}
            )
        target["token"] = token
    elif scope == Scope.PROPERTY:
        name = str(fields.get("property_name") or "").strip().lower()
        if not name or len(name) > MAX_PROPERTY_NAME_LENGTH or not PROPERTY_NAME.fullmatch(name):
            raise BudgetError(
                {
                    "property_name": "The property's name as in X-Costr-Property-<name>: "
                    f"letters, digits, '_', '.' and '-', at most {MAX_PROPERTY_NAME_LENGTH}."
                }
            )
        value = _clean_text(
            "property_value",
            fields.get("property_value"),
            MAX_PROPERTY_VALUE_LENGTH,
            f"Give the value, in {MAX_PROPERTY_VALUE_LENGTH} characters at most.",
        )
        target["property_name"], target["property_value"] = name, value
    return target


def _same_scope(organization, scope: str, target: dict, period: str, exclude=None):
    clash = Budget.objects.for_org(organization).filter(scope=scope, period=period, **target)
    if exclude is not None:
        clash = clash.exclude(pk=exclude.pk)
    return clash.exists()


def budget_create(
    *,
    organization: Organization,
    actor: User | None,
    ip: str | None = None,
    scope,
    period,
    limit_usd,
    enforce=True,
    fail_closed=False,
    alert_thresholds=None,
    customer="",
    token="",
    property_name="",
    property_value="",
) -> Budget:
    scope = _clean_choice("scope", scope, Scope)
    period = _clean_choice("period", period, Period)
    fields = {
        "customer": customer,
        "token": token,
        "property_name": property_name,
        "property_value": property_value,
    }
    target = _clean_target(organization, scope, fields)
    values = {
        "limit_usd": clean_limit(limit_usd),
        "enforce": _clean_bool("enforce", enforce),
        "fail_closed": _clean_bool("fail_closed", fail_closed),
        "alert_thresholds": clean_thresholds(alert_thresholds),
    }
    with transaction.atomic():
        # One creation at a time per organization, so two at once cannot both pass the check
        # for a budget of the same scope and period (the row lock on the organization).
        Organization.objects.select_for_update().filter(pk=organization.pk).first()
        if _same_scope(organization, scope, target, period):
            raise BudgetError(
                {"scope": f"A {period} budget for this {scope.replace('_', ' ')} exists."}
            )
        budget = Budget.objects.create(
            organization=organization, scope=scope, period=period, **target, **values
        )
        audit_event_record(
            organization=organization,
            actor=actor,
            action="budget.created",
            target=budget.public_id,
            ip=ip,
            details={"scope": scope, "period": period, "limit_usd": str(budget.limit_usd)},
        )
        _invalidate_on_commit(organization.pk)
    return budget


def budget_update(
    *, budget: Budget, actor: User | None, ip: str | None = None, changes: dict
) -> Budget:
    unknown = set(changes) - set(CHANGEABLE)
    if unknown:
        field = sorted(unknown)[0]
        raise BudgetError(
            {field: "A budget's scope and what it names cannot change: create another budget."}
        )
    cleaners = {
        "period": lambda value: _clean_choice("period", value, Period),
        "limit_usd": clean_limit,
        "enforce": lambda value: _clean_bool("enforce", value),
        "fail_closed": lambda value: _clean_bool("fail_closed", value),
        "alert_thresholds": _changed_thresholds,
    }
    cleaned = {field: cleaners[field](value) for field, value in changes.items()}
    with transaction.atomic():
        budget = (
            Budget.objects.for_org(budget.organization_id).select_for_update().get(pk=budget.pk)
        )
        target = {
            "customer": budget.customer,
            "token": budget.token_id,
            "property_name": budget.property_name,
            "property_value": budget.property_value,
        }
        period = cleaned.get("period", budget.period)
        if period != budget.period and _same_scope(
            budget.organization_id, budget.scope, target, period, exclude=budget
        ):
            raise BudgetError({"period": f"A {period} budget for this scope exists already."})
        for field, value in cleaned.items():
            setattr(budget, field, value)
        budget.save()
        audit_event_record(
            organization=budget.organization,
            actor=actor,
            action="budget.changed",
            target=budget.public_id,
            ip=ip,
            details={field: str(value) for field, value in cleaned.items()},
        )
        _invalidate_on_commit(budget.organization_id)
    return budget


def budget_delete(*, budget: Budget, actor: User | None, ip: str | None = None) -> None:
    with transaction.atomic():
        organization, public_id = budget.organization, budget.public_id
        budget.delete()
        audit_event_record(
            organization=organization,
            actor=actor,
            action="budget.deleted",
            target=public_id,
            ip=ip,
            details={"at": timezone.now().isoformat()},
        )
        _invalidate_on_commit(organization.pk)
