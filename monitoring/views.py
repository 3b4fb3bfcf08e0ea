"""The performance page of a service: its prediction log, ground truth, and what they show."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from core.errors import PortalError, or_404
from deployments import selectors as deployment_selectors
from deployments import services as deployment_services
from deployments.models import Environment, PredictionLogging
from monitoring import exposition, selectors, services
from monitoring.forms import FeedbackUploadForm, LoggingForm


def _page(service: str, environment: str) -> str:
    return f"{reverse('service_performance', args=[service])}?{urlencode({'environment': environment})}"


def _environment(request: HttpRequest) -> Environment:
    environments = list(Environment.objects.all())
    wanted = request.GET.get("environment") or request.POST.get("environment")
    return next((e for e in environments if e.name == wanted), environments[0] if environments else None)


@login_required
def service_performance(request: HttpRequest, name: str) -> HttpResponse:
    service = or_404(deployment_selectors.service_get, user=request.user, name=name)
    environment = _environment(request)
    policy = PredictionLogging.effective(service, environment)
    recent = selectors.predictions_recent(
        user=request.user, service=service.name, environment=environment.name, limit=20
    )
    quality = selectors.quality_by_version(user=request.user, service=service.name, environment=environment.name)
    can_change = request.user.has_perm("deployments.change_service", service)
    return render(
        request,
        "monitoring/service_performance.html",
        {
            "service": service,
            "environment": environment,
            "environments": Environment.objects.all(),
            "policy": policy,
            "recent": recent,
            "quality": [_quality_row(q) for q in quality],
            "can_change": can_change,
            "can_send_feedback": selectors.may_send_feedback(request.user, service),
            "logging_form": LoggingForm(
                initial={
                    "enabled": policy.enabled,
                    "sample_rate": policy.sample_rate,
                    "keep_payloads": policy.keep_payloads,
                    "retention_days": policy.retention_days,
                }
            ),
            "feedback_form": FeedbackUploadForm(),
        },
    )


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


# The live metric shown first, per task, and how it reads.
HEADLINE = {"classification": ("accuracy", "accuracy"), "regression": ("rmse", "RMSE")}


def _quality_row(quality) -> dict:
    key, label = HEADLINE.get(quality.task, ("", ""))
    return {
        "q": quality,
        "label": label,
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
