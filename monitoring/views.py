"""The performance page of a service (its prediction log, ground truth, what they show, its
alerts and webhooks), and each person's notification emails."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from core.charts import Series, line_chart
from core.errors import PortalError, or_404
from deployments import selectors as deployment_selectors
from deployments import services as deployment_services
from deployments.models import Environment, PredictionLogging
from monitoring import exposition, selectors, services
from monitoring.forms import (
    AlertRuleForm,
    FeedbackUploadForm,
    LoggingForm,
    NotificationPreferencesForm,
    ThresholdsForm,
    WebhookEventsForm,
    WebhookForm,
    preference_field,
)
from monitoring.models import DriftThresholds


def _page(service: str, environment: str) -> str:
    return f"{reverse('service_performance', args=[service])}?{urlencode({'environment': environment})}"


def _environment(request: HttpRequest) -> Environment:
    """The environment a page shows (the first one when none or an unknown one is asked for);
    a change (POST) must name one that exists."""
    environments = list(Environment.objects.all())
    wanted = request.GET.get("environment") or request.POST.get("environment")
    found = next((e for e in environments if e.name == wanted), None)
    if found is None and request.method == "POST":
        raise Http404(f"No environment named '{wanted}'.")
    if found is None and not environments:
        raise Http404("No environments are set up yet.")
    return found or environments[0]


@login_required
def service_performance(request: HttpRequest, name: str) -> HttpResponse:
    service = or_404(deployment_selectors.service_get, user=request.user, name=name)
    return _render(request, service, _environment(request))


def _render(request: HttpRequest, service, environment: Environment, **extra) -> HttpResponse:
    status = extra.pop("status", 200)
    policy = PredictionLogging.effective(service, environment)
    try:
        days = int(request.GET.get("days", 7))
    except ValueError:
        days = 7
    days = days if days in selectors.BUCKET_HOURS else 7
    user = request.user
    overview = selectors.performance_overview(user=user, service=service.name, environment=environment.name, days=days)
    recent = selectors.predictions_recent(user=user, service=service.name, environment=environment.name, limit=20)
    heatmap = selectors.drift_heatmap(
        user=user, service=service.name, environment=environment.name, version=request.GET.get("version", "")
    )
    can_change = user.has_perm("deployments.change_service", service)
    thresholds = DriftThresholds.effective(service)
    hooks = list(selectors.webhooks(user=user, service=service)) if can_change else []
    response = render(
        request,
        "monitoring/service_performance.html",
        {
            "service": service,
            "environment": environment,
            "environments": Environment.objects.all(),
            "policy": policy,
            "recent": recent,
            "days": days,
            "windows": [(1, "24 hours"), (7, "7 days"), (30, "30 days"), (90, "90 days")],
            "overview": overview,
            "charts": _charts(overview),
            "quality": [_quality_row(q) for q in overview.quality],
            "heatmap": _heatmap_rows(heatmap) if heatmap else None,
            "heatmap_data": heatmap,
            "thresholds": thresholds,
            "rules": selectors.alert_rules(user=user, service=service.name, environment=environment.name),
            "events": selectors.alert_events(user=user, service=service.name, environment=environment.name)[:20],
            "webhooks": [
                (
                    hook,
                    list(selectors.webhook_deliveries(webhook=hook)[:10]),
                    # Each webhook's own ids, so that several forms can be on the page.
                    WebhookEventsForm(initial={"events": hook.events}, auto_id=f"hook{hook.pk}-%s"),
                )
                for hook in hooks
            ],
            "can_change": can_change,
            "can_send_feedback": selectors.may_send_feedback(user, service),
            "logging_form": LoggingForm(
                initial={
                    "enabled": policy.enabled,
                    "sample_rate": policy.sample_rate,
                    "keep_payloads": policy.keep_payloads,
                    "retention_days": policy.retention_days,
                }
            ),
            "feedback_form": FeedbackUploadForm(),
            "rule_form": extra.pop("rule_form", None) or AlertRuleForm(),
            "webhook_form": extra.pop("webhook_form", None) or WebhookForm(),
            "thresholds_form": ThresholdsForm(
                initial={name: getattr(thresholds, name) for name in ThresholdsForm.base_fields}
            ),
            **extra,
        },
        status=status,
    )
    if "created_webhook" in extra:
        response["Cache-Control"] = "no-store"  # the page shows a secret once
    return response


def _charts(overview: selectors.Overview) -> dict:
    fmt = {1: "%H:%M", 6: "%a %H:%M"}.get(overview.bucket_hours, "%b %d")
    labels = [start.strftime(fmt) for start in overview.starts]
    volume = line_chart(
        labels=labels,
        series=[Series(version, [float(v) for v in values]) for version, values in overview.volume.items()],
        title=f"Logged predictions per {overview.bucket_hours} h, by version",
    )
    metric = (
        line_chart(
            labels=labels,
            series=[Series(version, values) for version, values in overview.metric.items()],
            title=f"Live {overview.metric_name} per {overview.bucket_hours} h, by version",
        )
        if overview.metric
        else ""
    )
    rows = [(label, [values[i] for values in overview.volume.values()]) for i, label in enumerate(labels)]
    return {"volume": volume, "volume_rows": [row for row in rows if any(row[1])], "metric": metric}


def _heatmap_rows(heatmap: selectors.HeatMap) -> list[tuple[str, list[tuple[object, str]]]]:
    """Per feature, each hour's score and its level: ok, warn, alert (or none)."""
    limits = heatmap.thresholds
    rows = []
    for feature, cells in heatmap.rows:
        levels = []
        for score in cells:
            if score is None or score.psi is None:
                level = "none"
            elif score.psi >= limits.psi_alert:
                level = "alert"
            elif (
                score.psi >= limits.psi_warn
                or score.missing_rate > limits.missing_rate
                or score.out_of_range_rate > limits.out_of_range_rate
            ):
                level = "warn"
            else:
                level = "ok"
            levels.append((score, level))
        rows.append((feature, levels))
    return rows


