"""How the dashboards write money, counts and changes: exact enough to recognise a small cost
($0.0012 stays $0.0012), never a made-up $0 for unknown prices."""

from decimal import ROUND_HALF_UP, Decimal

from django import template
from django.contrib.humanize.templatetags.humanize import intcomma
from django.utils.html import format_html
from django.utils.safestring import mark_safe

register = template.Library()


@register.filter
def usd(value) -> str:
    """Dollars: two places from $1 up, four below it, six below a cent; "—" for no value."""
    if value is None or value == "":
        return "—"
    value = Decimal(value)
    size = abs(value)
    places = 2 if size >= 1 else 4 if size >= Decimal("0.01") else 6
    rounded = size.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
    if rounded == 0 and size != 0:
        return ("-" if value < 0 else "") + "<$0.000001"
    whole, _, fraction = f"{rounded:f}".partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{'-' if value < 0 and rounded else ''}${intcomma(int(whole))}.{fraction}"


@register.filter
def count(value) -> str:
    return "—" if value is None else intcomma(int(value))


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
