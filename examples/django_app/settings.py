"""Settings of the Django example: the notes app and crsync's Django app."""

import os

SECRET_KEY = "crsync-example"
USE_TZ = True
INSTALLED_APPS = ["notes", "crsync.contrib.django"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("NOTES_DB", "notes.db"),
    }
}
# Tracked after every `migrate`; rebuilt tables are re-adopted.
CRSYNC = {"models": ["notes.Note"]}
