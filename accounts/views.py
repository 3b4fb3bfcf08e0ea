"""HTML pages for accounts. Thin: validate a form, call a service, show the result."""

from __future__ import annotations

import logging
from datetime import datetime, time, timedelta
from urllib.parse import urlencode

import requests
from authlib.integrations.base_client import OAuthError
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render, resolve_url
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import selectors, services, sso
from accounts.forms import AuditFilterForm, MemberAddForm, MemberRoleForm, TeamCreateForm, TokenCreateForm
from accounts.ldap_settings import DIRECTORY_UNREACHABLE
from accounts.models import AuditAction, Role
from accounts.permissions import manageable_roles, may_create_teams
from accounts.throttles import sign_in_refusal
from core.errors import NotAllowed, NotFound, PortalError, or_404

logger = logging.getLogger(__name__)


class LoginView(auth_views.LoginView):
    """The sign-in page: single sign-on's button when configured, and the password form while
    local passwords or the company directory are on."""

    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def password_form_shown(self) -> bool:
        return bool(settings.LDAP_SERVER_URI) or services.sign_in_settings_get().password_sign_in

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context.update(
            oidc_enabled=settings.OIDC_ENABLED,
            oidc_provider_name=settings.OIDC_PROVIDER_NAME,
            password_form=self.password_form_shown(),
            directory=bool(settings.LDAP_SERVER_URI),
            directory_unreachable=getattr(self.request, "directory_unreachable", False),
            directory_unreachable_message=DIRECTORY_UNREACHABLE,
        )
        return context

    def post(self, request, *args, **kwargs):
        if not self.password_form_shown():
            # Refused here, not only hidden: superusers have the admin's sign-in page.
            messages.error(request, PASSWORD_SIGN_IN_OFF)
            request.method = "GET"
            response = self.get(request, *args, **kwargs)
            response.status_code = 403
            return response
        if refused := refuse_sign_in(request):
            return refused(lambda: self.get(request, *args, **kwargs))
        response = super().post(request, *args, **kwargs)
        if getattr(request, "directory_unreachable", False) and response.status_code == 200:
            response.status_code = 503  # not signed in, and why is not the person's doing
        return response


PASSWORD_SIGN_IN_OFF = "".join(  # a message, not a password
    (
        "Sign-in with a password is switched off here; use single sign-on. ",
        "Portal admins (superusers) can still sign in with their password at /admin/login/.",
    )
)


def _safe_next(request: HttpRequest, candidate: str | None) -> str:
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return resolve_url(settings.LOGIN_REDIRECT_URL)


@require_GET
def oidc_login(request: HttpRequest) -> HttpResponse:
    """Start single sign-on: to the provider, which comes back to oidc_callback."""
    if not settings.OIDC_ENABLED:
        raise Http404("Single sign-on is not configured on this portal.")
    request.session[OIDC_NEXT] = _safe_next(request, request.GET.get("next"))
    try:
        return sso.oidc_client().authorize_redirect(request, request.build_absolute_uri(reverse("oidc_callback")))
    except (OSError, requests.RequestException, ValueError) as exc:
        logger.warning("Single sign-on: the provider's discovery document could not be read: %s", type(exc).__name__)
        messages.error(request, _provider_unreachable())
        return redirect("login")


OIDC_NEXT = "oidc_next"
OIDC_ID_TOKEN = "oidc_id_token"  # noqa: S105 (a session key)


def _provider_unreachable() -> str:
    return (
        f"{settings.OIDC_PROVIDER_NAME} cannot be reached right now, so single sign-on is not available. "
        "Try again in a few minutes; if it persists, tell IT."
    )


@require_GET
def oidc_callback(request: HttpRequest) -> HttpResponse:
    """The provider's answer: check it, find or create the user, refresh their memberships."""
    if not settings.OIDC_ENABLED:
        raise Http404("Single sign-on is not configured on this portal.")
    name = settings.OIDC_PROVIDER_NAME
    if error := request.GET.get("error"):
        description = request.GET.get("error_description", "")[:300]
        messages.error(request, f"{name} did not sign you in ({error}{': ' + description if description else ''}).")
        return redirect("login")
    client = sso.oidc_client()
    try:
        token = client.authorize_access_token(request)
        claims = sso.oidc_claims(client, token)
        user = sso.oidc_sign_in(claims=claims)
    except sso.SignInRefused as exc:
        services.audit_event_record(
            actor=None, action=AuditAction.LOGIN_FAILED, data={"source": "oidc", "reason": exc.message}
        )
        messages.error(request, exc.message)
        return redirect("login")
    except OAuthError as exc:
        # A stale or replayed answer (state or nonce), a bad ID token, a refused code.
        logger.info("Single sign-on refused: %s", exc.error)
        messages.error(request, f"Sign-in with {name} did not complete ({exc.error}). Start again.")
        return redirect("login")
    except (OSError, requests.RequestException) as exc:
        logger.warning("Single sign-on: the provider could not be reached: %s", type(exc).__name__)
        messages.error(request, _provider_unreachable())
        return redirect("login")
    next_url = request.session.pop(OIDC_NEXT, None) or resolve_url(settings.LOGIN_REDIRECT_URL)
    login(request, user, backend="accounts.backends.HumanModelBackend")
    # Kept for the provider's logout (id_token_hint); login() has just cycled the session.
    if token.get("id_token"):
        request.session[OIDC_ID_TOKEN] = token["id_token"]
    return redirect(_safe_next(request, next_url))


