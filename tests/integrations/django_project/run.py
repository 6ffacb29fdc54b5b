"""One step of the Django integration test, in a process of its own (Django's settings and
app registry are process-global): ``run.py DB STEP``; prints a JSON report.

Steps: ``0001``, ``0002`` and ``0003`` migrate the ``notes`` app to that migration, then write
through the ORM and report what crsync captured; ``memory`` migrates an in-memory database.
"""

import json
import os  # CRSYNC_TEST_ENGINE: the database backend (default: crsync's)
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ["DJANGO_SETTINGS_MODULE"] = "settings"
os.environ["CRSYNC_TEST_DB"] = sys.argv[1]
step = sys.argv[2]

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from crsync.contrib.django import get_database  # noqa: E402

if step == "memory":
    call_command("migrate", verbosity=0)  # tracking is skipped: nothing to sync with
    try:
        get_database()
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    sys.exit(0)

from notes.models import Note, Tag  # noqa: E402

db = get_database()
before = db.db_version
call_command("migrate", "notes", step, verbosity=0)
tracked = db.tracked_tables()
after_migrate = db.db_version
schema, tag_schema = (
    db.conn.execute("SELECT sql FROM sqlite_schema WHERE name = ?", (t,)).fetchone()[0]
    for t in ("notes_note", "notes_tag")
)
note = Note.objects.create(title=f"written after {step}")
tag = Tag.objects.create(note=note, name=step)
Note.objects.filter(title__startswith="written after 0001").update(done=True)
captured = sorted({(c.table, c.cid, str(c.val)) for c in db.changes(since=after_migrate)})
print(
    json.dumps(
        {
            "tracked": tracked,
            "schema": schema,
            "tag_schema": tag_schema,
            "readopted": sum(1 for c in db.changes(since=before) if c.db_version <= after_migrate),
            "captured": captured,
            "tag_id": tag.id,
        }
    )
)
