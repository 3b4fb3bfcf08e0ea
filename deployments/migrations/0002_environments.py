from django.db import migrations

ENVIRONMENTS = [
    ("development", "For trying things out: no approval needed.", False, 0),
    ("staging", "A rehearsal of production: IT approves.", True, 1),
    ("production", "What consumers rely on: IT approves.", True, 2),
]


def create(apps, schema_editor):
    Environment = apps.get_model("deployments", "Environment")
    for name, description, requires_approval, order in ENVIRONMENTS:
        Environment.objects.get_or_create(
            name=name, defaults={"description": description, "requires_approval": requires_approval, "order": order}
        )


class Migration(migrations.Migration):
    dependencies = [("deployments", "0001_initial")]
    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