@login_required
@require_POST
def logging_change(request: HttpRequest, name: str) -> HttpResponse:
    service = or_404(deployment_selectors.service_get, user=request.user, name=name)
    environment = _environment(request)
    form = LoggingForm(request.POST)
    target = _page(service.name, environment.name)
    if not form.is_valid():
        messages.error(request, "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
        return redirect(target)
    try:
        deployment_services.prediction_logging_set(
            actor=request.user, service=service, environment=environment, **form.cleaned_data
        )
    except PortalError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"The prediction log of {service.name} in {environment.name} is updated.")
    return redirect(target)


@login_required
@require_POST
def feedback_upload(request: HttpRequest, name: str) -> HttpResponse:
    service = or_404(selectors.feedback_service_get, user=request.user, name=name)
    form = FeedbackUploadForm(request.POST, request.FILES)
    target = _page(service.name, request.POST.get("environment", ""))
    if not form.is_valid():
        messages.error(request, " ".join(form.errors.get("file", ["Choose a file."])))
        return redirect(target)
    upload = form.cleaned_data["file"]
    try:
        outcomes = services.outcomes_from_file(upload.name, upload.read())
        result = services.feedback_record(actor=request.user, service=service, items=outcomes)
    except PortalError as exc:
        messages.error(request, exc.message)
        return redirect(target)
    summary = f"{result.accepted} outcome(s) kept"
    if result.pending:
        summary += f", {len(result.pending)} of them for recent predictions not in the log yet"
    if result.unknown:
        shown = ", ".join(result.unknown[:5]) + (" …" if len(result.unknown) > 5 else "")
        summary += f"; {len(result.unknown)} id(s) are not predictions of {service.name}: {shown}"
    (messages.success if result.accepted else messages.error)(request, summary + ".")
    return redirect(target)


