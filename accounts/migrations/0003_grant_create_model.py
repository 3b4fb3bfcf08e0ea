"""Grant the new team permission `create_model` to the role groups of existing teams."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

ROLES = ("owners", "maintainers", "members")


def grant(apps, schema_editor):
    app_config = apps.get_app_config("accounts")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Permission = apps.get_model("auth", "Permission")
    Team = apps.get_model("accounts", "Team")
    TeamGroupObjectPermission = apps.get_model("accounts", "TeamGroupObjectPermission")
    permission = Permission.objects.get(content_type__app_label="accounts", codename="create_model")
    for team in Team.objects.all():
        for role in ROLES:
            TeamGroupObjectPermission.objects.get_or_create(
                group_id=getattr(team, f"{role}_group_id"), permission=permission, content_object=team
            )


class Migration(migrations.Migration):
    dependencies = [("accounts", "0002_team_create_model_and_registry_audit")]
    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
