"""The model registry moves out of the project package into its own app, `registry`.

Its tables are renamed (portal_* to registry_*), their named indexes take the names the
registry app's models give them, and their content types are relabelled in place. Relabelling
keeps every permission row and its id, so each group's and user's object permissions on
models (django-guardian rows pointing at those ids) keep working. `registry`'s first migration
then adopts the tables as they are, and 0004 forgets the models here. Reversible.

On an existing database this runs on data; on a new one it renames empty tables, so both end
in the same schema.
"""

from django.db import migrations

MODELS = [
    "artifact",
    "registeredmodel",
    "registeredmodeluserobjectpermission",
    "registeredmodelgroupobjectpermission",
    "modelversion",
    "upload",
]


def _relabel(apps, *, old: str, new: str) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label=old, model__in=MODELS).update(app_label=new)


def to_registry(apps, schema_editor):
    _relabel(apps, old="portal", new="registry")


def to_portal(apps, schema_editor):
    _relabel(apps, old="registry", new="portal")


class Migration(migrations.Migration):
    dependencies = [
        ("portal", "0002_upload"),
        ("contenttypes", "0002_remove_content_type_name"),
        # After every migration that created a foreign key to these tables, so the move is the
        # last thing that happens to them under their old names.
        ("accounts", "0007_deprecation"),
        ("deployments", "0005_deprecation"),
    ]

    operations = [
        migrations.RenameIndex("modelversion", new_name="registry_mo_model_i_95b9fa_idx",
                               old_name="portal_mode_model_i_b6e4ce_idx"),
        migrations.RenameIndex("upload", new_name="registry_up_created_741da4_idx",
                               old_name="portal_uplo_created_314d9e_idx"),
        migrations.RenameIndex("upload", new_name="registry_up_expires_1039bb_idx",
                               old_name="portal_uplo_expires_59b553_idx"),
        *[migrations.AlterModelTable(name, f"registry_{name}") for name in MODELS],
        migrations.RunPython(to_registry, to_portal),
    ]
