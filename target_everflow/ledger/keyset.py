"""A set of delivery keys whose memory stays bounded: what ``NullLedger`` (``ledger_url: none``,
and dry run) remembers within one run.

Up to ``memory_keys`` keys live in a Python set; beyond that they move, in one transaction, to a
private SQLite file in the system's temporary directory (deleted on ``close``), and the set
starts over. Membership asks the set first, then the file (one query for a whole batch). The
file is this process's alone, so no other connection can hold a lock on it: no wait to bound.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterable

MEMORY_KEYS = 100_000
"""Keys kept in memory before they move to the file (about 12 MB of Python strings)."""

_CHUNK = 500
"""Keys per membership query (well under SQLite's limit on parameters)."""


class KeySet:
    """``add`` and ``among``: a set of strings, in memory up to ``memory_keys``, then on disk.
    Thread-safe (sending threads add the keys they delivered)."""

    def __init__(self, memory_keys: int = MEMORY_KEYS) -> None:
        self._lock = threading.Lock()
        self._memory: set[str] = set()
        self._memory_keys = max(1, memory_keys)
        self._db: sqlite3.Connection | None = None
        self._path: str | None = None
        self.spilled = 0
        """Keys moved to the file so far."""

    def __contains__(self, key: str) -> bool:
        return bool(self.among([key]))

    def add(self, key: str) -> None:
        with self._lock:
            self._memory.add(key)
            if len(self._memory) >= self._memory_keys:
                self._spill()

    def among(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` in the set."""
        wanted = list(dict.fromkeys(keys))
        with self._lock:
            return self._among(wanted)

    def _among(self, wanted: list[str]) -> set[str]:
        found = {key for key in wanted if key in self._memory}
        if self._db is not None:
            rest = [key for key in wanted if key not in found]
            for i in range(0, len(rest), _CHUNK):
                chunk = rest[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                found.update(
                    row[0]
                    for row in self._db.execute(
                        f"SELECT key FROM keys WHERE key IN ({marks})", chunk
                    )  # only placeholders are formatted in
                )
        return found

    def _spill(self) -> None:
        if self._db is None:
            fd, self._path = tempfile.mkstemp(prefix="target-everflow-keys-", suffix=".sqlite3")
            os.close(fd)
            self._db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=OFF")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.execute("CREATE TABLE IF NOT EXISTS keys (key TEXT PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("BEGIN")
        self._db.executemany(
            "INSERT OR IGNORE INTO keys (key) VALUES (?)", ((key,) for key in self._memory)
        )
        self._db.execute("COMMIT")
        self.spilled += len(self._memory)
        self._memory = set()

    def close(self) -> None:
        """Drop the file (the set is empty afterwards)."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        self._memory = set()
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)
            self._path = None
