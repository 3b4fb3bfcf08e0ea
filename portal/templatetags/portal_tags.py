"""Formatting filters only: no queries and no decisions here."""

import json

from django import template
from django.template.defaultfilters import filesizeformat

from portal import markdown as portal_markdown

register = template.Library()


@register.filter
def markdown(text: str):
    return portal_markdown.render(text)


@register.filter
def pretty_json(value) -> str:
    return json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False)


@register.filter
def bytes_human(size: int) -> str:
    return filesizeformat(size)


@register.filter
def get_item(mapping, key):
    return mapping.get(key) if isinstance(mapping, dict) else None
