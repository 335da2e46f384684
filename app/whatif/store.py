"""The runs a sweep has finished, kept in SQLite so that a sweep killed halfway resumes.

One file, ``sweep.sqlite`` in the sweep's ``--out`` directory (standard library
:mod:`sqlite3`, WAL mode). One row per finished run, keyed by
:func:`app.whatif.sweep.point_key` (the code fingerprint, the scenario's content, kernel,
knobs, CPU costs, max passes), holding the :class:`~app.whatif.sweep.SweepResult` as JSON.
Every run is committed as soon as it comes back; a killed sweep loses at most the runs in
flight. The CSV and HTML report are written from the results at the end, in grid order, so
they do not depend on which runs came from the file.

The file is a cache as much as a log: a sweep of another grid in the same directory reuses
the runs the two grids share, and a run whose code, preset or costs changed has another key
and is computed again. Deleting the file (or ``ksmlab sweep --fresh``) starts over.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import TracebackType

from .sweep import SweepPoint, SweepResult

#: the file name in the ``--out`` directory
STORE_NAME = "sweep.sqlite"
#: ``PRAGMA user_version`` of the layout below
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,      -- point_key(): sha256 hex
    point TEXT NOT NULL,       -- the grid point as JSON (for people reading the file)
    result TEXT NOT NULL,      -- the SweepResult as JSON
    finished REAL NOT NULL     -- Unix time the run was stored
)
"""


class StoreError(Exception):
    """The results file cannot be used (not SQLite, another layout, unwritable)."""


class ResultStore:
    """Finished runs by key; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives the process being killed (not a power cut)
            self.db.execute("PRAGMA synchronous=NORMAL")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise StoreError(f"{path}: layout version {version}, expected {SCHEMA_VERSION}")
            self.db.execute(_SCHEMA)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: {exc}") from None

    def __len__(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM runs").fetchone()[0])

    def get_many(self, keys: Sequence[str]) -> dict[str, SweepResult]:
        found: dict[str, SweepResult] = {}
        wanted = list(dict.fromkeys(keys))
        for start in range(0, len(wanted), 500):  # below SQLite's bound-parameter limit
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"SELECT key, result FROM runs WHERE key IN ({marks})", chunk)
            for key, text in rows:
                try:
                    found[key] = SweepResult(**json.loads(text))
                except (TypeError, ValueError):
                    continue  # unreadable row: the run is computed again
        return found

    def put(self, key: str, point: SweepPoint, result: SweepResult) -> None:
        point_doc = {"preset": point.preset, "kernel": point.kernel, "knobs": point.knobs}
        try:
            self.db.execute(
                "INSERT OR REPLACE INTO runs (key, point, result, finished) VALUES (?,?,?,?)",
                (key, json.dumps(point_doc), json.dumps(asdict(result)), time.time()),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
