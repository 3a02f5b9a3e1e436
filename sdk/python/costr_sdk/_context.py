"""``customer(id, **properties)``: who a call is for, kept in a context variable, so each thread
and each asyncio task sees its own and nested blocks restore the outer one when they end."""

from __future__ import annotations

import contextvars
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

CUSTOMER_HEADER = "X-Costr-Customer"
PROPERTY_HEADER_PREFIX = "X-Costr-Property-"
# The proxy's limits (DESIGN.md, "Limits"): longer strings are cut there, so they are cut here
# too, and a direct call's record carries what a proxied one would have.
MAX_CUSTOMER_LENGTH = 255
MAX_PROPERTY_NAME_LENGTH = 64
MAX_PROPERTY_VALUE_LENGTH = 255
MAX_PROPERTIES = 20


@dataclass(frozen=True)
class Attribution:
    customer: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    # The headers of this attribution, built once when the block is entered.
    headers: tuple[tuple[str, str], ...] = ()


EMPTY = Attribution()
current: contextvars.ContextVar[Attribution] = contextvars.ContextVar(
    "costr_sdk_attribution", default=EMPTY
)


def _header_value(value: str) -> str:
    """Without the line breaks and controls a header cannot hold (httpx sends it as UTF-8, as
    the proxy reads it)."""
    text = "".join(ch if ch >= " " and ch != "\x7f" else " " for ch in value)
    return text.strip().encode("utf-8", "replace").decode("utf-8")


def _header_name(name: str) -> str:
    """A property name as a header token: what a header name cannot hold becomes ``-``."""
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "-" for ch in name)


def attribution(customer_id: Any, properties: dict[str, Any], outer: Attribution) -> Attribution:
    customer = None if customer_id is None else str(customer_id)[:MAX_CUSTOMER_LENGTH]
    merged = dict(outer.properties)
    for name, value in properties.items():
        key = _header_name(str(name)).lower()[:MAX_PROPERTY_NAME_LENGTH]
        if key:
            merged[key] = str(value)[:MAX_PROPERTY_VALUE_LENGTH]
    if len(merged) > MAX_PROPERTIES:
        merged = dict(list(merged.items())[:MAX_PROPERTIES])
    headers: list[tuple[str, str]] = []
    if customer:
        headers.append((CUSTOMER_HEADER, _header_value(customer)))
    headers += [(PROPERTY_HEADER_PREFIX + k, _header_value(v)) for k, v in merged.items()]
    return Attribution(customer=customer or None, properties=merged, headers=tuple(headers))


class customer:
    """Attribute every call inside to ``customer_id`` (``X-Costr-Customer``) and ``properties``
    (``X-Costr-Property-<name>``), as a context manager or a decorator (sync or async).

    A nested block names its own customer and adds its properties to the outer ones.
    """

    def __init__(self, customer_id: Any, /, **properties: Any) -> None:
        self._customer_id = customer_id
        self._properties = properties
        self._tokens: list[contextvars.Token[Attribution]] = []

    def __enter__(self) -> Attribution:
        value = attribution(self._customer_id, self._properties, current.get())
        self._tokens.append(current.set(value))
        return value

    def __exit__(self, *exc_info: object) -> None:
        current.reset(self._tokens.pop())

    async def __aenter__(self) -> Attribution:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__()

    def __call__(self, function: Any) -> Any:
        customer_id, properties = self._customer_id, self._properties
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with customer(customer_id, **properties):
                    return await function(*args, **kwargs)

            return async_wrapper

        if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
            raise TypeError("costr_sdk.customer cannot decorate a generator; use `with` inside it")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with customer(customer_id, **properties):
                return function(*args, **kwargs)

        return wrapper
