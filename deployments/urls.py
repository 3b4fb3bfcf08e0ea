from django.urls import path

from deployments import api, views

api_urlpatterns = [
    path("environments", api.EnvironmentListApi.as_view(), name="api_environments"),
    path("environments/<str:name>", api.EnvironmentDetailApi.as_view(), name="api_environment_detail"),
    path("services", api.ServiceListApi.as_view(), name="api_services"),
    path("services/<str:name>", api.ServiceDetailApi.as_view(), name="api_service_detail"),
    path("services/<str:name>/grants", api.GrantListApi.as_view(), name="api_service_grants"),
    path("services/<str:name>/grants/<int:grant_id>", api.GrantDetailApi.as_view(), name="api_service_grant"),
    path("services/<str:name>/deployments", api.ServiceDeploymentListApi.as_view(), name="api_service_deployments"),
    path(
        "services/<str:name>/access-requests", api.ServiceAccessRequestApi.as_view(), name="api_service_access_requests"
    ),
    path("access-requests", api.AccessRequestListApi.as_view(), name="api_access_requests"),
    path("access-requests/<int:request_id>", api.AccessRequestDetailApi.as_view(), name="api_access_request"),
    path(
        "access-requests/<int:request_id>/approve",
        api.AccessRequestApproveApi.as_view(),
        name="api_access_request_approve",
    ),
    path(
        "access-requests/<int:request_id>/reject",
        api.AccessRequestRejectApi.as_view(),
        name="api_access_request_reject",
    ),
    path(
        "access-requests/<int:request_id>/withdraw",
        api.AccessRequestWithdrawApi.as_view(),
        name="api_access_request_withdraw",
    ),
    path("services/<str:name>/majors/<int:major>/deprecation", api.DeprecationApi.as_view(), name="api_deprecation"),
    path(
        "services/<str:name>/logging/<str:environment>",
        api.PredictionLoggingApi.as_view(),
        name="api_prediction_logging",
    ),
    path("deployments/pending", api.ApprovalQueueApi.as_view(), name="api_approval_queue"),
    path("deployments/<int:deployment_id>", api.DeploymentDetailApi.as_view(), name="api_deployment_detail"),
    path("deployments/<int:deployment_id>/logs", api.DeploymentLogsApi.as_view(), name="api_deployment_logs"),
    path("deployments/<int:deployment_id>/approve", api.DeploymentApproveApi.as_view(), name="api_deployment_approve"),
    path("deployments/<int:deployment_id>/reject", api.DeploymentRejectApi.as_view(), name="api_deployment_reject"),
    path("deployments/<int:deployment_id>/cancel", api.DeploymentCancelApi.as_view(), name="api_deployment_cancel"),
    path(
        "deployments/<int:deployment_id>/rollback", api.DeploymentRollbackApi.as_view(), name="api_deployment_rollback"
    ),
    path("deployments/<int:deployment_id>/pause", api.DeploymentPauseApi.as_view(), name="api_deployment_pause"),
    path("deployments/<int:deployment_id>/resume", api.DeploymentResumeApi.as_view(), name="api_deployment_resume"),
    path("deployments/<int:deployment_id>/promote", api.DeploymentPromoteApi.as_view(), name="api_deployment_promote"),
    path("deployments/<int:deployment_id>/abort", api.DeploymentAbortApi.as_view(), name="api_deployment_abort"),
    path("services/<str:name>/usage", api.ServiceUsageApi.as_view(), name="api_service_usage"),
]

urlpatterns = [
    path("services/", views.service_list, name="service_list"),
    path("services/new", views.service_create, name="service_create"),
    path("services/<slug:name>/", views.service_detail, name="service_detail"),
    path("services/<slug:name>/deploy", views.deployment_request, name="deployment_request"),
    path("services/<slug:name>/v<int:major>/deprecation", views.deprecation_change, name="deprecation_change"),
    path("services/<slug:name>/grants", views.grant_create, name="grant_create"),
    path("services/<slug:name>/grants/<int:grant_id>/revoke", views.grant_revoke, name="grant_revoke"),
    path("services/<slug:name>/grants/<int:grant_id>/limits", views.grant_limits, name="grant_limits"),
    path("services/<slug:name>/access-requests", views.access_request_create, name="access_request_create"),
    path("access-requests/", views.access_queue, name="access_queue"),
    path("access-requests/<int:request_id>/<str:action>", views.access_request_action, name="access_request_action"),
    path("deployments/<int:deployment_id>/", views.deployment_detail, name="deployment_detail"),
    path("deployments/<int:deployment_id>/status", views.deployment_status, name="deployment_status"),
    path("deployments/<int:deployment_id>/<str:action>", views.deployment_action, name="deployment_action"),
    path("approvals/", views.approval_queue, name="approval_queue"),
]
