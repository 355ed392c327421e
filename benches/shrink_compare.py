#!/usr/bin/env python3
"""Giving space back after large deletes: replidb's COMPACT beside SQLite's VACUUM, in one run.

Each round, each system loads the same N random 16-byte keys with values of one size in
batches of 1,000, deletes a random 80% of them (batches of 1,000), and then:
- replidb: CHECKPOINT, the page file's allocated bytes; `COMPACT` (heap pass, then the shrink
  pass and the checkpoint that cuts the file), timed; the page file again; and the bytes
  the WAL grew by during COMPACT;
- SQLite (WAL mode, WITHOUT ROWID): a truncating checkpoint, the file; `VACUUM` (rewrites the
  whole database), timed; the file again.
The systems alternate (which goes first swaps each round); medians are printed.

    python3 benches/shrink_compare.py [--keys 100000] [--size 1000] [--rounds 3]
                                      [--bin target/release/replidb]

Needs redis-py and a release build.
"""

import argparse
import os
import random
import sqlite3
import statistics
import subprocess
import tempfile
import time

import redis

from space_compare import BATCH, data_of, free_port

PAGE_FILE = "pages.db"


def blocks(path):
    return os.stat(path).st_blocks * 512


def run_replidb(binary, keys, vals, gone, work):
    port = free_port()
    d = os.path.join(work, "replidb")
    proc = subprocess.Popen(
        [binary, "serve", "--dir", d, "--port", str(port), "--log-level", "warn"],
        stdout=subprocess.DEVNULL,
    )
    try:
        c = redis.Redis(port=port)
        for _ in range(200):
            # Ready once INFO says loading:0 (the port answers PING while the node starts).
            try:
                if c.info("persistence").get("loading") == 0:
                    break
            except redis.ConnectionError:
                pass
            time.sleep(0.05)
        for i in range(0, len(keys), BATCH):
            c.mset(dict(zip(keys[i : i + BATCH], vals[i : i + BATCH])))
        c.execute_command("CHECKPOINT")
        loaded = blocks(os.path.join(d, PAGE_FILE))
        for i in range(0, len(gone), BATCH):
            c.delete(*gone[i : i + BATCH])
        c.execute_command("CHECKPOINT")
        deleted = blocks(os.path.join(d, PAGE_FILE))
        lsn0 = int(c.info("persistence")["last_lsn"])
        t = time.perf_counter()
        report = c.execute_command("COMPACT").decode()
        secs = time.perf_counter() - t
        wal = int(c.info("persistence")["last_lsn"]) - lsn0
        after = blocks(os.path.join(d, PAGE_FILE))
        # Every survivor reads back.
        survivors = set(range(len(keys))) - set(gone_idx_of(keys, gone))
        for i in list(survivors)[:: max(1, len(survivors) // 500)]:
            assert c.get(keys[i]) == vals[i], "a survivor changed"
    finally:
        proc.terminate()
        proc.wait()
    return loaded, deleted, after, secs, wal, report


def gone_idx_of(keys, gone):
    g = set(gone)
    return [i for i, k in enumerate(keys) if k in g]


def run_sqlite(keys, vals, gone, work):
    path = os.path.join(work, "s.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
    for i in range(0, len(keys), BATCH):
        db.execute("BEGIN")
        db.executemany(
            "INSERT OR REPLACE INTO kv VALUES (?, ?)",
            zip(keys[i : i + BATCH], vals[i : i + BATCH]),
        )
        db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    loaded = blocks(path)
    for i in range(0, len(gone), BATCH):
        db.execute("BEGIN")
        db.executemany("DELETE FROM kv WHERE k = ?", ((k,) for k in gone[i : i + BATCH]))
        db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    deleted = blocks(path)
    t = time.perf_counter()
    db.execute("VACUUM")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    secs = time.perf_counter() - t
    after = blocks(path)
    db.close()
    return loaded, deleted, after, secs, None, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bin", default="target/release/replidb")
    a = ap.parse_args()
    keys, vals = data_of(a.keys, a.size, 1)
    rnd = random.Random(2)
    gone = [k for k in keys if rnd.random() < 0.8]
    live = (a.keys - len(gone)) * (16 + a.size)
    results = {"replidb": [], "sqlite": []}
    for r in range(a.rounds):
        order = ["replidb", "sqlite"] if r % 2 == 0 else ["sqlite", "replidb"]
        for name in order:
            with tempfile.TemporaryDirectory(dir=".") as work:
                if name == "replidb":
                    out = run_replidb(a.bin, keys, vals, gone, work)
                else:
                    out = run_sqlite(keys, vals, gone, work)
            results[name].append(out)
            loaded, deleted, after, secs, wal, report = out
            print(
                f"round {r} {name}: loaded {loaded / 1e6:.1f} MB, after deletes "
                f"{deleted / 1e6:.1f} MB, after reclaim {after / 1e6:.1f} MB "
                f"({after / live:.2f}x the {live / 1e6:.1f} MB left) in {secs:.2f} s"
                + (f", WAL {wal / 1e6:.1f} MB" if wal is not None else "")
            )
            if report:
                print("   ", report.replace("\n", "\n    "))
    print(f"\nmedians of {a.rounds} rounds, {a.keys} keys of {a.size} B, 80% deleted:")
    for name, rows in results.items():
        med = lambda i: statistics.median(row[i] for row in rows)  # noqa: E731
        wal = f", WAL {med(4) / 1e6:.1f} MB" if rows[0][4] is not None else ""
        print(
            f"  {name}: {med(0) / 1e6:.1f} MB -> {med(1) / 1e6:.1f} MB after deletes -> "
            f"{med(2) / 1e6:.1f} MB ({med(2) / live:.2f}x live) in {med(3):.2f} s{wal}"
        )


if __name__ == "__main__":
    main()
