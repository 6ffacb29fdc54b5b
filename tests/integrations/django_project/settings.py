"""Minimal Django settings of the integration tests (run in a subprocess: ``run.py``)."""

import os

SECRET_KEY = "crsync-tests"
USE_TZ = True
INSTALLED_APPS = ["notes", "crsync.contrib.django"]
DATABASES = {
    "default": {
        # crsync's backend: Django's, removing columns of replicated models by a rebuild
        "ENGINE": os.environ.get("CRSYNC_TEST_ENGINE", "crsync.contrib.django.sqlite3"),
        "NAME": os.environ["CRSYNC_TEST_DB"],
    }
}
CRSYNC = {"models": ["notes.Note", "notes.Tag"]}
