"""REST API for accounts: the caller, users, teams, members, tokens and the audit log."""

from __future__ import annotations

from datetime import datetime, time

from django.contrib.auth import authenticate
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import Throttled
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, services
from accounts.ldap_settings import DIRECTORY_UNREACHABLE
from accounts.models import ApiToken, AuditAction, AuditEvent, Membership, Role, Team, TokenScope, User
from accounts.permissions import IsAdmin, TokenScopePermission
from accounts.throttles import sign_in_refusal
from core.errors import InvalidInput, NotAllowed, NotFound, Unavailable
from core.openapi import NameField
from core.rest import Pagination, StrictSerializer

# The defaults (authenticated, token scopes) plus the admin check: replacing the list
# instead of extending it would let a read-only admin token write.
ADMIN_ONLY = [IsAuthenticated, TokenScopePermission, IsAdmin]

# ---------------------------------------------------------------- output shapes


class UserOutput(serializers.ModelSerializer):
    roles = serializers.SerializerMethodField()

    class Meta:
        model = User
        fields = ["id", "username", "email", "is_service_account", "is_active", "roles", "date_joined"]

    @extend_schema_field(serializers.ListField(child=serializers.ChoiceField(choices=["approver", "admin"])))
    def get_roles(self, user: User) -> list[str]:
        return [role for role, held in (("approver", user.is_approver), ("admin", user.is_superuser)) if held]


class TeamRoleOutput(serializers.Serializer):
    name = serializers.CharField()
    role = serializers.ChoiceField(choices=Role.choices)


class MeOutput(UserOutput):
    teams = serializers.SerializerMethodField()

    class Meta(UserOutput.Meta):
        fields = [*UserOutput.Meta.fields, "teams"]

    @extend_schema_field(TeamRoleOutput(many=True))
    def get_teams(self, user: User) -> list[dict[str, str]]:
        return [{"name": m.team.name, "role": m.role} for m in selectors.memberships_of(user=user)]


class MembershipOutput(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")
    is_service_account = serializers.BooleanField(source="user.is_service_account")

    class Meta:
        model = Membership
        fields = ["username", "role", "is_service_account", "created_at"]


class TeamOutput(serializers.ModelSerializer):
    member_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Team
        fields = ["name", "description", "created_at", "member_count"]


class TeamDetailOutput(TeamOutput):
    members = serializers.SerializerMethodField()
    your_role = serializers.SerializerMethodField()

    class Meta(TeamOutput.Meta):
        fields = [*TeamOutput.Meta.fields, "your_role", "members"]

    @extend_schema_field(MembershipOutput(many=True))
    def get_members(self, team: Team) -> list[dict]:
        return MembershipOutput(selectors.membership_list(team=team), many=True).data

    @extend_schema_field(serializers.ChoiceField(choices=Role.choices, allow_null=True))
    def get_your_role(self, team: Team) -> str | None:
        return selectors.team_role(team=team, user=self.context["request"].user)


class TokenOutput(serializers.ModelSerializer):
    state = serializers.CharField(read_only=True)

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "scopes", "created_at", "expires_at", "last_used_at", "revoked_at", "state"]


class TokenCreatedOutput(TokenOutput):
    token = serializers.CharField(help_text="The secret. Shown only in this response: store it now.")
    user = serializers.CharField(source="user.username")

    class Meta(TokenOutput.Meta):
        fields = ["token", "user", *TokenOutput.Meta.fields]


class AuditEventOutput(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_username")
    team = serializers.CharField(source="team_name")

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "action",
            "target_type",
            "target_id",
            "target_repr",
            "team",
            "data",
            "ip",
            "user_agent",
            "source",
        ]


# ---------------------------------------------------------------- users


class MeApi(APIView):
    @extend_schema(responses=MeOutput, summary="Who am I")
    def get(self, request):
        return Response(MeOutput(request.user).data)


class UserCreateApi(APIView):
    permission_classes = ADMIN_ONLY

    class UserCreateInput(StrictSerializer):
        username = serializers.CharField(max_length=150)
        password = serializers.CharField(
            required=False, allow_blank=False, write_only=True, style={"input_type": "password"}
        )
        email = serializers.EmailField(required=False, allow_blank=True, default="")
        is_service_account = serializers.BooleanField(required=False, default=False)
        roles = serializers.ListField(child=serializers.CharField(), required=False, default=list)

    @extend_schema(
        request=UserCreateInput, responses={201: UserOutput}, summary="Create a user or service account (admins)"
    )
    def post(self, request):
        data = _validated(self.UserCreateInput, request)
        user = services.user_create(actor=request.user, **data)
        return Response(UserOutput(user).data, status=status.HTTP_201_CREATED)


class UserDetailApi(APIView):
    permission_classes = ADMIN_ONLY

    class UserUpdateInput(StrictSerializer):
        roles = serializers.ListField(child=serializers.CharField(), required=False)
        is_active = serializers.BooleanField(required=False)

    @extend_schema(responses=UserOutput, summary="Show a user (admins)")
    def get(self, request, username: str):
        return Response(UserOutput(_user_or_404(username)).data)

    @extend_schema(request=UserUpdateInput, responses=UserOutput, summary="Change a user's roles or status (admins)")
    def patch(self, request, username: str):
        data = _validated(self.UserUpdateInput, request)
        user = services.user_update(actor=request.user, user=_user_or_404(username), **data)
        return Response(UserOutput(user).data)


