"""Reading the verdict log: one verdict, filtered pages, CSV export, stats, score trend, the audit trail.

Each function takes a read-only connection (the store gives each thread its own, which WAL lets
run beside the writer) and only reads.
"""
from __future__ import annotations

import csv
import json
import math
import sqlite3
import time
from typing import Any, TextIO

from device.errors import KenpinError
from device.station.record import VERDICTS, VerdictRecord
from device.station.store_schema import COLUMNS, SELECT_COLS

HIST_BINS = 20  # score histogram over 0..1; scores above 1 count in the last bin
MAX_BUCKETS = 10_000  # stats/trend refuse finer buckets over a long range


def get(db: sqlite3.Connection, id: int) -> VerdictRecord | None:
    """The verdict with this id, or None."""
    row = db.execute(f"SELECT {SELECT_COLS} FROM verdicts WHERE id = ?", (id,)).fetchone()
    return to_record(row) if row else None


def query(db: sqlite3.Connection, limit: int = 100, before_id: int | None = None, verdict: str | None = None,
          since: float | None = None, until: float | None = None,
          min_score: float | None = None, max_score: float | None = None) -> list[VerdictRecord]:
    """Verdicts matching every given filter, newest first; page with ``before_id`` (the last id seen).

    ``since`` is inclusive, ``until`` exclusive (unix seconds); scores are inclusive bounds.
    """
    if not 1 <= limit <= 10_000:
        raise KenpinError(f"limit={limit} is out of range; ask for 1 to 10000 verdicts")
    if verdict is not None and verdict not in VERDICTS:
        raise KenpinError(f"verdict filter {verdict!r} is not one of {', '.join(VERDICTS)}")
    where, args = _where(since, until, [("id < ?", before_id), ("verdict = ?", verdict),
                                        ("score >= ?", min_score), ("score <= ?", max_score)])
    rows = db.execute(f"SELECT {SELECT_COLS} FROM verdicts {where} ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    return [to_record(r) for r in rows]


def first_id_since(db: sqlite3.Connection, since: float) -> int | None:
    """The id of the first verdict captured at or after ``since`` (None if there is none yet)."""
    row = db.execute("SELECT id FROM verdicts WHERE time >= ? ORDER BY time LIMIT 1", (since,)).fetchone()
    return row[0] if row else None


def observations_after(db: sqlite3.Connection, after_id: int,
                       limit: int = 10_000) -> list[tuple[int, str, float, float, int]]:
    """(id, verdict, score, latency_ms, product) of verdicts with id > ``after_id``, oldest first:
    lets a reader (metrics) follow the log incrementally without missing a row."""
    return db.execute("SELECT id, verdict, score, latency_ms, product FROM verdicts WHERE id > ? "
                      "ORDER BY id LIMIT ?", (after_id, limit)).fetchall()


def export_csv(db: sqlite3.Connection, fh: TextIO, since: float | None = None, until: float | None = None) -> int:
    """Write the verdicts in [since, until) as CSV (oldest first, with a UTC time column); returns rows."""
    where, args = _where(since, until, [])
    cur = db.execute(f"SELECT {SELECT_COLS} FROM verdicts {where} ORDER BY id", args)
    out = csv.writer(fh)
    out.writerow(["id", "time", "time_utc", *COLUMNS[1:]])
    n = 0
    while rows := cur.fetchmany(1000):
        for r in rows:
            utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r[1])) + f".{int(r[1] % 1 * 1000):03d}Z"
            out.writerow([r[0], r[1], utc, *r[2:]])
        n += len(rows)
    return n


def stats(db: sqlite3.Connection, since: float, until: float, bucket_s: int = 3600) -> dict[str, Any]:
    """Counts and yield per bucket (aligned to multiples of ``bucket_s`` in UTC, empty ones filled
    between the first and last non-empty), overall counts, score histogram per verdict over
    0..1, latency min/avg/max, the latest threshold, and the counts and yield of each product that
    had parts in the window. Yield = ok / (ok + defect): a retake is not a judged part."""
    _check_range(since, until, bucket_s)
    per = db.execute("SELECT CAST(time / ? AS INTEGER) AS b, verdict, COUNT(*) FROM verdicts "
                     "WHERE time >= ? AND time < ? GROUP BY b, verdict", (bucket_s, since, until)).fetchall()
    buckets = _fill_buckets(per, bucket_s)
    counts = {v: sum(b[v] for b in buckets) for v in VERDICTS}
    counts["total"] = sum(counts.values())
    lat = db.execute("SELECT MIN(latency_ms), AVG(latency_ms), MAX(latency_ms) FROM verdicts "
                     "WHERE time >= ? AND time < ?", (since, until)).fetchone()
    last = db.execute("SELECT threshold FROM verdicts WHERE time >= ? AND time < ? ORDER BY time DESC LIMIT 1",
                      (since, until)).fetchone()
    return {"since": since, "until": until, "bucket_s": bucket_s, "buckets": buckets, "counts": counts,
            "yield": _yield(counts), "histogram": _histogram(db, since, until),
            "latency_ms": dict(zip(("min", "avg", "max"), lat)), "threshold": last[0] if last else None,
            "products": _per_product(db, since, until)}


