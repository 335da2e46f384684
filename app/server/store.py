"""The recipe store: what rebuilds every session, kept durably in SQLite.

A session's state is a pure function of its *recipe*: where it started (a preset with its
kernel and knob overrides, an uploaded scenario document, or a fork: the parent's recipe and
the step it was forked at) and the typed actions of its branch (:mod:`app.server.share`'s
``do`` items). The simulator is deterministic, so the recipe and a step rebuild the
identical state: page contents, counters, step.

A recipe is canonical JSON, named by its content hash (SHA-256, 32 hex digits): the same
recipe is stored once, and a link ``/session?r=<hash>&step=N`` names it. The session's
recipe is written the moment a control changes it (:meth:`app.server.sessions.SessionManager`
records after every command), so an eviction, a restart or ``kill -9`` loses nothing: a
committed transaction in WAL mode survives the process. Trailing plain batch steps are left
out of the recipe (the link's ``step`` redoes them), so a playing session writes nothing.

One file, ``<data_dir>/recipes.sqlite3`` (:attr:`app.config.Settings.data_dir`), the standard
library's ``sqlite3``, WAL mode, ``synchronous=NORMAL`` (durable across a process crash; an
OS crash may lose the last transactions). Used from the event loop thread only.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

Recipe = dict[str, Any]
FILE = "recipes.sqlite3"
#: bytes of one stored recipe (a recipe holds at most a scenario document and a link's
#: actions, both already bounded)
MAX_RECIPE_BYTES = 8 << 20


def canonical(recipe: Recipe) -> str:
    return json.dumps(recipe, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def recipe_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def is_hash(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


class RecipeStore:
    """Recipes by content hash in one SQLite file (see the module docstring)."""

    def __init__(self, data_dir: Path):
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / FILE
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS recipes ("
            " hash TEXT PRIMARY KEY, body TEXT NOT NULL, created REAL NOT NULL)"
        )
        self._known: set[str] = set()

    def put(self, recipe: Recipe) -> str:
        """Store ``recipe`` (once; committed before this returns) and return its hash."""
        text = canonical(recipe)
        key = recipe_hash(text)
        if key in self._known:
            return key
        if len(text) > MAX_RECIPE_BYTES:
            raise ValueError(f"recipe over {MAX_RECIPE_BYTES} bytes")
        self.db.execute(
            "INSERT OR IGNORE INTO recipes (hash, body, created) VALUES (?, ?, ?)",
            (key, text, time.time()),
        )
        self._known.add(key)
        return key

    def get(self, key: str) -> Recipe | None:
        if not is_hash(key):
            return None
        row = self.db.execute("SELECT body FROM recipes WHERE hash = ?", (key,)).fetchone()
        if row is None:
            return None
        recipe: Recipe = json.loads(row[0])
        return recipe

    def count(self) -> int:
        n: int = self.db.execute("SELECT count(*) FROM recipes").fetchone()[0]
        return n

    def close(self) -> None:
        self.db.close()
