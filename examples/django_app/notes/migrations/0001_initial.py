import uuid

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="Note",
            fields=[
                ("id", models.UUIDField(primary_key=True, default=uuid.uuid4, serialize=False)),
                ("title", models.CharField(max_length=200, db_default="")),
                ("done", models.BooleanField(db_default=False)),
            ],
        ),
    ]
