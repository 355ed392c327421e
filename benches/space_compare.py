#!/usr/bin/env python3
"""Bytes on disk per byte stored: replidb beside SQLite and LMDB, in one run.

For each value size, every system loads the same N random 16-byte keys with values of that
size, in batches of 1,000 (one MSET, one transaction, one write transaction), then:
- replidb: CHECKPOINT, then the bytes the data directory less its WAL folder takes on disk
  (allocated blocks, as `du` counts: the page file grows in steps, sparsely); then, once
  the primary, quiet, has repacked its leaves by itself (INFO `leaf_repacks`; the load must
  have written at least 8 MiB of WAL), CHECKPOINT and the same count again ("replidb idle");
- SQLite: WAL mode, a WITHOUT ROWID table, then a truncating checkpoint, the database file
  (allocated blocks);
- LMDB: the pages in use ((last_pgno + 1) x page size).
The figure is that size divided by N x (16 + value size). replidb's WAL bytes (LSN advance)
per logical byte and each system's load rate are printed too. The order of the systems
rotates from size to size (the machine is shared).

    python3 benches/space_compare.py [--keys 100000] [--sizes 100,1000,3000,10240]
                                     [--bin target/release/replidb]

Needs redis-py, lmdb (pip install lmdb) and a release build.
"""

import argparse
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time

import lmdb
import redis

KEY = 16
BATCH = 1000


def data_of(n, size, seed):
    rnd = random.Random(seed)
    keys = [rnd.randbytes(KEY) for _ in range(n)]
    # Values differ (no accidental compression anywhere) and are cheap to make.
    base = rnd.randbytes(size + 64)
    vals = [base[i % 64 : i % 64 + size] for i in range(n)]
    return keys, vals


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dir_bytes(path, skip=None):
    total = 0
    for root, dirs, files in os.walk(path):
        if skip and os.path.basename(root) == skip and root != path:
            continue
        dirs[:] = [d for d in dirs if d != skip]
        for f in files:
            total += os.stat(os.path.join(root, f)).st_blocks * 512
    return total


def run_replidb(binary, keys, vals, work):
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
        lsn0 = int(c.info("persistence")["last_lsn"])
        t = time.perf_counter()
        for i in range(0, len(keys), BATCH):
            c.mset(dict(zip(keys[i : i + BATCH], vals[i : i + BATCH])))
        secs = time.perf_counter() - t
        wal = int(c.info("persistence")["last_lsn"]) - lsn0
        c.execute_command("CHECKPOINT")
        size = dir_bytes(d, skip="wal")
        # The idle repack starts after a quiet second (a few seconds at most).
        t0 = time.perf_counter()
        idle = None
        while time.perf_counter() - t0 < 15:
            if int(c.info("persistence")["leaf_repacks"]) > 0:
                c.execute_command("CHECKPOINT")
                idle = (dir_bytes(d, skip="wal"), time.perf_counter() - t0)
                break
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait()
    return size, secs, wal, idle


def run_sqlite(keys, vals, work):
    path = os.path.join(work, "s.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
    t = time.perf_counter()
    for i in range(0, len(keys), BATCH):
        db.execute("BEGIN")
        db.executemany(
            "INSERT OR REPLACE INTO kv VALUES (?, ?)",
            zip(keys[i : i + BATCH], vals[i : i + BATCH]),
        )
        db.execute("COMMIT")
    secs = time.perf_counter() - t
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return os.stat(path).st_blocks * 512, secs, None, None


def run_lmdb(keys, vals, work):
    path = os.path.join(work, "lmdb")
    env = lmdb.open(path, map_size=1 << 36)
    t = time.perf_counter()
    for i in range(0, len(keys), BATCH):
        with env.begin(write=True) as txn:
            for k, v in zip(keys[i : i + BATCH], vals[i : i + BATCH]):
                txn.put(k, v)
    secs = time.perf_counter() - t
    info = env.info()
    size = (info["last_pgno"] + 1) * env.stat()["psize"]
    env.close()
    return size, secs, None, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--sizes", default="100,1000,3000,10240")
    ap.add_argument("--bin", default="target/release/replidb")
    a = ap.parse_args()
    if not os.access(a.bin, os.X_OK):
        raise SystemExit(f"{a.bin}: build first (cargo build --release)")
    systems = ["replidb", "sqlite", "lmdb"]
    print(f"{a.keys} random {KEY}-byte keys, batches of {BATCH}")
    print(f"{'value':>7} {'system':>8} {'bytes/byte':>10} {'MB/s load':>9} {'WAL/byte':>8}")
    for n, size in enumerate(int(s) for s in a.sizes.split(",")):
        keys, vals = data_of(a.keys, size, seed=size)
        logical = a.keys * (KEY + size)
        order = systems[n % 3 :] + systems[: n % 3]
        for s in order:
            work = tempfile.mkdtemp(prefix="space.", dir=os.path.dirname(os.path.abspath(a.bin)))
            try:
                if s == "replidb":
                    got = run_replidb(a.bin, keys, vals, work)
                elif s == "sqlite":
                    got = run_sqlite(keys, vals, work)
                else:
                    got = run_lmdb(keys, vals, work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            size_b, secs, wal, idle = got
            walf = f"{wal / logical:8.2f}" if wal is not None else f"{'':>8}"
            print(
                f"{size:>7} {s:>8} {size_b / logical:10.3f} {logical / secs / 1e6:9.1f} {walf}",
                flush=True,
            )
            if s == "replidb":
                if idle is None:
                    print(f"{size:>7} {'idle':>8} {'(no idle repack within 15 s)':>20}")
                else:
                    print(
                        f"{size:>7} {'idle':>8} {idle[0] / logical:10.3f} "
                        f"{'':>9} {'':>8}  repacked {idle[1]:.1f} s after the load",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
