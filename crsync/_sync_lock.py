"""The per-file syncer lock of :class:`crsync.Peer`, portable through ``filelock``.

``filelock.FileLock`` is ``flock`` on POSIX (Linux, macOS) and a byte-range lock on Windows
(``LockFileEx``; ``msvcrt.locking`` before filelock 4): the
lock belongs to one open file, so two locks on the same path exclude each other even within one
process, and the operating system drops it when the holding process dies. Where neither exists,
``filelock`` falls back to a soft lock file that records its owner (filelock 4.3 and later take
it over once that owner is gone; older versions leave a dead owner's lock file to be deleted by
hand). Linux, macOS and Windows always get the OS lock.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    # On a platform with neither flock nor LockFileEx, filelock warns on import that only its
    # soft lock is available; that is the documented fallback, not the caller's concern.
    warnings.simplefilter("ignore")
    import filelock


class SyncLock:
    """A non-blocking, process-wide exclusive lock on ``path`` (created if missing)."""

    def __init__(self, path: str) -> None:
        self.path = path
        # thread_local=False: taken on the event loop's thread, released from any thread.
        self._lock = filelock.FileLock(path, thread_local=False)

    @property
    def held(self) -> bool:
        return bool(self._lock.is_locked)

    def try_acquire(self) -> bool:
        """Take the lock if it is free; False if another holder has it."""
        if self.held:
            return True
        try:
            self._lock.acquire(blocking=False)
        except filelock.Timeout:
            return False
        return True

    def release(self) -> None:
        """Release the lock (a no-op when not held)."""
        if self.held:
            self._lock.release(force=True)


def backend() -> str:
    """The name of the lock implementation in use (``UnixFileLock``, ``WindowsFileLock``, ...)."""
    return str(filelock.FileLock.__name__)
