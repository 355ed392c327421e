#!/usr/bin/env python3
"""Failover time through a Sentinel client: a three-member etcd and three replidb members on
127.0.0.1 (sync-standbys 'ANY 1 (*)', remote_flush), a redis-py Sentinel client writing; the
primary is SIGKILLed (or SIGSTOPped) and the time to the first write acknowledged by the new
primary is measured. Trials alternate kill and stop; the killed member is restarted and
rejoins before the next trial. Also: etcd requests per member per second at rest (from
etcd's own gRPC counters).

    python3 benches/failover_time.py [--ttl-ms 2000,5000] [--trials 10] [--bin target/release/replidb]

Prints one line per trial and a summary (median, min, max); docs/benchmarks.md records them.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from redis.sentinel import Sentinel
from redis.exceptions import RedisError
from redis.sentinel import MasterNotFoundError


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait(what, secs, cond):
    t = time.time()
    while not cond():
        if time.time() - t > secs:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


class Cluster:
    def __init__(self, root, binary, ttl_ms):
        self.root, self.binary, self.ttl_ms = root, binary, ttl_ms
        self.etcd_clients = [free_port() for _ in range(3)]
        peers = [free_port() for _ in range(3)]
        initial = ",".join(f"e{i}=http://127.0.0.1:{p}" for i, p in enumerate(peers))
        self.etcd = []
        for i in range(3):
            self.etcd.append(subprocess.Popen(
                ["etcd", "--name", f"e{i}", "--data-dir", f"{root}/etcd{i}",
                 "--listen-client-urls", f"http://127.0.0.1:{self.etcd_clients[i]}",
                 "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_clients[i]}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peers[i]}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peers[i]}",
                 "--initial-cluster", initial, "--initial-cluster-state", "new"],
                stdout=subprocess.DEVNULL, stderr=open(f"{root}/etcd{i}.log", "w")))
        self.endpoints = ",".join(f"127.0.0.1:{p}" for p in self.etcd_clients)
        wait("etcd", 30, lambda: subprocess.run(
            ["etcdctl", "--endpoints", self.endpoints, "endpoint", "health"],
            capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}).returncode == 0)
        self.ports = [free_port() for _ in range(3)]
        self.procs = [None] * 3
        for i in range(3):
            self.start(i)
            if i == 0:
                wait("the first member to lead", 30, lambda: self.master() == self.ports[0])

    def start(self, i):
        self.procs[i] = subprocess.Popen(
            [self.binary, "serve", "--dir", f"{self.root}/n{i + 1}", "--port", str(self.ports[i]),
             "--name", f"n{i + 1}", "--etcd", self.endpoints, "--cluster", "bench",
             "--failover-ttl-ms", str(self.ttl_ms), "--sync-standbys", "ANY 1 (*)"],
            stdout=subprocess.DEVNULL, stderr=open(f"{self.root}/n{i + 1}.log", "a"))

    def sentinel(self):
        return Sentinel([("127.0.0.1", p) for p in self.ports], socket_timeout=0.5)

    def master(self):
        try:
            return self.sentinel().discover_master("bench")[1]
        except (MasterNotFoundError, RedisError, OSError):
            return None

    def healthy(self):
        """Every member up, one primary, two streaming replicas."""
        import redis
        streaming = 0
        for p in self.ports:
            try:
                info = redis.Redis(port=p, socket_timeout=0.5).info("replication")
            except (RedisError, OSError):
                return False
            if info.get("role") == "replica" and info.get("primary_link") == "up":
                streaming += 1
        return streaming == 2 and self.master() is not None

    def etcd_requests(self):
        """gRPC requests etcd handled so far, summed over its members."""
        total = 0
        for p in self.etcd_clients:
            text = urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics").read().decode()
            for m in re.finditer(r'^grpc_server_handled_total\{[^}]*\} (\S+)$', text, re.M):
                total += float(m.group(1))
            for m in re.finditer(r'^grpc_server_msg_received_total\{[^}]*grpc_type="bidi_stream"[^}]*\} (\S+)$', text, re.M):
                total += float(m.group(1))
        return total

    def stop(self):
        for p in self.procs + self.etcd:
            if p and p.poll() is None:
                p.kill()
                p.wait()


def first_ack_after(cluster, old_port, t0, limit=60):
    """Seconds from t0 to the first SET acknowledged by a primary other than old_port."""
    s = cluster.sentinel()
    while time.time() - t0 < limit:
        try:
            host, port = s.discover_master("bench")
            if port != old_port:
                m = s.master_for("bench", socket_timeout=2.0)
                m.set("after", str(t0))
                return time.time() - t0, port
        except (MasterNotFoundError, RedisError, OSError):
            pass
        time.sleep(0.01)
    raise SystemExit("no failover within the limit")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ttl-ms", default="2000,5000")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--bin", default="target/release/replidb")
    a = ap.parse_args()
    results = {}
    for ttl in [int(t) for t in a.ttl_ms.split(",")]:
        root = tempfile.mkdtemp(prefix="replidb-failover-")
        c = Cluster(root, os.path.abspath(a.bin), ttl)
        try:
            wait("the cluster to be healthy", 60, c.healthy)
            r0, t = c.etcd_requests(), time.time()
            time.sleep(10)
            rest = (c.etcd_requests() - r0) / (time.time() - t) / 3
            print(f"ttl {ttl} ms: etcd requests at rest {rest:.1f}/s per member", flush=True)
            results[(ttl, "rest")] = [rest]
            for trial in range(a.trials):
                how = "kill" if trial % 2 == 0 else "stop"
                wait("the cluster to be healthy", 60, c.healthy)
                old = c.master()
                i = c.ports.index(old)
                s = c.sentinel().master_for("bench", socket_timeout=2.0)
                s.set("before", "1")
                t0 = time.time()
                os.kill(c.procs[i].pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
                took, new = first_ack_after(c, old, t0)
                print(f"ttl {ttl} ms trial {trial}: SIG{how.upper()} n{i + 1} -> first write acknowledged by :{new} after {took * 1000:.0f} ms", flush=True)
                results.setdefault((ttl, how), []).append(took * 1000)
                if how == "kill":
                    c.procs[i].wait()
                    c.start(i)
                else:
                    os.kill(c.procs[i].pid, signal.SIGCONT)
        finally:
            c.stop()
            shutil.rmtree(root, ignore_errors=True)
    print("\nsummary (ms from the signal to the first write acknowledged through the Sentinel client)")
    for (ttl, how), v in sorted(results.items()):
        if how == "rest":
            print(f"  ttl {ttl:>5} ms  etcd requests at rest: {v[0]:.1f}/s per member")
        else:
            print(f"  ttl {ttl:>5} ms  SIG{how.upper():<4}  median {statistics.median(v):.0f}  min {min(v):.0f}  max {max(v):.0f}  (n={len(v)})")


if __name__ == "__main__":
    sys.exit(main())
