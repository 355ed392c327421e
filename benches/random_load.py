#!/usr/bin/env python3
"""Random small-value load against a running replidb: N random 16-byte keys with distinct
100-byte values in MSET batches of 1,000; prints the load time and the WAL bytes written per
byte loaded (LSN advance / N x 116).

    python3 benches/random_load.py PORT [N]

For before/after comparisons start each build on an empty directory in turn (alternating,
several rounds) and compare the medians; `INFO persistence` page_count after CHECKPOINT gives
the pages used.
"""

import random
import sys
import time

import redis

c = redis.Redis(port=int(sys.argv[1]))
rnd = random.Random(100)
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100000
keys = [rnd.randbytes(16) for _ in range(n)]
base = rnd.randbytes(100 + 64)
vals = [base[i % 64 : i % 64 + 100] for i in range(n)]
lsn0 = int(c.info("persistence")["last_lsn"])
t = time.perf_counter()
for i in range(0, n, 1000):
    c.mset(dict(zip(keys[i : i + 1000], vals[i : i + 1000])))
el = time.perf_counter() - t
wal = int(c.info("persistence")["last_lsn"]) - lsn0
print(f"load s {el:.2f} wal/byte {wal / (n * 116):.2f}")
