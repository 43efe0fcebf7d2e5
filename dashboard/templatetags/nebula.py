"""Number formatting for the dashboard, matching what static/dashboard/js/nebula.js prints when
the same figure is updated live."""

from __future__ import annotations

from datetime import datetime, timedelta

from django import template
from django.utils import timezone
from django.utils.timesince import timesince

register = template.Library()


@register.filter
def compact(value: float | int | None) -> str:
    """1234 → 1.2k, 5600000 → 5.6M."""
    if value is None:
        return "—"
    number = float(value)
    for bound, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= bound:
            text = f"{number / bound:.1f}".removesuffix(".0")
            return f"{text}{suffix}"
    return f"{number:.0f}" if number == int(number) else f"{number:.1f}"


@register.filter
def ms(value: float | None) -> str:
    """Milliseconds, or seconds once they are long."""
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.0f} ms"


@register.filter
def percent(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 100:.1f}%" if value < 0.1 else f"{value * 100:.0f}%"


@register.filter
def uptime(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


@register.filter
def get(mapping: dict[str, object] | None, key: str) -> object:
    return (mapping or {}).get(key)


@register.filter
def ago(when: datetime | None) -> str:
    """“just now”, “5 minutes ago”, “2 days, 3 hours ago”."""
    if when is None:
        return "never"
    if timezone.now() - when < timedelta(minutes=1):
        return "just now"
    return f"{timesince(when)} ago"
