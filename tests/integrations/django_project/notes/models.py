"""The app's models, replicated by crsync: keys unique across devices, defaults in the
database, no foreign-key constraint."""

import uuid

from django.db import models

import crsync


class Note(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    title = models.CharField(max_length=200, db_default="")
    done = models.BooleanField(db_default=False)


class Tag(models.Model):
    # An integer key SQLite would assign: default=crsync.new_id opts it in.
    id = models.IntegerField(primary_key=True, default=crsync.new_id)
    note = models.ForeignKey(Note, on_delete=models.DO_NOTHING, db_constraint=False, null=True)
    name = models.CharField(max_length=50, db_default="")
