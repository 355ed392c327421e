#!/usr/bin/env python3
"""The disk's sync latency as a WAL sees it: a 300-byte pwrite + fdatasync per round on a
preallocated 16 MiB file, appending. Run several at once to see syncs share the disk.

    python3 benches/fsync_loop.py FILE [ROUNDS]
    for i in 1 2 3; do python3 benches/fsync_loop.py target/fs$i 3000 & done; wait
"""
import os
import statistics
import sys
import time

path = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
fd = os.open(path, os.O_RDWR | os.O_CREAT)
os.pwrite(fd, b"\0" * (16 << 20), 0)
os.fsync(fd)
buf, lat, off = b"x" * 300, [], 0
for _ in range(n):
    t = time.perf_counter_ns()
    os.pwrite(fd, buf, off)
    os.fdatasync(fd)
    lat.append((time.perf_counter_ns() - t) / 1000)
    off += 300
os.close(fd)
os.unlink(path)
lat.sort()
print(f"{path}: p50 {lat[n // 2]:.0f} us, p90 {lat[n * 9 // 10]:.0f} us, mean {statistics.mean(lat):.0f} us")
