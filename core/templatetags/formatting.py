"""Formatting filters only: no queries and no decisions here."""

import json

from django import template
from django.template.defaultfilters import filesizeformat
from django.utils.safestring import mark_safe

from core.markdown import render as render_markdown

register = template.Library()


@register.filter
def markdown(text: str):
    return render_markdown(text)


@register.filter
def pretty_json(value) -> str:
    return json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False)


@register.filter
def bytes_human(size: int) -> str:
    return filesizeformat(size)


@register.filter
def get_item(mapping, key):
    return mapping.get(key) if isinstance(mapping, dict) else None


@register.filter
def inline_markdown(text: str):
    """One line of Markdown (e.g. `code` in a change message), without the paragraph."""
    html = str(render_markdown(text)).strip()
    if html.startswith("<p>") and html.endswith("</p>"):
        html = html[3:-4]
    return mark_safe(html)  # noqa: S308 - sanitised by core.markdown.render
