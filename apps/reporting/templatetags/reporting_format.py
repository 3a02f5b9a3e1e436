"""How the dashboards write money, counts, durations and changes: one rule each, used by every
reporting template (and by static/js/charts.js, which repeats the money rule for its tooltips and
axes; tests/browser/test_reporting_pages.py holds the two to the same output). Exact enough to
recognise a small cost ($0.0012 stays $0.0012), never a made-up $0 for unknown prices.

- Money (``usd``): from $1 up, cents with thousands separators ($1,234.50); below $1, three
  significant digits, never fewer than two decimals ($0.10, $0.098, $0.114, $0.000225); below
  $0.000001, "<$0.000001"; zero "$0.00".
- Counts (``count``): whole numbers with thousands separators (40,000); ``compact`` for cards.
- Durations (``duration``): below 1 ms two decimals (0.42 ms), below a second whole
  milliseconds (842 ms), from a second seconds to one decimal (12.9 s, 1,234.5 s).
- Dates: days as "Mar 2, 2026", moments as "Mar 2, 2026 09:05:07" (Django's date filter),
  local to the organization's time zone.
"""

from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import urlencode

from django import template
from django.contrib.humanize.templatetags.humanize import intcomma
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe

register = template.Library()


SMALLEST_USD = Decimal("0.000001")
MONEY_SIGNIFICANT_DIGITS = 3


@register.filter
def usd(value) -> str:
    """Dollars by the module's money rule; "—" for no value."""
    if value is None or value == "":
        return "—"
    value = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    size = abs(value)
    sign = "-" if value < 0 else ""
    if size == 0:
        return "$0.00"
    if size < SMALLEST_USD:
        return f"{sign}<$0.000001"
    if size < 1:
        # Places that keep three significant digits: 0.098 -> 4 places (0.0980), 0.5 -> 3.
        places = MONEY_SIGNIFICANT_DIGITS - 1 - size.adjusted()
        rounded = size.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
        if rounded < 1:
            whole, _, fraction = f"{rounded:f}".partition(".")
            return f"{sign}$0.{fraction.rstrip('0').ljust(2, '0')}"
        size = rounded  # 0.9996 rounds up to $1.00
    rounded = size.quantize(Decimal("0.01"), ROUND_HALF_UP)
    whole, _, fraction = f"{rounded:f}".partition(".")
    return f"{sign}${intcomma(int(whole))}.{fraction}"


@register.filter
def count(value) -> str:
    return "—" if value is None else intcomma(int(value))


@register.filter
def number(value) -> str:
    """A count, or a measure with a fraction (12.5 audio seconds) kept as it is."""
    if value is None:
        return "—"
    if isinstance(value, float) and not value.is_integer():
        return intcomma(value)
    return intcomma(int(value))


@register.filter
def duration(milliseconds) -> str:
    """Milliseconds by the module's duration rule; "—" for none."""
    if milliseconds is None or milliseconds == "":
        return "—"
    value = Decimal(str(milliseconds))
    if value < 1 and value != 0:
        return f"{value.quantize(Decimal('0.01'), ROUND_HALF_UP)} ms"
    if value < 1000:
        whole = value.quantize(Decimal(1), ROUND_HALF_UP)
        if whole < 1000:
            return f"{whole} ms"
    seconds = (value / 1000).quantize(Decimal("0.1"), ROUND_HALF_UP)
    whole, _, fraction = f"{seconds:f}".partition(".")
    return f"{intcomma(int(whole))}.{fraction} s"


@register.filter
def percent(value, places: int = 1) -> str:
    """A share (0.123) as "12.3%"."""
    if value is None:
        return "—"
    return f"{Decimal(value) * 100:.{places}f}%"


@register.simple_tag
def change(current, previous, kind: str = "relative"):
    """The change from the previous period: ▲/▼ with the relative change in percent ("new" when
    the previous period had none), or for rates (``kind="points"``) the difference in
    percentage points."""
    if current is None or previous is None:
        return mark_safe('<span class="change none">—</span>')
    current, previous = Decimal(str(current)), Decimal(str(previous))
    if kind == "points":
        delta = (current - previous) * 100
        if abs(delta) < Decimal("0.05"):
            return mark_safe('<span class="change flat">±0 pts</span>')
        arrow, css = ("▲", "up") if delta > 0 else ("▼", "down")
        return format_html(
            '<span class="change {}" title="vs previous period">{} {} pts</span>',
            css,
            arrow,
            f"{abs(delta):.1f}",
        )
    if previous == 0:
        if current == 0:
            return mark_safe('<span class="change flat">—</span>')
        return mark_safe('<span class="change new" title="none in the previous period">new</span>')
    ratio = (current - previous) * 100 / abs(previous)
    if abs(ratio) < Decimal("0.5"):
        return mark_safe('<span class="change flat">±0%</span>')
    arrow, css = ("▲", "up") if ratio > 0 else ("▼", "down")
    return format_html(
        '<span class="change {}" title="vs previous period">{} {}%</span>',
        css,
        arrow,
        f"{abs(ratio):.0f}",
    )


@register.filter
def compact(value) -> str:
    """A large count in few characters (2.22B, 201M, 12.3K); exact below 10,000."""
    if value is None:
        return "—"
    value = int(value)
    if abs(value) >= 10**9:
        return f"{value / 10**9:.3g}B"
    if abs(value) >= 10**6:
        return f"{value / 10**6:.3g}M"
    if abs(value) >= 10**4:
        return f"{value / 10**3:.3g}K"
    return intcomma(value)


@register.simple_tag(takes_context=True)
def period_url(context, url_name: str, *args, **params) -> str:
    """The URL called ``url_name`` with the page's chosen period (``period_query``) and ``params``
    (those left empty dropped): how every drill-down keeps the period. Autoescaped in the
    template, so "&" reads "&amp;" in the attribute."""
    query = "&".join(
        part
        for part in (
            context.get("period_query", ""),
            urlencode({key: value for key, value in params.items() if value not in (None, "")}),
        )
        if part
    )
    url = reverse(url_name, args=args)
    return f"{url}?{query}" if query else url
