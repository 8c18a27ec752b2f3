#!/usr/bin/env python3
"""procflow with many live TCP flows (not a test).

Starts `procflow run` (its own temporary --db, never the default database),
then opens CONNECTIONS loopback TCP connections (two sockets, two flows
each) spread over NS network namespaces it creates (testgen hold), and
measures:
  - procflow's resident memory before and after the flows exist, per flow
    (target <= 400 B of user-space memory per live flow)
  - one reading of every live flow's counters (the periodic refresh: the
    kernel's socket walk of every namespace and the flow table updates),
    from the stats record's `refresh` (target <= 50 ms for 100,000 flows)
Run as root after building: cargo build --release; sudo bench/live_flows_bench.py
Traffic stays on the loopback devices of the namespaces it creates.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCFLOW = os.path.join(ROOT, "target/release/procflow")
TESTGEN = os.path.join(ROOT, "target/release/procflow-testgen")
CONNECTIONS = int(os.environ.get("CONNECTIONS", "50000"))
NS = [f"pflive{i}" for i in range(int(os.environ.get("NS", "4")))]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def anon_kib(pid):
    """Resident memory that is not the ring buffer's mapping (the kernel's,
    mapped into procflow) nor the program's own file."""
    total, name = 0, ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5:
                name = parts[5] if len(parts) > 5 else ""
            elif parts[0] == "Rss:" and "bpf-map" not in name and not name.startswith("/"):
                total += int(parts[1])
    return total


def main():
    if os.geteuid() != 0:
        sys.exit("run as root")
    holders = []
    tmp = tempfile.TemporaryDirectory()
    log = os.path.join(tmp.name, "log.jsonl")
    try:
        for n in NS:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
            subprocess.run(["ip", "netns", "add", n], check=True)
            subprocess.run(["ip", "netns", "exec", n, "ip", "link", "set", "lo", "up"], check=True)
        p = subprocess.Popen([PROCFLOW, "-v", "run", "--log", log, "--db", os.path.join(tmp.name, "procflow.db")],
                             stderr=subprocess.PIPE, text=True)
        for line in p.stderr:
            if "watching" in line:
                break
        time.sleep(1)
        before, before_anon = rss_kib(p.pid), anon_kib(p.pid)
        t0 = time.monotonic()
        for n in NS:
            h = subprocess.Popen(["ip", "netns", "exec", n, TESTGEN, "hold", "--connections",
                                  str(CONNECTIONS // len(NS))],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert h.stdout.readline().startswith("ready")
            holders.append(h)
        made = time.monotonic() - t0
        flows = 2 * (CONNECTIONS // len(NS)) * len(NS)
        time.sleep(5)
        after, after_anon = rss_kib(p.pid), anon_kib(p.pid)
        # The periodic reading runs every 30 s without --interval; the
        # stats record keeps the longest.
        time.sleep(32)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=120)
        recs = [json.loads(l) for l in open(log)]
        st = [r for r in recs if r.get("type") == "stats"][-1]
        print(f"procflow with {flows} live TCP flows ({CONNECTIONS} loopback connections in "
              f"{len(NS)} namespaces, made in {made:.1f} s)")
        print(f"  resident memory: {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after "
              f"({(after - before) * 1024 / flows:.0f} B per flow)")
        print(f"  of it, heap and other anonymous memory: {before_anon / 1024:.1f} -> {after_anon / 1024:.1f} MiB "
              f"({(after_anon - before_anon) * 1024 / flows:.0f} B per flow, target <= 400)")
        r = st["refresh"]
        print(f"  readings of all live flows: {r['count']}, longest {r['max_ms']:.1f} ms, last {r['last_ms']:.1f} ms "
              f"with {r['flows']} flows in the table (target <= 50 ms)")
        print(f"  events lost: {st['events_lost']}")
    finally:
        for h in holders:
            h.stdin.close()
            h.wait(timeout=60)
        for n in NS:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


if __name__ == "__main__":
    main()
