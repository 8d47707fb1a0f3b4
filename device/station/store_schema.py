"""The verdict log's SQLite schema: its tables, its version, how an older record is brought up to it.

The audit trail is append-only in the database itself (triggers refuse UPDATE and DELETE).
"""
from __future__ import annotations

import sqlite3
from dataclasses import fields
from pathlib import Path

from device.errors import KenpinError
from device.station.record import VerdictRecord

SCHEMA_VERSION = 4  # 2: verdicts.grade and verdicts.retake_reason; 3: verdicts.product; 4: verdicts.frames
COLUMNS = tuple(f.name for f in fields(VerdictRecord) if f.name != "id")
SELECT_COLS = "id, " + ", ".join(COLUMNS)
KEPT = "(frame_ref IS NOT NULL OR heatmap_ref IS NOT NULL)"  # a row whose images are kept

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL, station TEXT NOT NULL, bundle_id TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('ok', 'defect', 'retake')),
    score REAL NOT NULL, threshold REAL NOT NULL, raw_score REAL NOT NULL, raw_threshold REAL NOT NULL,
    quality REAL, latency_ms REAL NOT NULL, trigger_source TEXT NOT NULL, trigger_id INTEGER,
    frame_ref TEXT, heatmap_ref TEXT, grade REAL, retake_reason TEXT, product INTEGER NOT NULL DEFAULT 0,
    frames INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS verdicts_time ON verdicts(time);
CREATE INDEX IF NOT EXISTS verdicts_verdict ON verdicts(verdict, id);
CREATE INDEX IF NOT EXISTS verdicts_kept ON verdicts(verdict, id) WHERE {KEPT};
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL, event TEXT NOT NULL, who TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"""


def migrate(db: sqlite3.Connection) -> None:
    """Bring a record written by an older kenpin up to this schema; every row stays."""
    have = {row[1] for row in db.execute("PRAGMA table_info(verdicts)")}
    # schema 1 → 2: grade, retake_reason; 2 → 3: product (older rows were all the one product, 0);
    # 3 → 4: frames (older rows were each judged on the one frame their trigger took)
    for column, kind in (("grade", "REAL"), ("retake_reason", "TEXT"), ("product", "INTEGER NOT NULL DEFAULT 0"),
                         ("frames", "INTEGER NOT NULL DEFAULT 1")):
        if column not in have:
            db.execute(f"ALTER TABLE verdicts ADD COLUMN {column} {kind}")


def open_writer(db_path: Path) -> sqlite3.Connection:
    """The one writer connection: WAL, a durable commit (``synchronous=FULL``), this schema (migrated up)."""
    try:
        db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False, timeout=10.0)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        db.execute("PRAGMA synchronous=FULL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if mode == "wal" and version <= SCHEMA_VERSION:
            db.executescript(SCHEMA)
            migrate(db)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except sqlite3.Error as e:
        raise KenpinError(f"{db_path} is not a usable SQLite database ({e}): it must be one the station's "
                          f"user can write; move a damaged one aside and the station starts a new one") from e
    if mode != "wal" or version > SCHEMA_VERSION:
        db.close()
    if mode != "wal":
        raise KenpinError(f"{db_path}: SQLite refused WAL mode (got {mode!r}); put record.data_dir "
                          f"on a local file system")
    if version > SCHEMA_VERSION:
        raise KenpinError(f"{db_path} was written by a newer kenpin (schema {version}, this one "
                          f"reads {SCHEMA_VERSION}); upgrade kenpin or use another record.data_dir")
    return db