def _quality_row(quality) -> dict:
    key = selectors.HEADLINE.get(quality.task, "")
    return {
        "q": quality,
        "label": "RMSE" if key == "rmse" else key,
        "live": quality.metrics.get(key),
        "registered": quality.registered.get(key),
        "confusion": list(zip(quality.labels, quality.confusion, strict=True)),
    }


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics: Celery queues and task outcomes, the prediction log's backlog."""
    if not settings.PORTAL_METRICS_TOKEN:
        return JsonResponse({"detail": "Metrics are off: set PORTAL_METRICS_TOKEN to turn them on."}, status=404)
    if not exposition.authorised(request.headers.get("Authorization", "")):
        response = JsonResponse({"detail": "Send 'Authorization: Bearer <PORTAL_METRICS_TOKEN>'."}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="portal-metrics"'
        return response
    content_type, body = exposition.render()
    return HttpResponse(body, content_type=content_type)


# ---------------------------------------------------------------- alerts and drift thresholds


@login_required
@require_POST
def alert_rule_add(request: HttpRequest, name: str) -> HttpResponse:
    service = or_404(deployment_selectors.service_get, user=request.user, name=name)
    environment = _environment(request)
    form = AlertRuleForm(request.POST)
    if form.is_valid():
        try:
            rule = services.alert_rule_create(
                actor=request.user, service=service, environment=environment, **form.cleaned_data
            )
        except PortalError as exc:
            return _render(request, service, environment, rule_form=_refused(form, exc), status=exc.status_code)
        messages.success(request, f"Alert rule added: {rule.condition}.")
        return redirect(_page(service.name, environment.name) + "#alerts")
    return _render(request, service, environment, rule_form=form, status=400)


@login_required
@require_POST
def alert_rule_change(request: HttpRequest, rule_id: int) -> HttpResponse:
    rule = or_404(selectors.alert_rule_get, user=request.user, rule_id=rule_id)
    action = request.POST.get("action")
    try:
        if action == "delete":
            services.alert_rule_delete(actor=request.user, rule=rule)
            messages.success(request, f"Alert rule deleted: {rule.condition}.")
        elif action in ("enable", "disable"):
            services.alert_rule_update(actor=request.user, rule=rule, enabled=action == "enable")
            messages.success(request, f"Alert rule {action}d: {rule.condition}.")
        else:
            messages.error(request, "Unknown action.")
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect(_page(rule.service.name, rule.environment.name) + "#alerts")


@login_required
@require_POST
def webhook_add(request: HttpRequest, name: str) -> HttpResponse:
    service = or_404(deployment_selectors.service_get, user=request.user, name=name)
    environment = _environment(request)
    form = WebhookForm(request.POST)
    if form.is_valid():
        try:
            hook = services.webhook_create(
                actor=request.user, service=service, url=form.cleaned_data["url"], events=form.cleaned_data["events"]
            )
        except PortalError as exc:
            return _render(request, service, environment, webhook_form=_refused(form, exc), status=exc.status_code)
        return _render(request, service, environment, created_webhook=hook, status=201)
    return _render(request, service, environment, webhook_form=form, status=400)


def _refused(form, exc: PortalError):
    """The form with the service's refusal on the field it names (or on the whole form)."""
    field = getattr(exc, "field", None)
    form.add_error(field if field in form.fields else None, exc.message)
    return form


@login_required
@require_POST
def webhook_events(request: HttpRequest, webhook_id: int) -> HttpResponse:
    hook = or_404(selectors.webhook_get, user=request.user, webhook_id=webhook_id)
    form = WebhookEventsForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Webhook to {hook.host}: {form.errors['events'][0]}")
    else:
        try:
            services.webhook_update(actor=request.user, webhook=hook, events=form.cleaned_data["events"])
        except PortalError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Webhook to {hook.host} now gets: {', '.join(hook.events)}.")
    return redirect(_page(hook.service.name, request.POST.get("environment", "")) + "#alerts")


@login_required
@require_POST
def webhook_remove(request: HttpRequest, webhook_id: int) -> HttpResponse:
    hook = or_404(selectors.webhook_get, user=request.user, webhook_id=webhook_id)
    try:
        services.webhook_delete(actor=request.user, webhook=hook)
    except PortalError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Webhook to {hook.host} removed.")
    return redirect(_page(hook.service.name, request.POST.get("environment", "")) + "#alerts")


@login_required
@require_POST
def drift_thresholds_change(request: HttpRequest, name: str) -> HttpResponse:
    service = or_404(deployment_selectors.service_get, user=request.user, name=name)
    environment = _environment(request)
    form = ThresholdsForm(request.POST)
    if not form.is_valid():
        messages.error(request, "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
    else:
        try:
            services.drift_thresholds_set(actor=request.user, service=service, **form.cleaned_data)
        except PortalError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Drift thresholds of {service.name} saved.")
    return redirect(_page(service.name, environment.name) + "#drift")


@login_required
def notification_preferences(request: HttpRequest) -> HttpResponse:
    """Which notification emails the signed-in person gets."""
    status = 200
    if request.method == "POST":
        form = NotificationPreferencesForm(request.POST)
        if form.is_valid():
            services.notification_preferences_set(actor=request.user, email=form.choices())
            messages.success(request, "Your notification emails are saved.")
            return redirect("notification_preferences")
        status = 400
    else:
        choices = selectors.notification_preferences(user=request.user)
        form = NotificationPreferencesForm(initial={preference_field(k): on for k, on in choices.items()})
    return render(
        request,
        "monitoring/notification_preferences.html",
        {"form": form, "has_email": bool(request.user.email)},
        status=status,
    )
