"""The todo list of ``examples.todo_sync`` as a Qt (PySide6) window: a live list kept in sync by
``crsync.SyncThread``, whose callbacks reach the GUI thread through a Qt signal. Run
``python -m examples.todo_qt.app --demo`` (needs ``pip install 'crsync[qt]'``)."""
