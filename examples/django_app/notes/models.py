"""A model crsync can replicate: a UUID key, a database default on the NOT NULL field."""

import uuid

from django.db import models


class Note(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    title = models.CharField(max_length=200, db_default="")
    done = models.BooleanField(db_default=False)
