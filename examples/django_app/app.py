"""Django with crsync: two devices, each a Django process on its own SQLite file, syncing
through a relay.

Run it with ``python examples/django_app/app.py`` (``--keep DIR`` keeps the files). It starts
a real ``crsync-relay`` process, then runs each device as ``app.py device ...``: ``migrate``
(``crsync.contrib.django`` tracks the configured models), an ORM write, and a sync with a
``crsync.Peer`` on ``crsync.contrib.django.get_database()``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # examples/_demo.py
from _demo import demo_relay, run_in_workdir  # noqa: E402


def device(db: str, url: str, token: str, title: str) -> None:
    """One device's process: migrate, write a note through the ORM, sync, print the notes."""
    import django
    import trio

    sys.path.insert(0, str(HERE))
    os.environ["DJANGO_SETTINGS_MODULE"] = "settings"
    os.environ["NOTES_DB"] = db
    django.setup()
    from django.core.management import call_command
    from notes.models import Note

    import crsync
    from crsync.contrib.django import get_database

    call_command("migrate", verbosity=0)
    if title:
        Note.objects.create(title=title)

    async def sync() -> None:
        async with crsync.Peer(get_database(), url, store="notes", token=token) as peer:
            with trio.fail_after(30):
                await peer.wait_synced()

    trio.run(sync)
    titles = sorted(Note.objects.values_list("title", flat=True))
    print(f"  {Path(db).stem}: {titles}", flush=True)


def run(workdir: Path) -> bool:
    """Run the three device steps through one relay; True when the last two agree."""
    outputs = []
    for name in ("laptop.db", "phone.db"):
        (workdir / name).unlink(missing_ok=True)
    with demo_relay(workdir, "notes", "django_app") as relay:
        for db, title in (("laptop", "buy milk"), ("phone", "call mum"), ("laptop", "")):
            print(f"{db}: migrate, write {title!r}, sync", flush=True)
            proc = subprocess.run(
                [sys.executable, __file__, "device", str(workdir / f"{db}.db"), relay.url,
                 relay.token, title],
                capture_output=True, text=True, timeout=120,
            )
            print(proc.stdout, end="", flush=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return False
            outputs.append(proc.stdout.split(":", 1)[1].strip())
    converged = outputs[-1] == outputs[-2]
    print("converged: " + ("yes" if converged else "NO"))
    return converged


def main() -> int:
    return run_in_workdir(__doc__ or "", "crsync-django-", run)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "device":
        device(*sys.argv[2:6])
    else:
        sys.exit(main())
