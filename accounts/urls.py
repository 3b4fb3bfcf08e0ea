from django.urls import path

from accounts import api, views

urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    path("login/sso/", views.oidc_login, name="oidc_login"),
    path("login/sso/callback", views.oidc_callback, name="oidc_callback"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("teams/", views.team_list, name="team_list"),
    path("teams/<slug:name>/", views.team_detail, name="team_detail"),
    path("teams/<slug:name>/members/<str:username>/role", views.member_role, name="member_role"),
    path("teams/<slug:name>/members/<str:username>/remove", views.member_remove, name="member_remove"),
    path("tokens/", views.token_list, name="token_list"),
    path("tokens/<int:token_id>/revoke", views.token_revoke, name="token_revoke"),
    path("audit/", views.audit_list, name="audit_list"),
]

api_urlpatterns = [
    path("users/me", api.MeApi.as_view(), name="api_me"),
    path("users", api.UserCreateApi.as_view(), name="api_users"),
    path("users/<str:username>", api.UserDetailApi.as_view(), name="api_user_detail"),
    path("teams", api.TeamListApi.as_view(), name="api_teams"),
    path("teams/<str:team>", api.TeamDetailApi.as_view(), name="api_team_detail"),
    path("teams/<str:team>/members", api.TeamMemberListApi.as_view(), name="api_team_members"),
    path("teams/<str:team>/members/<str:username>", api.TeamMemberDetailApi.as_view(), name="api_team_member"),
    path("auth/token", api.TokenLoginApi.as_view(), name="api_token_login"),
    path("tokens", api.TokenListApi.as_view(), name="api_tokens"),
    path("tokens/<int:token_id>", api.TokenDetailApi.as_view(), name="api_token_detail"),
    path("audit", api.AuditListApi.as_view(), name="api_audit"),
]
