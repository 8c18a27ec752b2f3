#!/usr/bin/env python3
"""procflow start-up benchmark (not a test): time to full visibility with
10,000 open TCP sockets spread over 3 network namespaces, and procflow's
memory after the scan.

Each namespace holds 1,667 loopback connections (two sockets each) made by
procflow-testgen. procflow is started ROUNDS times; each time we measure the
wall time from exec to its "watching" line (programs loaded, attached, and
the scan done), the scan's own time from the stats record, its RSS after the
scan, and how many of the held connections it reports (with origin
"startup"). Run as root after `cargo build --release`.
"""
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCFLOW = os.path.join(ROOT, "target/release/procflow")
TESTGEN = os.path.join(ROOT, "target/release/procflow-testgen")
NS = ["pfscan-1", "pfscan-2", "pfscan-3"]
PER_NS = int(os.environ.get("PER_NS", "1667"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))


def main():
    holders = []
    try:
        for n in NS:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
            subprocess.run(["ip", "netns", "add", n], check=True)
            subprocess.run(["ip", "netns", "exec", n, "ip", "link", "set", "lo", "up"], check=True)
            h = subprocess.Popen(["ip", "netns", "exec", n, TESTGEN, "hold", "--connections", str(PER_NS)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert h.stdout.readline().startswith("ready")
            holders.append(h)
        inodes = {os.stat(f"/run/netns/{n}").st_ino for n in NS}
        walls, scans, rss, seen = [], [], [], []
        for _ in range(ROUNDS):
            log = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False).name
            t0 = time.monotonic()
            dbdir = tempfile.TemporaryDirectory()  # its own history, never the default database
            p = subprocess.Popen([PROCFLOW, "-v", "run", "--log", log, "--db",
                                  os.path.join(dbdir.name, "procflow.db")], stderr=subprocess.PIPE, text=True)
            for line in p.stderr:
                if "watching" in line:
                    break
            walls.append(time.monotonic() - t0)
            with open(f"/proc/{p.pid}/status") as f:
                rss.append(next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024)
            p.send_signal(signal.SIGINT)
            p.wait(timeout=60)
            recs = [json.loads(l) for l in open(log)]
            os.unlink(log)
            st = [r for r in recs if r.get("type") == "stats"][-1]
            scans.append(st["scan"]["millis"])
            ids = {r["flow_id"] for r in recs if r.get("type") == "flow" and r["netns"] in inodes
                   and r["proto"] == "tcp" and r["origin"] == "startup"}
            seen.append(len(ids))
        med = statistics.median
        print(f"procflow start-up with {2 * PER_NS * len(NS)} open TCP sockets in {len(NS)} namespaces ({ROUNDS} runs)")
        print(f"  start to full visibility (exec -> scan done), median: {med(walls) * 1000:8.1f} ms  (target < 1000)")
        print(f"  of which the scan itself, median:                    {med(scans):8.1f} ms")
        print(f"  sockets reported with origin startup:                {min(seen):8d} of {2 * PER_NS * len(NS)}")
        print(f"  procflow RSS after the scan, max:                    {max(rss):8.1f} MiB")
    finally:
        for h in holders:
            h.stdin.close()
            h.wait()
        for n in NS:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


if __name__ == "__main__":
    main()
