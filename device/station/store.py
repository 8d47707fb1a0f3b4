"""The station's record: an SQLite (WAL) verdict log, kept images within a disk budget, an audit trail.

Every ``record()`` commits its row durably (WAL, ``synchronous=FULL``) before it returns, so a
verdict acknowledged after ``record()`` survives ``kill -9`` and a power cut. A full disk or an I/O
error never raises out of ``record()``: images are dropped first, then (if the database itself
fails) the verdict is returned without an id, and ``health()`` says the record is degraded.

One writer connection guarded by a lock (the recorder thread, audit events); readers (dashboard,
metrics) get one read-only connection per thread, which WAL lets run beside the writer. The tables
are in :mod:`device.station.store_schema`, the reading queries in :mod:`device.station.store_queries`.
"""
from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from device.errors import KenpinError
from device.station import store_queries as queries
from device.station.record import VerdictRecord
from device.station.retention import FRAME_FORMATS, ImageFolder, heat_overlay
from device.station.store_schema import COLUMNS, KEPT, open_writer

RETENTION_TARGET = 0.9  # retention frees down to 90 % of the budget, so it runs in batches


class VerdictStore:
    """The verdict log of one station in ``data_dir`` (verdicts.sqlite3 and images/)."""

    def __init__(self, data_dir: Path, image_budget_mb: float = 1024.0, ok_image_fraction: float = 0.01,
                 seed: int = 0, reserve_mb: float = 64.0, frame_format: str = "jpg") -> None:
        """``reserve_mb``: free disk below which images are no longer written, so the verdict log
        keeps room to grow when something else fills the disk. ``frame_format``: kept frames as
        ``jpg`` or lossless ``png`` (heat overlays are always JPEG)."""
        if (image_budget_mb < 0 or not 0.0 <= ok_image_fraction <= 1.0 or reserve_mb < 0
                or frame_format not in FRAME_FORMATS):
            raise KenpinError(f"record settings out of range: image_budget_mb={image_budget_mb} (≥ 0), "
                              f"ok_image_fraction={ok_image_fraction} (0..1), reserve_mb={reserve_mb} (≥ 0), "
                              f"frame_format={frame_format!r} ({' or '.join(FRAME_FORMATS)})")
        self.frame_format = frame_format
        self.data_dir = Path(data_dir)
        self.db_path = self.data_dir / "verdicts.sqlite3"
        self.budget_bytes = int(image_budget_mb * 1024 * 1024)
        self.reserve_bytes = int(reserve_mb * 1024 * 1024)
        self.ok_image_fraction = ok_image_fraction
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: dict[threading.Thread, sqlite3.Connection] = {}
        self._faults: dict[str, str] = {}  # kind → reason, while that kind is failing
        self._fault_lock = threading.Lock()  # health() reads faults from other threads
        self.failures = {"db": 0, "images": 0, "retention": 0}
        self._images = self._open_images()
        self._db: sqlite3.Connection | None = open_writer(self.db_path)
        self._start_up()

    # ---- opening -------------------------------------------------------------------------------

    def _open_images(self) -> ImageFolder:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            folder = ImageFolder(self.data_dir / "images")
            probe = self.data_dir / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise KenpinError(f"data directory {self.data_dir} cannot be created or written ({e.strerror or e}); "
                              f"set record.data_dir to a folder the station's user may write") from e
        return folder

    def _start_up(self) -> None:
        """Sweep image files no row names (a crash between image and row), then apply the budget."""
        rows = self._db.execute(f"SELECT frame_ref, heatmap_ref FROM verdicts WHERE {KEPT}").fetchall()
        self._images.sweep({ref for row in rows for ref in row if ref})
        if self._images.bytes > self.budget_bytes:
            self._enforce_budget(keep_from=None)

    # ---- writing -------------------------------------------------------------------------------

    def record(self, rec: VerdictRecord, frame_rgb: np.ndarray | None = None,
               heatmap: np.ndarray | None = None) -> VerdictRecord:
        """Keep the images this verdict warrants, then insert and commit its row durably.

        Returns the record with ``id`` and image refs; ``id`` is None if the database could not be
        written (health() then says why). Never raises for disk or database errors.
        """
        return self.record_many([(rec, frame_rgb, heatmap)])[0]

    def record_many(self, items: list[tuple[VerdictRecord, np.ndarray | None, np.ndarray | None]]
                    ) -> list[VerdictRecord]:
        """``record`` for several verdicts in one transaction: one fsync for all (group commit).

        A recorder that finds several verdicts waiting can record them together when the disk's
        sync time, not the work, limits the rate (an SD card). All or none are committed.
        """
        with self._lock:
            db = self._writer()
            recs = []
            for rec, frame_rgb, heatmap in items:
                frame_ref, heatmap_ref = self._keep_images(rec, frame_rgb, heatmap)
                recs.append(replace(rec, id=None, frame_ref=frame_ref, heatmap_ref=heatmap_ref))
            try:
                ids = self._insert(db, recs)
            except sqlite3.Error as e:
                self._fail("db", f"{len(recs)} verdict(s) not recorded in {self.db_path}: {e}")
                self._images.delete([r for rec in recs for r in (rec.frame_ref, rec.heatmap_ref) if r])
                return [replace(rec, frame_ref=None, heatmap_ref=None) for rec in recs]
            self._ok("db")
            recs = [replace(rec, id=i) for rec, i in zip(recs, ids)]
            if self._images.bytes > self.budget_bytes:
                self._enforce_budget(keep_from=ids[0])
            return recs

    @staticmethod
    def _insert(db: sqlite3.Connection, recs: list[VerdictRecord]) -> list[int]:
        sql = f"INSERT INTO verdicts ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        db.execute("BEGIN IMMEDIATE")
        try:
            ids = [db.execute(sql, [getattr(rec, c) for c in COLUMNS]).lastrowid for rec in recs]
            db.execute("COMMIT")  # durable here: WAL + synchronous=FULL syncs the log on commit
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return ids

    def _wants_images(self, rec: VerdictRecord) -> bool:
        # Drawn for every ok part, so the sampled set depends only on the seed and the sequence.
        return rec.verdict != "ok" or self._rng.random() < self.ok_image_fraction

    def _keep_images(self, rec: VerdictRecord, frame_rgb: np.ndarray | None,
                     heatmap: np.ndarray | None) -> tuple[str | None, str | None]:
        if not self._wants_images(rec) or (frame_rgb is None and heatmap is None):
            return None, None
        try:
            free = self._images.disk_free()
        except OSError as e:
            self._fail("images", f"images folder {self._images.root} unreadable: {e}")
            return None, None
        if free < self.reserve_bytes:
            self._fail("images", f"disk nearly full ({free // 2**20} MiB free, reserve "
                                 f"{self.reserve_bytes // 2**20} MiB): images not kept, verdicts still recorded")
            return None, None
        frame_ref = self._write(rec, "frame", lambda: _rgb_to_bgr(frame_rgb)) if frame_rgb is not None else None
        heatmap_ref = (self._write(rec, "heat", lambda: heat_overlay(heatmap, frame_rgb, 2.0))
                       if heatmap is not None else None)
        return frame_ref, heatmap_ref

    def _write(self, rec: VerdictRecord, kind: str, make_bgr) -> str | None:
        ref = self._images.new_ref(rec.time, rec.verdict, kind, self.frame_format if kind == "frame" else "jpg")
        try:
            self._images.write_image(ref, make_bgr())
        except (OSError, ValueError) as e:
            self._fail("images", f"{kind} image not kept in {self._images.root}: {e}")
            return None
        self._ok("images")
        return ref

    def _enforce_budget(self, keep_from: int | None) -> None:
        """Free image bytes: oldest ok images first, then oldest rejects. Rows stay, refs become NULL.
        Rows from ``keep_from`` on were just recorded: their refs are being returned, so they stay."""
        target = int(self.budget_bytes * RETENTION_TARGET)
        try:
            for ok_only in (True, False):
                while self._images.bytes > target and self._drop_oldest(ok_only, keep_from, target):
                    pass
            self._ok("retention")
        except (sqlite3.Error, OSError) as e:
            self._fail("retention", f"image retention failed in {self.data_dir}: {e}")

    def _drop_oldest(self, ok_only: bool, keep_from: int | None, target: int, batch: int = 64) -> bool:
        which = "verdict = 'ok'" if ok_only else "verdict IN ('ok', 'defect', 'retake')"
        rows = self._db.execute(f"SELECT id, frame_ref, heatmap_ref FROM verdicts WHERE {which} AND {KEPT} "
                                f"AND id < ? ORDER BY id LIMIT ?", (keep_from or 2**62, batch)).fetchall()
        rows = rows[:self._rows_covering(rows, self._images.bytes - target)]
        if not rows:
            return False
        # Refs cleared (committed) before files go: a row never names a file deleted on purpose.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("UPDATE verdicts SET frame_ref = NULL, heatmap_ref = NULL WHERE id = ?",
                                 [(r[0],) for r in rows])
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            raise
        self._images.delete([ref for r in rows for ref in r[1:] if ref])
        return True

    def _rows_covering(self, rows: list[tuple], excess: int) -> int:
        """How many of the oldest ``rows`` free at least ``excess`` bytes (so retention does not overshoot)."""
        freed = 0
        for i, row in enumerate(rows):
            freed += sum(self._images.size(ref) for ref in row[1:] if ref)
            if freed >= excess:
                return i + 1
        return len(rows)

    def audit(self, event: str, detail: dict, who: str = "system") -> None:
        """Append an event to the audit trail (durable before return; rows cannot be changed)."""
        payload = json.dumps(detail, sort_keys=True, default=str)
        with self._lock:
            try:
                self._writer().execute("INSERT INTO audit (time, event, who, detail) VALUES (?, ?, ?, ?)",
                                       (time.time(), event, who, payload))
            except sqlite3.Error as e:
                self._fail("db", f"audit event {event!r} not recorded in {self.db_path}: {e}")
                raise KenpinError(f"audit event {event!r} could not be written to {self.db_path} ({e}); "
                                  f"free disk space in {self.data_dir}") from e

    def _fail(self, kind: str, reason: str) -> None:
        with self._fault_lock:
            self.failures[kind] += 1
            self._faults[kind] = reason

    def _ok(self, kind: str) -> None:
        with self._fault_lock:
            self._faults.pop(kind, None)

    def _writer(self) -> sqlite3.Connection:
        if self._db is None:
            raise KenpinError(f"the verdict store in {self.data_dir} is closed")
        return self._db

    # ---- reading -------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._db is None:
                raise KenpinError(f"the verdict store in {self.data_dir} is closed")
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=10.0)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._lock:
                # Threads come and go (web servers): close the connections of those that ended.
                for thread in [t for t in self._readers if not t.is_alive()]:
                    self._readers.pop(thread).close()
                self._readers[threading.current_thread()] = conn
        return conn

    def get(self, id: int) -> VerdictRecord | None:
        """The verdict with this id, or None."""
        return queries.get(self._reader(), id)

    def query(self, limit: int = 100, before_id: int | None = None, verdict: str | None = None,
              since: float | None = None, until: float | None = None,
              min_score: float | None = None, max_score: float | None = None) -> list[VerdictRecord]:
        """Verdicts matching every given filter, newest first; page with ``before_id`` (the last id seen).

        ``since`` is inclusive, ``until`` exclusive (unix seconds); scores are inclusive bounds.
        """
        return queries.query(self._reader(), limit, before_id, verdict, since, until, min_score, max_score)

    def first_id_since(self, since: float) -> int | None:
        """The id of the first verdict captured at or after ``since`` (None if there is none yet)."""
        return queries.first_id_since(self._reader(), since)

    def observations_after(self, after_id: int, limit: int = 10_000) -> list[tuple[int, str, float, float, int]]:
        """(id, verdict, score, latency_ms, product) of verdicts with id > ``after_id``, oldest first."""
        return queries.observations_after(self._reader(), after_id, limit)

    def export_csv(self, fh: TextIO, since: float | None = None, until: float | None = None) -> int:
        """Write the verdicts in [since, until) as CSV (oldest first, with a UTC time column); returns rows."""
        return queries.export_csv(self._reader(), fh, since, until)

    def stats(self, since: float, until: float, bucket_s: int = 3600) -> dict[str, Any]:
        """Counts and yield per bucket, score histograms, latency and the latest threshold (see store_queries.stats)."""
        return queries.stats(self._reader(), since, until, bucket_s)

    def trend(self, since: float, until: float, bucket_s: int) -> list[dict[str, Any]]:
        """Score drift: per non-empty bucket, count, mean, p95 and max score."""
        return queries.trend(self._reader(), since, until, bucket_s)

    def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` audit events, newest first."""
        return queries.audit_log(self._reader(), limit)

    def image_path(self, ref: str) -> Path:
        """The file of a frame_ref/heatmap_ref; KenpinError if it escapes images/ or does not exist."""
        return self._images.resolve(ref)

    def health(self) -> dict[str, Any]:
        """JSON-ready state of the record: sizes, budget, free disk, degraded and why, failure counts."""
        db_bytes = sum(p.stat().st_size for p in self.data_dir.glob("verdicts.sqlite3*") if p.exists())
        try:
            free = self._images.disk_free()
        except OSError:
            free = None
        with self._fault_lock:
            faults, failures = dict(self._faults), dict(self.failures)
        return {"db_path": str(self.db_path), "db_bytes": db_bytes, "images_dir": str(self._images.root),
                "images_bytes": self._images.bytes, "image_budget_bytes": self.budget_bytes,
                "disk_free_bytes": free, "degraded": bool(faults),
                "reason": "; ".join(faults.values()) or None, "failures": failures}

    def close(self) -> None:
        """Close every connection (idempotent). WAL content stays valid; the next open replays it."""
        with self._lock:
            for conn in self._readers.values():
                conn.close()
            self._readers.clear()
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> "VerdictStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rgb_to_bgr(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        return arr
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"frame must be HxW or HxWx3, got shape {arr.shape}")
    return np.ascontiguousarray(arr[:, :, ::-1])
