"""``kenpin bench durability``: kill -9 the station daemon at random moments while it inspects;
check nothing acknowledged is lost.

Each round starts the real daemon (`kenpin run` on a looping replay folder, no dashboard), reads
its log, waits until it has acknowledged a few verdicts (the `verdict id=… ` line it logs after
the store returned), lets it run a random while longer, then SIGKILLs it. After every kill the
database must hold every acknowledged verdict, with the verdict and score the line showed, pass
`PRAGMA integrity_check`, and every image a row names must exist.

    kenpin bench durability --bundle BUNDLE --replay FOLDER --kills 50 --workdir kill9-run

Without --bundle/--replay ``kenpin bench durability`` generates a small synthetic line and trains
a bundle on it first (needs the training extra, ~1 minute on a CPU).
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from device.errors import KenpinError

ROOT = Path(__file__).resolve().parents[2]
# What the daemon logs after the store returned (device/station/pipeline.py, RecorderWorker).
ACK = re.compile(r"verdict id=(\d+) .*?verdict=(\w+) score=([0-9.]+)")


@dataclass
class Round:
    kill: int
    acknowledged: int  # verdict lines read from this run's log
    recorded: int  # rows the run added to the database
    after_s: float  # seconds between the first acknowledged verdict and the kill
    wal_bytes: int  # size of the WAL at the moment after the kill (uncheckpointed work)
    missing: list[int] = field(default_factory=list)  # acknowledged ids absent or different in the DB
    integrity: str = ""
    missing_images: int = 0


def write_config(workdir: Path, bundle: Path, replay: Path, ok_fraction: float) -> Path:
    cfg = workdir / "station.yaml"
    cfg.write_text(f"""station: {{name: kill9, data_dir: {workdir / 'data'}}}
bundle: {{path: {bundle}, precision: fp32, threads: 1}}
camera: {{type: replay, replay: {{folder: {replay}, fps: 0, loop: true}}}}
trigger: {{mode: free-run}}
record: {{ok_image_fraction: {ok_fraction}}}
""")
    return cfg


class Daemon:
    """One `kenpin run` process whose acknowledged verdicts are read from its log as they come."""

    def __init__(self, config: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        self.proc = subprocess.Popen([sys.executable, "-m", "kenpin.cli", "run", "--config", str(config),
                                      "--no-dashboard"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.acks: dict[int, tuple[str, float]] = {}
        self.first_ack: float | None = None
        self.tail: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            m = ACK.search(line)
            with self._cond:
                if m:
                    self.acks[int(m.group(1))] = (m.group(2), float(m.group(3)))
                    self.first_ack = self.first_ack or time.monotonic()
                else:
                    self.tail = (self.tail + [line.rstrip()])[-20:]
                self._cond.notify_all()

    def wait_acks(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.acks) >= n or self.proc.poll() is not None, timeout) \
                and len(self.acks) >= n

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join(timeout=10)  # lines it wrote before dying are still in the pipe: read them


def check(db_path: Path, images: Path, acks: dict[int, tuple[str, float]]) -> tuple[list[int], str, int, int]:
    """(acknowledged ids missing or different, integrity_check answer, missing images, rows)."""
    db = sqlite3.connect(db_path)  # opening after the kill replays the WAL, as the next start would
    try:
        rows = dict((i, (v, s)) for i, v, s in db.execute("SELECT id, verdict, score FROM verdicts"))
        missing = [i for i, (v, s) in acks.items()
                   if i not in rows or rows[i][0] != v or abs(rows[i][1] - s) > 5e-4]  # the line shows 3 decimals
        integrity = "; ".join(r[0] for r in db.execute("PRAGMA integrity_check"))
        refs = [r for row in db.execute("SELECT frame_ref, heatmap_ref FROM verdicts") for r in row if r]
    finally:
        db.close()
    return missing, integrity, sum(not (images / r).is_file() for r in refs), len(rows)


def run(workdir: Path, bundle: Path, replay: Path, kills: int, seed: int, max_after_s: float,
        ok_fraction: float = 0.1, log=print) -> list[Round]:
    """The whole experiment; returns one Round per kill."""
    workdir = workdir.resolve()  # the daemons run in the package's folder
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(workdir, bundle, replay, ok_fraction)
    db_path, rng, rounds, rows_before = workdir / "data" / "verdicts.sqlite3", random.Random(seed), [], 0
    for k in range(1, kills + 1):
        d = Daemon(config)
        if not d.wait_acks(1, timeout=120):
            d.kill()
            raise RuntimeError("the daemon acknowledged no verdict within 120 s:\n" + "\n".join(d.tail))
        after = rng.uniform(0.0, max_after_s)
        time.sleep(max(0.0, d.first_ack + after - time.monotonic()))
        if d.proc.poll() is not None:
            raise RuntimeError("the daemon exited by itself:\n" + "\n".join(d.tail))
        d.kill()
        wal = db_path.with_name(db_path.name + "-wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        missing, integrity, lost_images, rows = check(db_path, workdir / "data" / "images", d.acks)
        r = Round(k, len(d.acks), rows - rows_before, round(after, 3), wal_bytes, missing, integrity, lost_images)
        rows_before = rows
        rounds.append(r)
        log(f"kill {k:3d}: acknowledged {r.acknowledged:4d}, rows added {r.recorded:4d}, killed {r.after_s:.2f} s "
            f"after the first, WAL {r.wal_bytes:8d} B, missing {len(r.missing)}, integrity {r.integrity}, "
            f"missing images {r.missing_images}")
    return rounds


def summary(rounds: list[Round]) -> dict:
    return {"kills": len(rounds), "acknowledged": sum(r.acknowledged for r in rounds),
            "rows": sum(r.recorded for r in rounds),
            "acknowledged_missing": sum(len(r.missing) for r in rounds),
            "integrity_ok": sum(r.integrity == "ok" for r in rounds),
            "missing_images": sum(r.missing_images for r in rounds),
            "kills_with_uncheckpointed_wal": sum(r.wal_bytes > 0 for r in rounds)}


def mixed_replay(line: Path, out: Path) -> Path:
    """One folder with the line's test images, good and defective, so both kinds are recorded
    (defect images are always kept: the kill also lands during image writes)."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    for img in sorted(line.glob("test/*/*.png")):
        shutil.copy(img, out / f"{img.parent.name}_{img.name}")
    return out


def run_durability_bench(workdir: Path, bundle: Path, replay: Path, kills: int = 50, seed: int = 0,
                         max_after_s: float = 2.0, json_path: Path | None = None) -> int:
    """The experiment with its summary printed as one JSON line; exit 0 only if nothing was lost."""
    if (workdir / "data").exists():
        raise KenpinError(f"{workdir / 'data'} exists: use a fresh --workdir so the counts are this run's")
    t0 = time.monotonic()
    rounds = run(workdir, bundle.resolve(), replay.resolve(), kills, seed, max_after_s)
    s = summary(rounds)
    s["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(s))
    if json_path:
        json_path.write_text(json.dumps({"summary": s, "rounds": [asdict(r) for r in rounds]}, indent=1))
    return 0 if s["acknowledged_missing"] == 0 and s["integrity_ok"] == s["kills"] and not s["missing_images"] else 1