def _per_product(db: sqlite3.Connection, since: float, until: float) -> list[dict[str, Any]]:
    """Counts and yield per product number in [since, until), in number order."""
    rows = db.execute("SELECT product, verdict, COUNT(*) FROM verdicts WHERE time >= ? AND time < ? "
                      "GROUP BY product, verdict ORDER BY product", (since, until)).fetchall()
    out: dict[int, dict[str, Any]] = {}
    for product, verdict, n in rows:
        out.setdefault(product, {"product": product, **{v: 0 for v in VERDICTS}})[verdict] = n
    for row in out.values():
        row["total"] = sum(row[v] for v in VERDICTS)
        row["yield"] = _yield(row)
    return list(out.values())


def _histogram(db: sqlite3.Connection, since: float, until: float) -> dict[str, Any]:
    rows = db.execute(
        "SELECT verdict, MIN(MAX(CAST(score * ? AS INTEGER), 0), ?) AS bin, COUNT(*) FROM verdicts "
        "WHERE time >= ? AND time < ? GROUP BY verdict, bin", (HIST_BINS, HIST_BINS - 1, since, until)).fetchall()
    counts = {v: [0] * HIST_BINS for v in VERDICTS}
    for verdict, b, n in rows:
        counts[verdict][b] = n
    return {"edges": [round(i / HIST_BINS, 6) for i in range(HIST_BINS + 1)], "counts": counts}


def trend(db: sqlite3.Connection, since: float, until: float, bucket_s: int) -> list[dict[str, Any]]:
    """Score drift: per non-empty bucket, count, mean, p95 (nearest rank, to 0.001) and max score."""
    _check_range(since, until, bucket_s)
    head = db.execute("SELECT CAST(time / ? AS INTEGER) AS b, COUNT(*), AVG(score), MAX(score) FROM verdicts "
                      "WHERE time >= ? AND time < ? GROUP BY b ORDER BY b", (bucket_s, since, until)).fetchall()
    _check_bucket_count([r[0] for r in head])
    # Per bucket, a histogram of scores rounded to 0.001 gives the p95 without fetching every row.
    hist: dict[int, list[tuple[float, int]]] = {}
    for b, s, n in db.execute("SELECT CAST(time / ? AS INTEGER) AS b, ROUND(score, 3) AS s, COUNT(*) "
                              "FROM verdicts WHERE time >= ? AND time < ? GROUP BY b, s ORDER BY b, s",
                              (bucket_s, since, until)):
        hist.setdefault(b, []).append((s, n))
    return [{"start": b * bucket_s, "count": n, "mean": mean, "p95": _nearest_rank(hist[b], n, 0.95),
             "max": mx} for b, n, mean, mx in head]


def audit_log(db: sqlite3.Connection, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` audit events, newest first."""
    rows = db.execute("SELECT id, time, event, who, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [{"id": i, "time": t, "event": e, "who": w, "detail": json.loads(d)} for i, t, e, w, d in rows]


def to_record(row: tuple) -> VerdictRecord:
    return VerdictRecord(id=row[0], **dict(zip(COLUMNS, row[1:])))


def _where(since: float | None, until: float | None, extra: list[tuple[str, Any]]) -> tuple[str, list]:
    terms = [("time >= ?", since), ("time < ?", until), *extra]
    used = [(sql, v) for sql, v in terms if v is not None]
    return ("WHERE " + " AND ".join(s for s, _ in used) if used else ""), [v for _, v in used]


def _check_range(since: float, until: float, bucket_s: int) -> None:
    if not bucket_s >= 1:
        raise KenpinError(f"bucket_s={bucket_s} is too small; use whole seconds ≥ 1 (3600 for hours)")
    if not until > since:
        raise KenpinError(f"time range since={since} until={until} is empty; until must be later than since")


def _check_bucket_count(indexes: list[int]) -> None:
    if indexes and max(indexes) - min(indexes) + 1 > MAX_BUCKETS:
        raise KenpinError(f"{max(indexes) - min(indexes) + 1} buckets over that range; "
                          f"use a larger bucket_s (at most {MAX_BUCKETS} buckets)")


def _fill_buckets(per: list[tuple[int, str, int]], bucket_s: int) -> list[dict[str, Any]]:
    if not per:
        return []
    _check_bucket_count([b for b, _, _ in per])
    lo, hi = min(b for b, _, _ in per), max(b for b, _, _ in per)
    out = {b: {"start": b * bucket_s, **{v: 0 for v in VERDICTS}} for b in range(lo, hi + 1)}
    for b, verdict, n in per:
        out[b][verdict] = n
    for row in out.values():
        row["total"] = sum(row[v] for v in VERDICTS)
        row["yield"] = _yield(row)
    return list(out.values())


def _yield(counts: dict[str, int]) -> float | None:
    judged = counts["ok"] + counts["defect"]
    return counts["ok"] / judged if judged else None


def _nearest_rank(hist: list[tuple[float, int]], n: int, q: float) -> float:
    rank, seen = math.ceil(q * n), 0
    for value, count in hist:
        seen += count
        if seen >= rank:
            return value
    return hist[-1][0]
