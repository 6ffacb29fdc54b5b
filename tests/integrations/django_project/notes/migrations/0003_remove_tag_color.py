from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("notes", "0002_longer_titles")]

    # Django drops a plain column with ALTER TABLE ... DROP COLUMN, which SQLite refuses on a
    # tracked table; crsync's backend rebuilds the table instead.
    operations = [migrations.RemoveField(model_name="tag", name="color")]
