"""Who may do what with registered models: object permissions granted to team role groups."""

from __future__ import annotations

from accounts.models import Role

MODEL_ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    Role.OWNER: ("view_registeredmodel", "change_registeredmodel", "delete_registeredmodel", "register_version"),
    Role.MAINTAINER: ("view_registeredmodel", "change_registeredmodel", "register_version"),
    Role.MEMBER: ("view_registeredmodel", "register_version"),
    Role.VIEWER: ("view_registeredmodel",),
}