class LogoutView(auth_views.LogoutView):
    """End the portal session; after single sign-on, also the provider's session when it
    advertises an end_session_endpoint (RP-initiated logout)."""

    def post(self, request, *args, **kwargs):
        id_token = request.session.get(OIDC_ID_TOKEN)
        response = super().post(request, *args, **kwargs)
        if id_token and settings.OIDC_ENABLED:
            try:
                end_session = sso.oidc_client().load_server_metadata().get("end_session_endpoint")
            except (OSError, requests.RequestException, ValueError):
                end_session = None
            if end_session:
                query = urlencode(
                    {
                        "id_token_hint": id_token,
                        "client_id": settings.OIDC_CLIENT_ID,
                        "post_logout_redirect_uri": request.build_absolute_uri(reverse("login")),
                    }
                )
                return redirect(f"{end_session}{'&' if '?' in end_session else '?'}{query}")
        return response


def admin_login(request: HttpRequest, extra_context=None) -> HttpResponse:
    """The admin's sign-in, throttled with the portal's (the admin's own view is not)."""
    if request.method == "POST" and (refused := refuse_sign_in(request)):
        return refused(lambda: admin.site.login(request, extra_context))
    return admin.site.login(request, extra_context)


def refuse_sign_in(request: HttpRequest):
    """None if this password sign-in may go on, else a function that answers 429 with the
    sign-in page (`show` renders it) saying why, without trying the password."""
    refusal = sign_in_refusal(request)
    if refusal is None:
        return None
    message, wait = refusal

    def answer(show) -> HttpResponse:
        messages.error(request, message)
        request.method = "GET"  # the form again, unbound: the password is not tried
        response = show()
        response.status_code = 429
        response["Retry-After"] = str(wait)
        return response

    return answer


@login_required
@require_http_methods(["GET", "POST"])
def team_list(request: HttpRequest) -> HttpResponse:
    form = TeamCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            team = services.team_create(actor=request.user, **form.cleaned_data)
        except PortalError as exc:
            form.add_error("name" if exc.status_code != 403 else None, exc.message)
        else:
            messages.success(request, f"Team '{team.name}' created. You are its owner.")
            return redirect("team_detail", name=team.name)
    teams = selectors.team_list(user=request.user)
    query = request.GET.get("q", "").strip()
    if query:
        teams = teams.filter(name__icontains=query)
    page = Paginator(teams, 25).get_page(request.GET.get("page"))
    return render(
        request,
        "accounts/team_list.html",
        {
            "page": page,
            "form": form,
            "query": query,
            "query_string": urlencode({"q": query}) if query else "",
            "can_create": may_create_teams(request.user),
        },
        status=400 if form.errors else 200,
    )


@login_required
@require_http_methods(["GET", "POST"])
def team_detail(request: HttpRequest, name: str) -> HttpResponse:
    team = or_404(selectors.team_get, user=request.user, name=name)
    form = MemberAddForm(request.POST or None)
    if request.method == "POST":
        # Before anything looks at the username: the answer must not tell who exists.
        try:
            services.membership_manage_check(actor=request.user, team=team, roles=[])
        except NotAllowed as exc:
            raise PermissionDenied(exc.message) from None
    if request.method == "POST" and form.is_valid():
        try:
            services.membership_manage_check(actor=request.user, team=team, roles=[form.cleaned_data["role"]])
            user = selectors.user_get(username=form.cleaned_data["username"])
            services.membership_add(actor=request.user, team=team, user=user, role=form.cleaned_data["role"])
        except PortalError as exc:
            form.add_error("username" if exc.status_code == 400 else None, exc.message)
        else:
            messages.success(request, f"Added {user.username} as {form.cleaned_data['role']}.")
            return redirect("team_detail", name=team.name)
    my_role = selectors.team_role(team=team, user=request.user)
    can_manage = request.user.has_perm("accounts.manage_members", team)
    privileged = request.user.is_superuser or my_role == Role.OWNER
    allowed = manageable_roles(can_manage=can_manage, is_owner_or_admin=privileged)
    rows = [
        {
            "membership": m,
            "is_me": m.user_id == request.user.pk,
            "can_change": m.user_id != request.user.pk and m.role in allowed,
            "role_choices": [(value, label) for value, label in Role.choices if value in allowed],
        }
        for m in selectors.membership_list(team=team)
    ]
    if not privileged:
        form.fields["role"].choices = [(v, label) for v, label in Role.choices if v in allowed]
    return render(
        request,
        "accounts/team_detail.html",
        {
            "team": team,
            "rows": rows,
            "my_role": my_role,
            "can_manage": can_manage,
            "privileged": privileged,
            "form": form,
        },
        status=400 if form.errors else 200,
    )


