"""A small desktop todo app (Tkinter) whose list syncs live between devices through a relay.

``model`` (the list, plain SQL), ``sync`` (a Peer in a background thread), ``app`` (the window)
and ``relay`` (a throw-away relay for the demo and the tests). Run
``python -m examples.todo_sync.app --demo`` for two windows on two database files.
"""
