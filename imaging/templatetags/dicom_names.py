"""Display helpers for DICOM values in server-rendered pages."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def person_name(value: str) -> str:
    """``Family^Given^Middle^Prefix^Suffix`` as people read it: ``DOE, Kenji H``."""
    if not value:
        return ""
    family, given, middle, prefix, suffix = (value.split("^") + [""] * 5)[:5]
    first = " ".join(part for part in (prefix, given, middle) if part)
    name = f"{family.upper()}, {first}" if first else family.upper()
    return f"{name} {suffix}".strip()
