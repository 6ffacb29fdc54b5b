"""A Django database backend for tracked SQLite files: ``"ENGINE":
"crsync.contrib.django.sqlite3"`` (Django's ``sqlite3`` backend, see :mod:`.base`)."""
