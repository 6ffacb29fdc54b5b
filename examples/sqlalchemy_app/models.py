"""The app's SQLAlchemy models (its current version), declared so that crsync can replicate
them: keys unique across devices, a server default on every NOT NULL column, no foreign-key
constraint."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import crsync


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    # An INTEGER PRIMARY KEY is SQLite's rowid: default=crsync.new_id makes the app, not
    # SQLite, pick ids (unique across devices); crsync.contrib.sqlalchemy.track opts it in.
    id: Mapped[int] = mapped_column(primary_key=True, default=crsync.new_id)
    title: Mapped[str] = mapped_column(server_default="untitled")
    done: Mapped[bool] = mapped_column(server_default=sa.false())
    due: Mapped[str | None]  # added by migration 0002
