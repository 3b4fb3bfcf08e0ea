"""Services and deployments point at the registry app's models (moved out of `portal`).

State only: the foreign keys already reference the renamed tables (PostgreSQL constraints
follow a renamed table, and SQLite rewrites references when a table is renamed).
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0005_deprecation"),
        ("registry", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="deployment",
                    name="version",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="deployments",
                        to="registry.modelversion",
                    ),
                ),
                migrations.AlterField(
                    model_name="service",
                    name="model",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="services",
                        to="registry.registeredmodel",
                    ),
                ),
            ]
        )
    ]
