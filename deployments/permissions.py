from __future__ import annotations

from accounts.models import Role

SERVICE_ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    Role.OWNER: ("view_service", "change_service", "delete_service", "deploy_service", "manage_grants"),
    Role.MAINTAINER: ("view_service", "change_service", "deploy_service", "manage_grants"),
    Role.MEMBER: ("view_service", "deploy_service"),
    Role.VIEWER: ("view_service",),
}
