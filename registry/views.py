"""HTML pages of the model registry: model list and detail, version detail, the registration form."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods, require_POST

from accounts import selectors as account_selectors
from core.charts import Series, line_chart
from core.errors import InvalidInput, PortalError, or_404
from registry import reference, selectors, services
from registry.forms import ModelCreateForm, ModelEditForm, ReferenceForm, VersionRegisterForm
from registry.multipart import (
    ARTIFACT_FIELD,
    ArtifactUploadHandler,
    StagedArtifactFile,
    body_idle_timeout,
    version_input_from,
)


@login_required
def model_list(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    team = request.GET.get("team", "").strip()
    models = selectors.models_with_latest(models=selectors.model_list(user=request.user, search=query, team=team))
    page = Paginator(models, 25).get_page(request.GET.get("page"))
    params = {k: v for k, v in (("q", query), ("team", team)) if v}
    return render(
        request,
        "registry/model_list.html",
        {
            "page": page,
            "query": query,
            "team": team,
            "teams": account_selectors.team_list(user=request.user).values_list("name", flat=True),
            "query_string": urlencode(params),
            "can_create": bool(_creatable_teams(request.user)),
        },
    )


def _creatable_teams(user) -> list[str]:
    return [t.name for t in account_selectors.team_list(user=user) if user.has_perm("accounts.create_model", t)]


@login_required
@require_http_methods(["GET", "POST"])
def model_create(request: HttpRequest) -> HttpResponse:
    teams = _creatable_teams(request.user)
    form = ModelCreateForm(request.POST or None, teams=teams, initial={"team": request.GET.get("team")})
    if request.method == "POST" and form.is_valid():
        try:
            team = account_selectors.team_get(user=request.user, name=form.cleaned_data["team"])
            model = services.registered_model_create(
                actor=request.user,
                name=form.cleaned_data["name"],
                team=team,
                description=form.cleaned_data["description"],
            )
        except PortalError as exc:
            form.add_error("name" if exc.status_code in (400, 409) else None, exc.message)
        else:
            messages.success(request, f"Model '{model.name}' registered. Now register its first version.")
            return redirect("version_register", name=model.name)
    return render(
        request, "registry/model_create.html", {"form": form, "teams": teams}, status=400 if form.errors else 200
    )


@login_required
def model_detail(request: HttpRequest, name: str) -> HttpResponse:
    model = or_404(selectors.model_get, user=request.user, name=name)
    versions = list(selectors.version_list(model=model))
    metric_names = selectors.metric_names(versions)
    chronological = list(reversed(versions))
    chart = line_chart(
        labels=[v.version for v in chronological],
        series=[Series(name=m, values=[v.metrics.get(m) for v in chronological]) for m in metric_names],
        title=f"Evaluation metrics of {model.name} by version",
    )
    return render(
        request,
        "registry/model_detail.html",
        {
            "model": model,
            "versions": versions,
            "metric_names": metric_names,
            "chart": chart,
            "can_register": request.user.has_perm("registry.register_version", model),
            "can_edit": request.user.has_perm("registry.change_registeredmodel", model),
            "owners": account_selectors.membership_list(team=model.team).filter(role="owner"),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def model_edit(request: HttpRequest, name: str) -> HttpResponse:
    model = or_404(selectors.model_get, user=request.user, name=name)
    form = ModelEditForm(request.POST or None, initial={"description": model.description})
    if request.method == "POST" and form.is_valid():
        try:
            services.registered_model_update(actor=request.user, model=model, **form.cleaned_data)
        except PortalError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, "Description saved.")
            return redirect("model_detail", name=model.name)
    return render(
        request, "registry/model_edit.html", {"model": model, "form": form}, status=403 if form.errors else 200
    )


@login_required
def version_detail(request: HttpRequest, name: str, version: str) -> HttpResponse:
    model = or_404(selectors.model_get, user=request.user, name=name)
    found = or_404(selectors.version_get, model=model, version=version)
    return render(
        request,
        "registry/version_detail.html",
        {
            "model": model,
            "version": found,
            "breaking": [c for c in found.changes if c["breaking"]],
            "compatible": [c for c in found.changes if not c["breaking"]],
            "download_url": reverse("api_version_artifact", args=[model.name, found.version]),
            "reference": selectors.version_reference(version=found),
            "reference_min_rows": reference.MIN_ROWS,
            "reference_form": ReferenceForm(),
            "can_set_reference": request.user.has_perm("registry.register_version", model),
        },
    )


@login_required
@require_POST
def version_reference(request: HttpRequest, name: str, version: str) -> HttpResponse:
    model = or_404(selectors.model_get, user=request.user, name=name)
    found = or_404(selectors.version_get, model=model, version=version)
    if not request.user.has_perm("registry.register_version", model):
        messages.error(request, f"Only owners, maintainers and members of team '{model.team.name}' may set it.")
        return redirect(reverse("version_detail", args=[model.name, found.version]) + "#reference")
    form = ReferenceForm(request.POST, request.FILES)
    if not form.is_valid():
        messages.error(request, " ".join(form.errors.get("file", ["Choose a file."])))
    else:
        upload = form.cleaned_data["file"]
        try:
            services.version_reference_set(actor=request.user, version=found, filename=upload.name, data=upload.read())
        except PortalError as exc:
            messages.error(request, exc.message)
        else:
            rows = found.reference["rows"]
            messages.success(request, f"Reference data set: {rows:,} rows of {upload.name}.")
    return redirect(reverse("version_detail", args=[model.name, found.version]) + "#reference")


@method_decorator(csrf_exempt, name="dispatch")
class VersionRegisterView(View):
    """The registration form. With JavaScript it uploads to the API with a progress bar;
    without, it posts here and the same upload handler and service do the work.

    CSRF is checked in post(), after the streaming upload handler is installed: the CSRF
    middleware would otherwise parse the upload first, into Django's temporary files.
    """

    def dispatch(self, request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        model = or_404(selectors.model_get, user=request.user, name=kwargs["name"])
        try:
            # Before the body is read: nothing is staged and no check process starts for
            # someone who may not register this model.
            services.version_register_check(actor=request.user, model=model)
        except PortalError as exc:
            raise PermissionDenied(exc.message) from None
        if request.method != "POST":
            return super().dispatch(request, *args, **kwargs)
        handler = ArtifactUploadHandler(request)
        request.upload_handlers = [handler]
        try:
            with body_idle_timeout(request):
                return super().dispatch(request, *args, **kwargs)
        except PortalError as exc:  # raised while the upload is parsed (too large, two artifacts, stalled)
            error = exc
        finally:
            handler.discard()
        return self._page(
            request,
            model,
            VersionRegisterForm(),
            status=error.status_code,
            error={"message": error.message, "details": []},
        )

    def _page(self, request, model, form, status=200, error=None):
        latest = selectors.version_list(model=model).first()
        return render(
            request,
            "registry/version_register.html",
            {
                "model": model,
                "form": form,
                "latest": latest,
                "error": error,
                "api_url": reverse("api_model_versions", args=[model.name]),
                "max_bytes": settings.ARTIFACT_MAX_BYTES,
                "quota": settings.ARTIFACT_QUOTA_BYTES,
                "quota_used": selectors.artifact_bytes_used(user=request.user)[0],
            },
            status=status,
        )

    def get(self, request, name: str):
        model = or_404(selectors.model_get, user=request.user, name=name)  # may register: checked in dispatch
        latest = selectors.version_list(model=model).first()
        initial = {}
        if latest is not None:
            initial = {
                "version": f"{latest.major}.{latest.minor + 1}.0",
                "flavor": latest.flavor,
                "sample_input": json.dumps({"instances": latest.sample_input}),
            }
        return self._page(request, model, VersionRegisterForm(initial=initial))

    @method_decorator(csrf_protect)
    def post(self, request, name: str):
        handler: ArtifactUploadHandler = request.upload_handlers[0]
        model = or_404(selectors.model_get, user=request.user, name=name)
        try:
            upload = request.FILES.get(ARTIFACT_FIELD)
            if not isinstance(upload, StagedArtifactFile):
                raise InvalidInput("Attach the model file.", field=ARTIFACT_FIELD)
            data = version_input_from(request.POST, request.FILES)
            data.artifact_filename = upload.name or ""
            version = services.model_version_register(
                actor=request.user, model=model, data=data, staged=upload.staged, check=upload.check
            )
        except PortalError as exc:
            form = VersionRegisterForm({k: v for k, v in request.POST.items() if k != "csrfmiddlewaretoken"})
            details = exc.extra.get("breaking_changes", [])
            return self._page(
                request, model, form, status=exc.status_code, error={"message": exc.message, "details": details}
            )
        finally:
            handler.discard()
        messages.success(request, f"Version {version.version} of {model.name} registered.")
        return redirect("version_detail", name=model.name, version=version.version)