def _user_or_404(username: str) -> User:
    user = User.objects.filter(username=username).first()
    if user is None:
        raise NotFound(f"No user named '{username}'.")
    return user


def _validated(serializer_class, request) -> dict:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


# ---------------------------------------------------------------- teams


class TeamListApi(APIView):
    pagination_class = Pagination  # the schema documents the list as paginated

    class TeamCreateInput(StrictSerializer):
        name = NameField(max_length=64)
        description = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")

    @extend_schema(
        responses=TeamOutput(many=True),
        parameters=[OpenApiParameter("search", str, description="Part of the team's name")],
        summary="The teams you belong to",
    )
    def get(self, request):
        teams = selectors.team_list(user=request.user)
        if search := request.query_params.get("search"):
            teams = teams.filter(name__icontains=search)
        paginator = Pagination()
        page = paginator.paginate_queryset(teams, request, view=self)
        return paginator.get_paginated_response(TeamOutput(page, many=True).data)

    @extend_schema(
        request=TeamCreateInput, responses={201: TeamDetailOutput}, summary="Create a team; you become its owner"
    )
    def post(self, request):
        data = _validated(self.TeamCreateInput, request)
        team = services.team_create(actor=request.user, **data)
        team = selectors.team_get(user=request.user, name=team.name)
        return Response(TeamDetailOutput(team, context={"request": request}).data, status=status.HTTP_201_CREATED)


class TeamDetailApi(APIView):
    @extend_schema(responses=TeamDetailOutput, summary="A team and its members")
    def get(self, request, team: str):
        obj = selectors.team_get(user=request.user, name=team)
        return Response(TeamDetailOutput(obj, context={"request": request}).data)


class RoleField(serializers.ChoiceField):
    def __init__(self, **kwargs):
        super().__init__(choices=Role.choices, **kwargs)
        self.error_messages["invalid_choice"] = f'"{{input}}" is not a role. Roles are: {", ".join(Role.values)}.'


class TeamMemberListApi(APIView):
    class MemberAddInput(StrictSerializer):
        username = serializers.CharField(max_length=150)
        role = RoleField()

    @extend_schema(responses=MembershipOutput(many=True), summary="Members of a team")
    def get(self, request, team: str):
        obj = selectors.team_get(user=request.user, name=team)
        return Response(MembershipOutput(selectors.membership_list(team=obj), many=True).data)

    @extend_schema(request=MemberAddInput, responses={201: MembershipOutput}, summary="Add a member with a role")
    def post(self, request, team: str):
        obj = selectors.team_get(user=request.user, name=team)
        data = _validated(self.MemberAddInput, request)
        services.membership_manage_check(actor=request.user, team=obj, roles=[data["role"]])  # before the lookup
        user = selectors.user_get(username=data["username"])
        membership = services.membership_add(actor=request.user, team=obj, user=user, role=data["role"])
        return Response(MembershipOutput(membership).data, status=status.HTTP_201_CREATED)