def _member_or_404(team, username: str):
    membership = selectors.membership_list(team=team).filter(user__username=username).first()
    if membership is None:
        raise Http404(f"'{username}' is not a member of team '{team.name}'.")
    return membership


@login_required
@require_POST
def member_role(request: HttpRequest, name: str, username: str) -> HttpResponse:
    team = or_404(selectors.team_get, user=request.user, name=name)
    membership = _member_or_404(team, username)
    form = MemberRoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Pick one of the roles: " + ", ".join(Role.values) + ".")
    else:
        try:
            services.membership_change_role(
                actor=request.user, team=team, user=membership.user, role=form.cleaned_data["role"]
            )
        except PortalError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"{username} is now {form.cleaned_data['role']}.")
    return redirect("team_detail", name=team.name)


@login_required
@require_http_methods(["GET", "POST"])
def member_remove(request: HttpRequest, name: str, username: str) -> HttpResponse:
    team = or_404(selectors.team_get, user=request.user, name=name)
    membership = _member_or_404(team, username)
    leaving = membership.user_id == request.user.pk
    if request.method == "POST":
        try:
            services.membership_remove(actor=request.user, team=team, user=membership.user)
        except PortalError as exc:
            messages.error(request, exc.message)
            return redirect("team_detail", name=team.name)
        if leaving:
            messages.success(request, f"You left team '{team.name}'.")
            return redirect("team_list")
        messages.success(request, f"Removed {username} from '{team.name}'.")
        return redirect("team_detail", name=team.name)
    return render(request, "accounts/member_remove.html", {"team": team, "membership": membership, "leaving": leaving})


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def token_list(request: HttpRequest) -> HttpResponse:
    form = TokenCreateForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        try:
            token, raw = services.token_create(actor=request.user, user=request.user, **form.cleaned_data)
        except PortalError as exc:
            form.add_error("name" if exc.status_code != 403 else None, exc.message)
        else:
            # The secret is rendered into this one response and never stored: it is not
            # put in the session or a redirect, and the page is marked no-store.
            created = {"token": token, "secret": raw}
            form = TokenCreateForm()
    tokens = selectors.token_list(user=request.user)
    page = Paginator(tokens, 25).get_page(request.GET.get("page"))
    status = 201 if created else (400 if form.errors else 200)
    return render(request, "accounts/token_list.html", {"page": page, "form": form, "created": created}, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    try:
        token = selectors.token_get(user=request.user, token_id=token_id)
    except NotFound as exc:
        raise Http404(exc.message) from None
    if token.user_id != request.user.pk:
        raise Http404("No such token among yours.")
    if request.method == "POST":
        if services.token_revoke(actor=request.user, token=token):
            messages.success(request, f"Token '{token.name}' ({token.prefix}…) revoked. It stops working at once.")
        else:
            messages.info(request, f"Token '{token.name}' was already revoked.")
        return redirect("token_list")
    return render(request, "accounts/token_revoke.html", {"token": token})


@login_required
def audit_list(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET or None)
    filters = selectors.AuditFilters()
    if form.is_bound and form.is_valid() and form.cleaned_data["until"] and form.cleaned_data["until"].year >= 9999:
        form.add_error("until", "Pick a date before the year 9999.")
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        tz = timezone.get_current_timezone()
        filters = selectors.AuditFilters(
            actor=data["actor"].strip(),
            action=data["action"],
            team=data["team"].strip(),
            target=data["target"].strip(),
            since=timezone.make_aware(datetime.combine(data["since"], time.min), tz) if data["since"] else None,
            until=(
                timezone.make_aware(datetime.combine(data["until"] + timedelta(days=1), time.min), tz)
                if data["until"]
                else None
            ),
        )
    try:
        events = selectors.audit_list(user=request.user, filters=filters)
    except NotAllowed as exc:
        return render(request, "403.html", {"message": exc.message}, status=403)
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "accounts/audit_list.html", {"page": page, "form": form, "query": query.urlencode()})
