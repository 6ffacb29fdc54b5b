"""The Django app config of ``crsync.contrib.django``."""

from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class CrsyncConfig(AppConfig):  # type: ignore[misc]  # Django has no type hints
    """Tracks the models of ``settings.CRSYNC["models"]`` after each ``migrate``."""

    name = "crsync.contrib.django"
    label = "crsync"
    verbose_name = "crsync"

    def ready(self) -> None:
        from . import _after_migrate

        post_migrate.connect(_after_migrate, dispatch_uid="crsync.contrib.django.post_migrate")
