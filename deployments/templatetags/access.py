"""The count of access requests waiting for the signed-in user, for the nav link."""

from django import template

from deployments import selectors

register = template.Library()


@register.simple_tag
def access_requests_waiting(user) -> int:
    return selectors.access_requests_to_decide_count(user=user)
