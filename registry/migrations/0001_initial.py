"""The registry's tables, adopted from the project package where they began (portal 0001-0003).

State only: portal's 0003 renamed the tables to these names, on existing databases and new
ones alike, so there is nothing to create here.
"""

import django.db.models.deletion
import django.utils.timezone
import uuid
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('portal', '0003_move_registry_out'),
        ('accounts', '0007_deprecation'),
        ('auth', '0012_alter_user_first_name_max_length'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='Artifact',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('sha256', models.CharField(max_length=64, unique=True)),
                        ('size', models.BigIntegerField()),
                        ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                    ],
                ),
                migrations.CreateModel(
                    name='RegisteredModel',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.SlugField(help_text='Lowercase letters, digits and hyphens.', max_length=100, unique=True)),
                        ('description', models.TextField(blank=True, help_text='Markdown.')),
                        ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('team', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='models', to='accounts.team')),
                    ],
                    options={
                        'ordering': ['name'],
                        'permissions': [('register_version', 'Can register new versions')],
                    },
                ),
                migrations.CreateModel(
                    name='ModelVersion',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('version', models.CharField(max_length=40)),
                        ('major', models.PositiveIntegerField()),
                        ('minor', models.PositiveIntegerField()),
                        ('patch', models.PositiveIntegerField()),
                        ('flavor', models.CharField(choices=[('sklearn', 'scikit-learn (joblib or pickle)'), ('onnx', 'ONNX'), ('pyfunc', 'Python function (a .py file defining predict(instances))')], max_length=16)),
                        ('artifact_filename', models.CharField(blank=True, max_length=255)),
                        ('input_schema', models.JSONField(default=dict)),
                        ('output_schema', models.JSONField(default=dict)),
                        ('input_schema_inferred', models.BooleanField(default=False)),
                        ('output_schema_inferred', models.BooleanField(default=False)),
                        ('sample_input', models.JSONField(blank=True, help_text='A list of instances.', null=True)),
                        ('sample_output', models.JSONField(blank=True, help_text='What the model predicted for the sample.', null=True)),
                        ('metrics', models.JSONField(blank=True, default=dict)),
                        ('git_commit', models.CharField(blank=True, max_length=64)),
                        ('data_ref', models.CharField(blank=True, help_text='Where the training data came from.', max_length=500)),
                        ('parameters', models.JSONField(blank=True, default=dict)),
                        ('description', models.TextField(blank=True, help_text='Markdown: the model card of this version.')),
                        ('changes', models.JSONField(blank=True, default=list, help_text='Schema changes against the previous version.')),
                        ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('artifact', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='versions', to='registry.artifact')),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('previous', models.ForeignKey(blank=True, help_text='The version the changes are measured against.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='registry.modelversion')),
                        ('model', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='versions', to='registry.registeredmodel')),
                    ],
                    options={
                        'ordering': ['-major', '-minor', '-patch'],
                    },
                ),
                migrations.CreateModel(
                    name='RegisteredModelGroupObjectPermission',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('content_object', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to='registry.registeredmodel')),
                        ('group', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to='auth.group')),
                        ('permission', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to='auth.permission')),
                    ],
                    options={
                        'abstract': False,
                    },
                ),
                migrations.CreateModel(
                    name='RegisteredModelUserObjectPermission',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('content_object', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to='registry.registeredmodel')),
                        ('permission', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to='auth.permission')),
                        ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'abstract': False,
                    },
                ),
                migrations.CreateModel(
                    name='Upload',
                    fields=[
                        ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ('filename', models.CharField(blank=True, max_length=255)),
                        ('size', models.BigIntegerField()),
                        ('sha256', models.CharField(blank=True, help_text='Expected digest; verified when finished.', max_length=64)),
                        ('received', models.BigIntegerField(default=0, help_text='Bytes held, as of the last chunk.')),
                        ('status', models.CharField(choices=[('receiving', 'Receiving chunks'), ('complete', 'Complete; waiting to be registered'), ('registered', 'Registered')], default='receiving', max_length=16)),
                        ('deduplicated', models.BooleanField(default=False, help_text='The content was stored already; no bytes sent.')),
                        ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('updated_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('expires_at', models.DateTimeField()),
                        ('created_by', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('version', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='registry.modelversion')),
                    ],
                    options={
                        'ordering': ['-created_at'],
                    },
                ),
                migrations.AddIndex(
                    model_name='modelversion',
                    index=models.Index(fields=['model', 'major', 'minor', 'patch'], name='registry_mo_model_i_95b9fa_idx'),
                ),
                migrations.AddConstraint(
                    model_name='modelversion',
                    constraint=models.UniqueConstraint(fields=('model', 'major', 'minor', 'patch'), name='modelversion_unique_semver'),
                ),
                migrations.AlterUniqueTogether(
                    name='registeredmodelgroupobjectpermission',
                    unique_together={('group', 'permission', 'content_object')},
                ),
                migrations.AlterUniqueTogether(
                    name='registeredmodeluserobjectpermission',
                    unique_together={('user', 'permission', 'content_object')},
                ),
                migrations.AddIndex(
                    model_name='upload',
                    index=models.Index(fields=['created_by', 'status'], name='registry_up_created_741da4_idx'),
                ),
                migrations.AddIndex(
                    model_name='upload',
                    index=models.Index(fields=['expires_at'], name='registry_up_expires_1039bb_idx'),
                ),
            ]
        )
    ]