class TeamMemberDetailApi(APIView):
    class MemberRoleInput(StrictSerializer):
        role = RoleField()

    def _member(self, team: Team, username: str) -> User:
        membership = selectors.membership_list(team=team).filter(user__username=username).first()
        if membership is None:
            raise NotFound(f"'{username}' is not a member of team '{team.name}'.")
        return membership.user

    @extend_schema(request=MemberRoleInput, responses=MembershipOutput, summary="Change a member's role")
    def patch(self, request, team: str, username: str):
        obj = selectors.team_get(user=request.user, name=team)
        data = _validated(self.MemberRoleInput, request)
        membership = services.membership_change_role(
            actor=request.user, team=obj, user=self._member(obj, username), role=data["role"]
        )
        return Response(MembershipOutput(membership).data)

    @extend_schema(responses={204: None}, summary="Remove a member (or leave the team yourself)")
    def delete(self, request, team: str, username: str):
        obj = selectors.team_get(user=request.user, name=team)
        services.membership_remove(actor=request.user, team=obj, user=self._member(obj, username))
        return Response(status=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------- tokens


class TokenLoginApi(APIView):
    """Exchange a username and password for a new API token (how `portal login` signs in).

    No session and no cookie come out of it, so there is nothing for a cross-site request
    to ride on; failed attempts are audited like the login page's, and throttled with it.
    """

    authentication_classes: list = []
    permission_classes = [AllowAny]

    class LoginInput(StrictSerializer):
        username = serializers.CharField(max_length=150)
        password = serializers.CharField(max_length=1024, trim_whitespace=False, style={"input_type": "password"})
        name = serializers.CharField(max_length=100, help_text="Where the token will be used, e.g. 'laptop CLI'.")
        expires_in_days = serializers.IntegerField(required=False, allow_null=True, default=None)
        scopes = serializers.ListField(
            child=serializers.ChoiceField(choices=TokenScope.choices), required=False, allow_null=True, default=None
        )

    @extend_schema(request=LoginInput, responses={201: TokenCreatedOutput}, summary="Sign in: get a token (shown once)")
    def post(self, request):
        if refusal := sign_in_refusal(request):
            message, wait = refusal
            raise Throttled(wait=wait, detail=message)
        data = _validated(self.LoginInput, request)
        user = authenticate(request._request, username=data.pop("username"), password=data.pop("password"))
        if user is None:
            if getattr(request._request, "directory_unreachable", False):
                raise Unavailable(DIRECTORY_UNREACHABLE)
            if not services.sign_in_settings_get().password_sign_in:
                raise InvalidInput(
                    "Wrong username or password, or password sign-in is switched off here: sign in to the web UI "
                    "with single sign-on and create a token on the Tokens page."
                )
            raise InvalidInput("Wrong username or password. Service accounts sign in with a token an admin made.")
        token, raw = services.token_create(actor=user, user=user, **data)
        token.token = raw
        response = Response(TokenCreatedOutput(token).data, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response


class TokenListApi(APIView):
    pagination_class = Pagination  # the schema documents the list as paginated

    class TokenCreateInput(StrictSerializer):
        name = serializers.CharField(max_length=100)
        expires_in_days = serializers.IntegerField(required=False, allow_null=True, default=None)
        scopes = serializers.ListField(
            child=serializers.ChoiceField(choices=TokenScope.choices), required=False, allow_null=True, default=None
        )
        user = serializers.CharField(
            required=False, help_text="Admins only: create the token for this user or service account."
        )

    @extend_schema(responses=TokenOutput(many=True), summary="Your tokens (never their secrets)")
    def get(self, request):
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.token_list(user=request.user), request, view=self)
        return paginator.get_paginated_response(TokenOutput(page, many=True).data)

    @extend_schema(request=TokenCreateInput, responses={201: TokenCreatedOutput}, summary="Create a token (shown once)")
    def post(self, request):
        data = _validated(self.TokenCreateInput, request)
        owner = request.user
        if username := data.pop("user", None):
            if not request.user.is_superuser:  # before the lookup: no probing for usernames
                raise NotAllowed("Only portal admins may create tokens for other users.")
            owner = selectors.user_get(username=username, field="user")
        via = request.auth if isinstance(request.auth, ApiToken) else None
        token, raw = services.token_create(actor=request.user, user=owner, via=via, **data)
        token.token = raw
        response = Response(TokenCreatedOutput(token).data, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response


class TokenDetailApi(APIView):
    @extend_schema(responses=TokenOutput, summary="One of your tokens")
    def get(self, request, token_id: int):
        return Response(TokenOutput(selectors.token_get(user=request.user, token_id=token_id)).data)

    @extend_schema(responses={204: None}, summary="Revoke a token")
    def delete(self, request, token_id: int):
        token = selectors.token_get(user=request.user, token_id=token_id)
        services.token_revoke(actor=request.user, token=token)
        return Response(status=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------- audit log


def _parse_when(value: str, name: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parse_datetime(value)
        if parsed is None and (day := parse_date(value)):
            parsed = datetime.combine(day, time.min)
    except (ValueError, OverflowError):
        parsed = None
    if parsed is None:
        raise InvalidInput(
            f"'{value}' is not a date or date-time (use e.g. 2026-11-27 or 2026-11-27T10:00Z).", field=name
        )
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)


def audit_filters_from(params) -> selectors.AuditFilters:
    action = params.get("action", "")
    known = set(AuditAction.values) | {a.split(".")[0] for a in AuditAction.values}
    if action and action not in known:
        raise InvalidInput(
            f"Unknown action '{action}'. Known actions: {', '.join(AuditAction.values)}.", field="action"
        )
    return selectors.AuditFilters(
        actor=params.get("actor", "").strip(),
        action=action,
        team=params.get("team", "").strip(),
        target=params.get("target", "").strip(),
        since=_parse_when(params.get("since", ""), "since"),
        until=_parse_when(params.get("until", ""), "until"),
    )


class AuditListApi(APIView):
    pagination_class = Pagination  # the schema documents the list as paginated
    permission_classes = ADMIN_ONLY

    @extend_schema(
        responses=AuditEventOutput(many=True),
        parameters=[
            OpenApiParameter("actor", str, description="Username of who acted"),
            OpenApiParameter("action", str, description="An action such as token.create, or a family such as token"),
            OpenApiParameter("team", str),
            OpenApiParameter("target", str, description="Part of the target's name, or its id"),
            OpenApiParameter("since", str, description="Date or date-time, inclusive"),
            OpenApiParameter("until", str, description="Date or date-time, exclusive"),
        ],
        summary="The audit log (admins)",
    )
    def get(self, request):
        events = selectors.audit_list(user=request.user, filters=audit_filters_from(request.query_params))
        paginator = Pagination()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(AuditEventOutput(page, many=True).data)
