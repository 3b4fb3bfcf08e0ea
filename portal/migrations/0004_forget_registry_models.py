"""The registry's models now belong to the `registry` app (see 0003): forget them here.

State only: the tables are registry's. After this the project package has no models; its
migrations stay as the history of existing databases.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("portal", "0003_move_registry_out"),
        ("registry", "0001_initial"),
        # Deployments' foreign keys point at registry's models first.
        ("deployments", "0006_registry_app"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel("upload"),
                migrations.DeleteModel("registeredmodeluserobjectpermission"),
                migrations.DeleteModel("registeredmodelgroupobjectpermission"),
                migrations.DeleteModel("modelversion"),
                migrations.DeleteModel("registeredmodel"),
                migrations.DeleteModel("artifact"),
            ]
        )
    ]
