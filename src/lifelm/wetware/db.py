"""The event database of a platform: SQLite (stdlib), one row per event, trigger, pulse, UV flash.

Every row carries the experiment session ID, so ``events(session=…)`` is the database of one
session. Times are simulated ms since ``lifecycle.EPOCH`` (UTC).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (id INTEGER PRIMARY KEY, token TEXT, electrodes TEXT,
    fs_ids TEXT, started_ms INTEGER, stopped_ms INTEGER);
CREATE TABLE IF NOT EXISTS events (session INTEGER, t_ms REAL, channel INTEGER, amplitude_uV REAL);
CREATE TABLE IF NOT EXISTS triggers (session INTEGER, t_ms REAL, key INTEGER, tag TEXT);
CREATE TABLE IF NOT EXISTS stims (session INTEGER, t_ms REAL, electrode INTEGER, charge_nC REAL,
    nb_pulse INTEGER);
CREATE TABLE IF NOT EXISTS uv (session INTEGER, t_ms REAL, site INTEGER, duration_s REAL,
    intensity REAL, released_uM REAL, tag TEXT);
CREATE TABLE IF NOT EXISTS organoids (fs_id TEXT PRIMARY KEY, site INTEGER, plated_ms INTEGER,
    lifetime_days REAL, replaced_ms INTEGER);
CREATE INDEX IF NOT EXISTS events_session ON events (session, t_ms);
"""


class EventDB:
    """A thread-safe SQLite event store (``":memory:"`` by default)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._con = sqlite3.connect(self.path, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._con.executescript(_SCHEMA)

    def execute(self, sql: str, rows: list[tuple] | tuple = ()) -> None:
        """Run one statement (``rows`` a list: executemany)."""
        with self._lock:
            if isinstance(rows, list):
                if rows:
                    self._con.executemany(sql, rows)
            else:
                self._con.execute(sql, rows)
            self._con.commit()

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Rows of a SELECT."""
        with self._lock:
            return list(self._con.execute(sql, args))

    def new_session(self, token: str, electrodes: list[int], fs_ids: list[str], t_ms: int) -> int:
        """Open a session row; return its ID."""
        with self._lock:
            cur = self._con.execute(
                "INSERT INTO sessions (token, electrodes, fs_ids, started_ms) VALUES (?,?,?,?)",
                (token, ",".join(map(str, electrodes)), ",".join(fs_ids), t_ms),
            )
            self._con.commit()
            if cur.lastrowid is None:
                raise RuntimeError("sqlite returned no row ID for the new session")
            return cur.lastrowid

    def add_events(self, session: int, t_ms: np.ndarray, ch: np.ndarray, amp: np.ndarray) -> None:
        """Store detected events."""
        rows = [
            (session, float(t), int(c), float(a)) for t, c, a in zip(t_ms, ch, amp, strict=True)
        ]
        self.execute("INSERT INTO events VALUES (?,?,?,?)", rows)

    def events(
        self, session: int, start_ms: float | None = None, stop_ms: float | None = None
    ) -> list[tuple[float, int, float]]:
        """(t_ms, channel, amplitude_uV) of a session, optionally within [start, stop)."""
        lo = -1e300 if start_ms is None else start_ms
        hi = 1e300 if stop_ms is None else stop_ms
        return self.query(
            "SELECT t_ms, channel, amplitude_uV FROM events WHERE session=? AND t_ms>=? AND t_ms<?"
            " ORDER BY t_ms, channel",
            (session, lo, hi),
        )

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._con.close()
