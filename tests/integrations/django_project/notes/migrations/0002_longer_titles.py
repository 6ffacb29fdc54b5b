from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("notes", "0001_initial")]

    # SQLite cannot change a column's declaration: Django's schema editor rebuilds the table.
    operations = [
        migrations.AlterField(
            model_name="note",
            name="title",
            field=models.CharField(max_length=200, db_default=""),
        ),
    ]
