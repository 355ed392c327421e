#!/usr/bin/env python3
"""A 1,000,000-member hash, set, sorted set and list on one replidb server: load time, the
server's resident memory while loading, reading everything back (HGETALL, SMEMBERS,
ZRANGE, LRANGE) and after, point operations on the full collection, and how long the
background collector takes to remove each once deleted.

    python3 benches/big_collections.py [--members N] [--bin target/release/replidb]

Needs redis-py and a release build. Prints one line per measurement; the figures go to
docs/benchmarks.md with the date and machine.
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time

import redis


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def per_op_us(fn, n=2000):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e6)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--bin", default="target/release/replidb")
    ap.add_argument("--port", type=int, default=6395)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bigcoll.", dir="target")
    proc = subprocess.Popen(
        [a.bin, "serve", "--dir", f"{work}/d", "--port", str(a.port), "--log-level", "warn"]
    )
    try:
        r = redis.Redis(port=a.port)
        for _ in range(100):
            # Ready once INFO says loading:0 (the port answers PING while the node starts).
            try:
                if r.info("persistence").get("loading") == 0:
                    break
            except redis.ConnectionError:
                pass
            time.sleep(0.1)
        n, batch = a.members, 1000
        base_rss = rss_mb(proc.pid)
        print(f"members per collection: {n:,}; server RSS at start {base_rss:.0f} MB")
        loaders = {
            "hash": lambda i: r.hset("h", mapping={f"field:{j:07d}": f"value-{j}" for j in range(i, i + batch)}),
            "set": lambda i: r.sadd("s", *[f"member:{j:07d}" for j in range(i, i + batch)]),
            "zset": lambda i: r.zadd("z", {f"member:{j:07d}": j * 0.5 for j in range(i, i + batch)}),
            "list": lambda i: r.rpush("l", *[f"item-{j:07d}" for j in range(i, i + batch)]),
        }
        for kind, load in loaders.items():
            peak = 0.0
            t = time.perf_counter()
            for i in range(0, n, batch):
                load(i)
                if i % (50 * batch) == 0:
                    peak = max(peak, rss_mb(proc.pid))
            took = time.perf_counter() - t
            peak = max(peak, rss_mb(proc.pid))
            print(f"{kind:5} load {took:6.1f} s ({n / took:,.0f} members/s), server RSS peak while loading {peak:.0f} MB")
        size = {"hash": r.hlen("h"), "set": r.scard("s"), "zset": r.zcard("z"), "list": r.llen("l")}
        assert all(v == n for v in size.values()), size
        reads = {
            "HGETALL": lambda: r.hgetall("h"),
            "SMEMBERS": lambda: r.smembers("s"),
            "ZRANGE 0 -1": lambda: r.zrange("z", 0, -1),
            "LRANGE 0 -1": lambda: r.lrange("l", 0, -1),
        }
        for name, fn in reads.items():
            before = rss_mb(proc.pid)
            t = time.perf_counter()
            got = fn()
            took = time.perf_counter() - t
            assert len(got) == n, (name, len(got))
            print(f"{name:12} {took:5.2f} s for {n:,} members; server RSS {before:.0f} MB before, {rss_mb(proc.pid):.0f} MB after")
            del got
        rnd = random.Random(7)
        ops = {
            "HGET": lambda: r.hget("h", f"field:{rnd.randrange(n):07d}"),
            "HSET (overwrite)": lambda: r.hset("h", f"field:{rnd.randrange(n):07d}", "x"),
            "SISMEMBER": lambda: r.sismember("s", f"member:{rnd.randrange(n):07d}"),
            "ZSCORE": lambda: r.zscore("z", f"member:{rnd.randrange(n):07d}"),
            "ZRANGEBYSCORE (10 members)": lambda: r.zrangebyscore("z", (x := rnd.randrange(n) * 0.5), x + 4.5),
            "LINDEX (random)": lambda: r.lindex("l", rnd.randrange(n)),
            "LPUSH + LPOP": lambda: (r.lpush("l", "x"), r.lpop("l")),
            "LRANGE (100 from the middle)": lambda: r.lrange("l", n // 2, n // 2 + 99),
        }
        for name, fn in ops.items():
            print(f"{name:30} median {per_op_us(fn):7.0f} µs per call")
        print(f"server RSS with all four loaded: {rss_mb(proc.pid):.0f} MB")
        for key in ("h", "s", "z", "l"):
            info0 = int(r.info("stats")["collected_members"])
            t = time.perf_counter()
            r.delete(key)
            deleted = time.perf_counter() - t
            # A sorted set's members have two entries each (by member and by score).
            want = 2 * n if key == "z" else n
            while int(r.info("stats")["collected_members"]) - info0 < want:
                time.sleep(0.05)
            print(f"DEL {key}: {deleted * 1000:.1f} ms to answer; members collected in the background in {time.perf_counter() - t:.1f} s")
        print(f"server RSS at the end: {rss_mb(proc.pid):.0f} MB; DBSIZE {r.dbsize()}")
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    main()
