"""Monitoring's panels on other apps' pages (the service page, the model page), so those apps
need not import monitoring: their templates load this library."""

from __future__ import annotations

from django import template

from monitoring import selectors

register = template.Library()


@register.inclusion_tag("monitoring/service_alerts.html", takes_context=True)
def service_alerts(context, service) -> dict:
    user = context["request"].user
    return {"service": service, "firing": list(selectors.firing_rules(user=user, service=service))}


@register.inclusion_tag("monitoring/model_live_metrics.html", takes_context=True)
def model_live_metrics(context, model, versions) -> dict:
    """Each version's registered metrics beside its live ones, per service and environment."""
    user = context["request"].user
    live = selectors.model_live_metrics(user=user, model_id=model.pk)
    columns = sorted({(m.service, m.environment) for m in live})
    by_key = {(m.version, m.service, m.environment): m for m in live}
    rows = []
    for version in versions:
        registered = selectors.registered_metrics(version)
        cells = [by_key.get((version.version, service, environment)) for service, environment in columns]
        rows.append({"version": version, "registered": registered, "live": cells})
    names = sorted({name for m in live for name in m.metrics})
    return {"model": model, "columns": columns, "rows": rows, "names": names, "has_live": bool(live)}
