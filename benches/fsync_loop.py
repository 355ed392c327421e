#!/usr/bin/env python3
"""The disk's sync latency as a WAL sees it: a 300-byte pwrite + fdatasync per round on a
preallocated 16 MiB file, appending. Run several at once to see syncs share the disk.

    python3 benches/fsync_loop.py FILE [ROUNDS] [--direct]
    for i in 1 2 3; do python3 benches/fsync_loop.py target/fs$i 3000 & done; wait

--direct writes with O_DIRECT instead: each round rewrites the whole 4 KiB block(s) holding
the new 300 bytes (from a 512-byte offset, as a WAL segment's stream starts after its
header), then fdatasyncs; the page cache is bypassed.
"""
import mmap
import os
import statistics
import sys
import time

args = [a for a in sys.argv[1:] if a != "--direct"]
direct = "--direct" in sys.argv[1:]
path = args[0]
n = int(args[1]) if len(args) > 1 else 3000
fd = os.open(path, os.O_RDWR | os.O_CREAT)
os.pwrite(fd, b"\0" * (16 << 20), 0)
os.fsync(fd)
if direct:
    os.close(fd)
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    block = mmap.mmap(-1, 8192)  # page-aligned, as O_DIRECT wants
    block.write(b"x" * 8192)
buf, lat = b"x" * 300, []
off = 512 if direct else 0
for _ in range(n):
    t = time.perf_counter_ns()
    if direct:
        first, last = off & ~4095, (off + 300 + 4095) & ~4095
        os.pwritev(fd, [memoryview(block)[: last - first]], first)
    else:
        os.pwrite(fd, buf, off)
    os.fdatasync(fd)
    lat.append((time.perf_counter_ns() - t) / 1000)
    off += 300
os.close(fd)
os.unlink(path)
lat.sort()
mode = "O_DIRECT" if direct else "buffered"
print(f"{path} ({mode}): p50 {lat[n // 2]:.0f} us, p90 {lat[n * 9 // 10]:.0f} us, mean {statistics.mean(lat):.0f} us")
