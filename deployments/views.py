"""HTML pages for services, deployments and approvals."""

from __future__ import annotations

from datetime import UTC, date, datetime
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import dateformat, timezone
from django.utils.html import format_html
from django.views.decorators.http import require_http_methods, require_POST

from accounts import selectors as account_selectors
from core.charts import Series, line_chart
from core.errors import InvalidInput, PortalError, or_404
from deployments import selectors, services
from deployments.forms import (
    AccessRequestForm,
    DeploymentRequestForm,
    DeprecationForm,
    GrantForm,
    GrantLimitsForm,
    ServiceCreateForm,
)
from deployments.models import AccessRequest, Status, Strategy
from registry import selectors as registry_selectors


@login_required
def service_list(request: HttpRequest) -> HttpResponse:
    """The catalog: every service, searchable, with what is live and how to call it."""
    query = request.GET.get("q", "").strip()
    team = request.GET.get("team", "").strip()
    environment = request.GET.get("environment", "").strip()
    found = selectors.catalog_list(search=query, team=team, environment=environment)
    page = Paginator(found, 25).get_page(request.GET.get("page"))
    page.object_list = selectors.catalog_entries(user=request.user, services=page.object_list)
    filtered = {k: v for k, v in (("q", query), ("team", team), ("environment", environment)) if v}
    return render(
        request,
        "deployments/service_list.html",
        {
            "page": page,
            "query": query,
            "team": team,
            "environment": environment,
            "filtered": bool(filtered),
            "page_query": urlencode(filtered),
            **selectors.catalog_filters(),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def service_create(request: HttpRequest) -> HttpResponse:
    models = [
        (m.name, f"{m.name} ({m.team.name})")
        for m in registry_selectors.model_list(user=request.user)
        if request.user.has_perm("accounts.create_model", m.team)
    ]
    form = ServiceCreateForm(request.POST or None, models=models, initial={"model": request.GET.get("model")})
    if request.method == "POST" and form.is_valid():
        try:
            model = registry_selectors.model_get(user=request.user, name=form.cleaned_data["model"])
            service = services.service_create(
                actor=request.user,
                name=form.cleaned_data["name"],
                team=model.team,
                model=model,
                description=form.cleaned_data["description"],
            )
        except PortalError as exc:
            form.add_error("name" if exc.status_code in (400, 409) else None, exc.message)
        else:
            messages.success(request, f"Service '{service.name}' created. Deploy a version to make it callable.")
            return redirect("service_detail", name=service.name)
    return render(
        request, "deployments/service_create.html", {"form": form, "models": models}, status=400 if form.errors else 200
    )


def _usage_charts(service) -> dict:
    usage = selectors.service_usage(service=service)
    labels = [f"{(u.minute // 60) % 1440 // 60:02d}:{(u.minute // 60) % 60:02d}" for u in usage]
    requests_chart = line_chart(
        labels=labels,
        series=[Series("requests/min", [u.requests for u in usage])],
        title="Requests per minute, last hour",
    )
    latency_chart = line_chart(
        labels=labels,
        series=[
            Series("p50 ms", [u.percentile(0.5) for u in usage]),
            Series("p95 ms", [u.percentile(0.95) for u in usage]),
        ],
        title="Latency (upper bucket bound), last hour",
    )
    errors_chart = line_chart(
        labels=labels,
        series=[Series("error %", [round(100 * u.errors / u.requests, 2) if u.requests else None for u in usage])],
        title="Server errors (5xx) as a share of requests, last hour",
    )
    total = sum(u.requests for u in usage)
    return {
        "usage_total": total,
        "usage_errors": sum(u.errors for u in usage),
        "usage_rejected": sum(u.rejected for u in usage),
        "requests_chart": requests_chart,
        "latency_chart": latency_chart,
        "errors_chart": errors_chart,
    }


def _day_start(day) -> datetime | None:
    return datetime.combine(day, datetime.min.time(), tzinfo=UTC) if day else None


def _access_request_form(request: HttpRequest, data=None) -> AccessRequestForm:
    accounts = [a.username for a in selectors.service_accounts_looked_after(user=request.user)]
    form = AccessRequestForm(data, accounts=accounts)
    if not accounts and data is None:
        # Nobody to ask for but oneself: no choice to show. A posted choice is still checked.
        del form.fields["service_account"]
    return form


@login_required
def service_detail(request: HttpRequest, name: str) -> HttpResponse:
    service = or_404(selectors.catalog_get, name=name)
    (entry,) = selectors.catalog_entries(user=request.user, services=[service])
    if not entry.can_view:
        # Anyone signed in finds the service in the catalog and may ask for access; the
        # model behind it and the team's pages stay with those who may see them.
        return render(
            request,
            "deployments/service_catalog.html",
            {"entry": entry, "service": service, "request_form": _access_request_form(request)},
        )
    live = selectors.live_by_route(service=service)
    endpoints = [
        {
            "deployment": d,
            "endpoint": f"{settings.GATEWAY_URL}/serve/{d.route_key}/predict",
            "curl": selectors.curl_example(
                f"{settings.GATEWAY_URL}/serve/{d.route_key}/predict", d.version.sample_input or []
            ),
        }
        for d in live
    ]
    version_rows = list(registry_selectors.version_list(model=service.model))
    versions = [v.version for v in version_rows]
    deprecations = {d.major: d for d in selectors.deprecation_list(service=service)}
    majors = [
        {"major": major, "deprecation": deprecations.get(major), "form": DeprecationForm(auto_id=f"id_v{major}_%s")}
        for major in sorted({v.major for v in version_rows}, reverse=True)
    ]
    can_deploy = request.user.has_perm("deployments.deploy_service", service)
    history = Paginator(selectors.deployment_list(user=request.user, service=service), 15).get_page(
        request.GET.get("page")
    )
    return render(
        request,
        "deployments/service_detail.html",
        {
            "service": service,
            "endpoints": endpoints,
            "history": history,
            "grants": selectors.grant_list(service=service),
            "consumer_usage": selectors.consumer_usage(service=service),
            "can_deploy": can_deploy and bool(versions),
            "can_manage_grants": request.user.has_perm("deployments.manage_grants", service),
            "deploy_form": DeploymentRequestForm(
                versions=versions, initial={"version": versions[0] if versions else None}
            ),
            "grant_form": GrantForm(),
            "grants_with_forms": [
                (g, GrantLimitsForm(auto_id=f"id_g{g.pk}_%s", initial=_limits_initial(g)))
                for g in selectors.grant_list(service=service)
            ],
            "entry": entry,
            "request_form": _access_request_form(request),
            "pending_requests": selectors.access_request_list(
                user=request.user, status=AccessRequest.Status.PENDING, service=service.name, to_decide=True
            ),
            "majors": majors,
            "deprecated": set(deprecations),
            "can_change": request.user.has_perm("deployments.change_service", service),
            **_usage_charts(service),
        },
    )


@login_required
@require_POST
def deprecation_change(request: HttpRequest, name: str, major: int) -> HttpResponse:
    service = or_404(selectors.service_get, user=request.user, name=name)
    try:
        if request.POST.get("action") == "undeprecate":
            if services.major_undeprecate(actor=request.user, service=service, major=major):
                messages.success(request, f"/v{major} is no longer deprecated; the gateway drops the headers at once.")
        else:
            form = DeprecationForm(request.POST)
            if not form.is_valid():
                messages.error(request, " ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
                return redirect("service_detail", name=service.name)
            day = form.cleaned_data["sunset"]
            services.major_deprecate(
                actor=request.user,
                service=service,
                major=major,
                note=form.cleaned_data["note"],
                sunset_at=datetime.combine(day, datetime.min.time(), tzinfo=UTC) if day else None,
            )
            messages.success(
                request,
                f"/v{major} is deprecated: its callers get Deprecation"
                + (f" and Sunset ({day:%Y-%m-%d})" if day else "")
                + " headers from now on.",
            )
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect("service_detail", name=service.name)


@login_required
@require_POST
def deployment_request(request: HttpRequest, name: str) -> HttpResponse:
    service = or_404(selectors.service_get, user=request.user, name=name)
    versions = [v.version for v in registry_selectors.version_list(model=service.model)]
    form = DeploymentRequestForm(request.POST, versions=versions)
    if not form.is_valid():
        messages.error(
            request,
            "Pick a version and an environment. " + " ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()),
        )
        return redirect("service_detail", name=service.name)
    try:
        version = registry_selectors.version_get(model=service.model, version=form.cleaned_data["version"])
        environment = selectors.environment_get(name=form.cleaned_data["environment"])
        deployment = services.deployment_request(
            actor=request.user,
            service=service,
            version=version,
            environment=environment,
            replicas=form.cleaned_data["replicas"],
            reason=form.cleaned_data["reason"],
            rollout=_rollout(form.cleaned_data),
        )
    except PortalError as exc:
        messages.error(request, exc.message)
        return redirect("service_detail", name=service.name)
    return redirect("deployment_detail", deployment_id=deployment.pk)


def _rollout(data: dict) -> services.Rollout:
    """The form's strategy settings; those of the other strategy are left out, not refused
    (the form shows all of them at once)."""
    strategy = data.get("strategy") or Strategy.BLUE_GREEN
    if strategy == Strategy.CANARY:
        return services.Rollout(
            strategy=strategy, steps=data.get("steps"), bake_seconds=data.get("bake_seconds"), sticky=data["sticky"]
        )
    if strategy == Strategy.SHADOW:
        return services.Rollout(strategy=strategy, shadow_percent=data.get("shadow_percent"))
    return services.Rollout()


def _limits_initial(grant) -> dict:
    return {
        "expires": grant.expires_at.astimezone(UTC).date() if grant.expires_at else None,
        "rate_per_second": grant.rate_per_second,
        "burst": grant.burst,
        "daily_quota": grant.daily_quota,
    }


def _form_errors(form) -> str:
    """A form's errors as one message line, each led by its field's label."""
    parts = []
    for name, errors in form.errors.items():
        field = form.fields.get(name)
        label = (field.label or name.replace("_", " ").capitalize()) if field else ""
        parts.append(f"{label}: {' '.join(errors)}" if label else " ".join(errors))
    return " ".join(parts)


def _limits(data: dict) -> services.GrantLimits:
    return services.GrantLimits(
        expires_at=_day_start(data.get("expires")),
        rate_per_second=data.get("rate_per_second"),
        burst=data.get("burst"),
        daily_quota=data.get("daily_quota"),
    )


@login_required
@require_POST
def grant_create(request: HttpRequest, name: str) -> HttpResponse:
    service = or_404(selectors.service_get, user=request.user, name=name)
    form = GrantForm(request.POST)
    if not form.is_valid():
        messages.error(request, _form_errors(form) or "Give a user or a team.")
        return redirect("service_detail", name=service.name)
    try:
        if not request.user.has_perm("deployments.manage_grants", service):
            raise PermissionDenied("Only owners and maintainers may grant access.")
        user = account_selectors.user_get(username=form.cleaned_data["user"]) if form.cleaned_data["user"] else None
        team = account_selectors.team_by_name(name=form.cleaned_data["team"]) if form.cleaned_data["team"] else None
        grant = services.grant_create(
            actor=request.user, service=service, user=user, team=team, limits=_limits(form.cleaned_data)
        )
    except PortalError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Granted: {grant}.")
    return redirect("service_detail", name=service.name)


@login_required
@require_POST
def grant_limits(request: HttpRequest, name: str, grant_id: int) -> HttpResponse:
    service = or_404(selectors.service_get, user=request.user, name=name)
    grant = or_404(selectors.grant_get, service=service, grant_id=grant_id)
    form = GrantLimitsForm(request.POST)
    if not form.is_valid():
        messages.error(request, _form_errors(form))
        return redirect("service_detail", name=service.name)
    limits = _limits(form.cleaned_data)
    changes = {
        "rate_per_second": limits.rate_per_second,
        "burst": limits.burst,
        "daily_quota": limits.daily_quota,
    }
    # The form shows days: the same day leaves the expiry as it is (a time set through the API
    # stays, and one that is passing as this runs is the sweep's, not a reason to refuse).
    shown = grant.expires_at.astimezone(UTC).date() if grant.expires_at else None
    if form.cleaned_data.get("expires") != shown:
        changes["expires_at"] = limits.expires_at
    try:
        services.grant_update(actor=request.user, grant=grant, **changes)
    except PortalError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Changed the limits of: {grant}. The gateways apply them within a second.")
    return redirect("service_detail", name=service.name)


@login_required
@require_POST
def access_request_create(request: HttpRequest, name: str) -> HttpResponse:
    service = or_404(selectors.catalog_get, name=name)
    form = _access_request_form(request, request.POST)
    if not form.is_valid():
        messages.error(request, _form_errors(form))
        return redirect("service_detail", name=service.name)
    try:
        account_name = form.cleaned_data.get("service_account")
        account = account_selectors.user_get(username=account_name, field="service_account") if account_name else None
        created = services.access_request_create(
            actor=request.user,
            service=service,
            reason=form.cleaned_data["reason"],
            service_account=account,
            expires_at=_day_start(form.cleaned_data["expires"]),
        )
    except PortalError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request,
            f"Asked for access to {service.name} (request #{created.pk}). The owners and maintainers of team "
            f"{service.team.name} decide; you find the answer under Access requests.",
        )
    return redirect("service_detail", name=service.name)


@login_required
def access_queue(request: HttpRequest) -> HttpResponse:
    """Pending requests the user decides, and the user's own requests."""
    to_decide = selectors.access_request_list(user=request.user, status=AccessRequest.Status.PENDING, to_decide=True)
    mine = Paginator(selectors.access_request_list(user=request.user, mine=True), 20).get_page(request.GET.get("page"))
    return render(request, "deployments/access_queue.html", {"to_decide": to_decide, "mine": mine})


@login_required
@require_POST
def access_request_action(request: HttpRequest, request_id: int, action: str) -> HttpResponse:
    found = or_404(selectors.access_request_get, user=request.user, request_id=request_id)
    comment = request.POST.get("comment", "").strip()
    try:
        if action == "approve":
            expires = request.POST.get("expires", "").strip()
            extra = {}
            if expires:
                try:
                    extra["expires_at"] = _day_start(date.fromisoformat(expires))
                except ValueError:
                    raise InvalidInput("Write the end of the access as a date, YYYY-MM-DD.") from None
            services.access_request_approve(actor=request.user, access_request=found, comment=comment, **extra)
            messages.success(request, f"Approved #{found.pk}: {found.subject.username} may call {found.service.name}.")
        elif action == "reject":
            services.access_request_reject(actor=request.user, access_request=found, comment=comment)
            messages.success(request, f"Rejected #{found.pk}.")
        elif action == "withdraw":
            services.access_request_withdraw(actor=request.user, access_request=found)
            messages.success(request, f"Withdrew your request #{found.pk}.")
        else:
            raise Http404("No such action.")
    except PortalError as exc:
        messages.error(request, exc.message)
    if request.POST.get("next") == "service":
        return redirect("service_detail", name=found.service.name)
    return redirect("access_queue")


@login_required
@require_http_methods(["GET", "POST"])
def grant_revoke(request: HttpRequest, name: str, grant_id: int) -> HttpResponse:
    service = or_404(selectors.service_get, user=request.user, name=name)
    grant = or_404(selectors.grant_get, service=service, grant_id=grant_id)
    if request.method == "POST":
        try:
            services.grant_revoke(actor=request.user, grant=grant)
        except PortalError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Revoked: {grant}. It takes effect within a second.")
        return redirect("service_detail", name=service.name)
    return render(request, "deployments/grant_revoke.html", {"service": service, "grant": grant})


@login_required
def deployment_detail(request: HttpRequest, deployment_id: int) -> HttpResponse:
    deployment = or_404(selectors.deployment_get, user=request.user, deployment_id=deployment_id)
    user = request.user
    context = {
        "deployment": deployment,
        "events": selectors.deployment_events(deployment=deployment),
        "trial": selectors.trial(deployment=deployment),
        "can_steer": deployment.status in (Status.CANARY, Status.SHADOW)
        and user.has_perm("deployments.deploy_service", deployment.service),
        "instances": selectors.deployment_logs(deployment=deployment, tail=100),
        "endpoint": f"{settings.GATEWAY_URL}/serve/{deployment.route_key}/predict",
        "can_approve": user.is_approver
        and deployment.status == Status.PENDING_APPROVAL
        and deployment.requested_by_id != user.pk,
        "own_request": deployment.requested_by_id == user.pk,
        "can_cancel": deployment.status in (Status.REQUESTED, Status.PENDING_APPROVAL, Status.APPROVED)
        and (deployment.requested_by_id == user.pk or user.has_perm("deployments.change_service", deployment.service)),
        "can_rollback": deployment.status == Status.LIVE
        and user.has_perm("deployments.deploy_service", deployment.service),
        "final": deployment.status
        not in (
            Status.REQUESTED,
            Status.PENDING_APPROVAL,
            Status.APPROVED,
            Status.PROVISIONING,
            Status.CANARY,
            Status.SHADOW,
        ),
    }
    context["no_actions"] = _no_actions(deployment, user, context)
    context["event_time"] = EVENT_TIME
    return render(request, "deployments/deployment_detail.html", context)


def _no_actions(deployment, user, context: dict) -> str:
    """Why the Actions card offers nothing to this person, or "" when it offers something
    (an approver who may not steer a service sees why, not an empty card)."""
    if any(context[k] for k in ("can_approve", "can_cancel", "can_steer", "can_rollback")):
        return ""
    if deployment.status in (Status.PENDING_APPROVAL, Status.LIVE):
        return ""  # the card says who must decide, or shows the endpoint
    label = deployment.get_status_display().lower()
    if context["final"]:
        return f"Nothing to do: this deployment has ended ({label})."
    if not user.has_perm("deployments.deploy_service", deployment.service):
        return f"Only members of team {deployment.service.team.name} can steer this deployment; this page follows it."
    return f"Nothing to do while it is {label}: the actions come back once it is live."


@login_required
def deployment_status(request: HttpRequest, deployment_id: int) -> JsonResponse:
    """What the deployment page polls: status and the events after the last one it has."""
    deployment = or_404(selectors.deployment_get, user=request.user, deployment_id=deployment_id)
    try:
        after = int(request.GET.get("after", 0))
    except ValueError:
        after = 0
    events = [
        {
            "id": e.id,
            "at": e.created_at.isoformat(),
            "time": dateformat.format(timezone.localtime(e.created_at), EVENT_TIME),  # as the page renders it
            "level": e.level,
            "message": e.message,
            "actor": e.actor.username if e.actor else None,
        }
        for e in selectors.deployment_events(deployment=deployment, after=after)
    ]
    instances = [
        {"name": i.name, "state": i.state, "url": i.url, "restarts": i.restarts}
        for i in deployment.instances.order_by("name")
    ]
    return JsonResponse(
        {
            "status": deployment.status,
            "label": deployment.get_status_display(),
            "events": events,
            "instances": instances,
            # A canary's step or pause changed: the page reloads to show the new split and timeline.
            "trial_key": f"{deployment.step_index}:{int(deployment.paused)}",
            "analysis": deployment.analysis or None,
        }
    )


EVENT_TIME = "H:i:s"  # every event time on the deployment page, rendered or polled: 08:23:44

STEERING = {
    "pause": ("paused: it stays at its share, unjudged, until resumed", services.deployment_pause),
    "resume": ("resumed: its step starts its bake again", services.deployment_resume),
    "promote": ("promoted: it is live, and the old version drains and stops", services.deployment_promote),
    "abort": ("aborted: back to 0 %, the live version keeps serving", services.deployment_abort),
}


def _named(deployment, what: str) -> str:
    """A message about a deployment that links to it (from the approval queue, the person
    would otherwise have to find it); every part is escaped."""
    return format_html(
        'Deployment <a href="{}">#{}</a> ({} {} to {}) {}',
        reverse("deployment_detail", kwargs={"deployment_id": deployment.pk}),
        deployment.pk,
        deployment.service.name,
        deployment.version.version,
        deployment.environment.name,
        what,
    )


@login_required
@require_POST
def deployment_action(request: HttpRequest, deployment_id: int, action: str) -> HttpResponse:
    deployment = or_404(selectors.deployment_get, user=request.user, deployment_id=deployment_id)
    comment = request.POST.get("comment", "").strip()[:1000]
    target = deployment
    try:
        if action == "approve":
            services.deployment_approve(actor=request.user, deployment=deployment, comment=comment)
            messages.success(request, _named(deployment, "approved; a worker is rolling it out."))
        elif action == "reject":
            services.deployment_reject(actor=request.user, deployment=deployment, comment=comment)
            messages.success(request, _named(deployment, "rejected."))
        elif action == "cancel":
            services.deployment_cancel(actor=request.user, deployment=deployment)
            messages.success(request, f"Deployment #{deployment.pk} cancelled.")
        elif action == "rollback":
            target = services.deployment_rollback(actor=request.user, deployment=deployment)
            messages.success(request, f"Rolling back: deployment #{target.pk} restores {target.version.version}.")
        elif action in STEERING:
            verb, act = STEERING[action]
            act(actor=request.user, deployment=deployment)
            messages.success(request, f"Deployment #{deployment.pk} {verb}.")
        elif action == "scale":
            try:
                replicas = int(request.POST.get("replicas", ""))
            except ValueError:
                messages.error(request, "Replicas must be a whole number.")
                return redirect("deployment_detail", deployment_id=deployment.pk)
            services.deployment_scale(actor=request.user, deployment=deployment, replicas=replicas)
            messages.success(request, f"Scaling to {replicas} replica(s) without downtime.")
        else:
            raise Http404("No such action.")
    except PortalError as exc:
        messages.error(request, exc.message)
    if request.POST.get("next") == "queue":
        return redirect("approval_queue")
    return redirect("deployment_detail", deployment_id=target.pk)


@login_required
def approval_queue(request: HttpRequest) -> HttpResponse:
    if not request.user.is_approver:
        raise PermissionDenied("The approval queue is for IT approvers.")
    return render(request, "deployments/approval_queue.html", {"pending": selectors.approval_queue(user=request.user)})
