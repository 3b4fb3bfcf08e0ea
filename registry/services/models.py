"""Writes for registered models: creating one (with its team's role permissions) and editing it."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from accounts.models import AuditAction, Team, User
from accounts.services import audit_event_record, team_roles_grant
from core.errors import (
    Conflict,
    NotAllowed,
    check_name,
)
from registry.models import RegisteredModel
from registry.permissions import MODEL_ROLE_PERMISSIONS


@transaction.atomic
def registered_model_create(*, actor: User, name: str, team: Team, description: str = "") -> RegisteredModel:
    if not actor.has_perm("accounts.create_model", team):
        raise NotAllowed(f"Only owners, maintainers and members of team '{team.name}' may register models for it.")
    check_name(name, what="model", max_length=100)
    if RegisteredModel.objects.filter(name=name).exists():
        raise Conflict(f"A model named '{name}' already exists. Pick another name, or register a version of it.")
    try:
        with transaction.atomic():
            model = RegisteredModel.objects.create(name=name, team=team, description=description, created_by=actor)
    except IntegrityError:
        raise Conflict(f"A model named '{name}' already exists.") from None
    team_roles_grant(team=team, obj=model, table=MODEL_ROLE_PERMISSIONS)
    audit_event_record(actor=actor, action=AuditAction.MODEL_CREATE, target=model, team=team)
    return model


@transaction.atomic
def registered_model_update(*, actor: User, model: RegisteredModel, description: str) -> RegisteredModel:
    if not actor.has_perm("registry.change_registeredmodel", model):
        raise NotAllowed(f"Only owners and maintainers of team '{model.team.name}' may edit model '{model.name}'.")
    if description != model.description:
        model.description = description
        model.save(update_fields=["description"])
        audit_event_record(
            actor=actor, action=AuditAction.MODEL_CHANGE, target=model, team=model.team, data={"field": "description"}
        )
    return model
