import uuid

from django.db import migrations, models

import crsync


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="Note",
            fields=[
                ("id", models.UUIDField(primary_key=True, default=uuid.uuid4, serialize=False)),
                ("title", models.CharField(max_length=100, db_default="")),
                ("done", models.BooleanField(db_default=False)),
            ],
        ),
        migrations.CreateModel(
            name="Tag",
            fields=[
                (
                    "id",
                    models.IntegerField(primary_key=True, default=crsync.new_id, serialize=False),
                ),
                (
                    "note",
                    models.ForeignKey(
                        to="notes.note",
                        on_delete=models.DO_NOTHING,
                        db_constraint=False,
                        null=True,
                    ),
                ),
                ("name", models.CharField(max_length=50, db_default="")),
                ("color", models.CharField(max_length=20, null=True)),
            ],
        ),
    ]
