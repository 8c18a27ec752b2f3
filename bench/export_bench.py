#!/usr/bin/env python3
"""What the fleet exporters cost (not a test).

In one invocation, for each of: procflow alone, with --metrics (scraped
once a second by this script), with --ipfix (to a UDP sink in this script
that counts what arrives), and with both, it starts `procflow run` (its own
temporary --db, never the default database) and measures:
  - with CONNECTIONS loopback TCP connections held open (two flows each,
    in namespaces it creates): procflow's CPU over WINDOW seconds, the
    /metrics scrape time and size, IPFIX messages and bytes per second
  - a connection storm for STORM seconds (short TCP connections over a
    veth pair between two namespaces it creates): connections made,
    procflow's CPU, IPFIX messages and bytes per second, records lost
RUNS=alone,--metrics picks some of the four; SCRAPE=15 scrapes every 15 s
(default 1 s).
Run as root after building: cargo build --release; sudo bench/export_bench.py
Traffic stays in the namespaces it creates and on loopback.
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCFLOW = os.path.join(ROOT, "target/release/procflow")
TESTGEN = os.path.join(ROOT, "target/release/procflow-testgen")
CONNECTIONS = int(os.environ.get("CONNECTIONS", "5000"))
WINDOW = float(os.environ.get("WINDOW", "20"))
STORM = float(os.environ.get("STORM", "10"))
SCRAPE = float(os.environ.get("SCRAPE", "1"))
TICK = os.sysconf("SC_CLK_TCK")
HOLD_NS = ["pfexp0", "pfexp1"]
A, B = "pfexpa", "pfexpb"
A_IP, B_IP = "10.198.7.1", "10.198.7.2"


def sh(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def ns(name, *args):
    return ["ip", "netns", "exec", name, *args]


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICK


def setup():
    for n in HOLD_NS + [A, B]:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)
        sh("ip", "netns", "add", n)
        sh(*ns(n, "ip", "link", "set", "lo", "up"))
    sh("ip", "link", "add", "pfexp0", "netns", A, "type", "veth", "peer", "name", "pfexp1", "netns", B)
    for n, dev, ip in ((A, "pfexp0", A_IP), (B, "pfexp1", B_IP)):
        sh(*ns(n, "ip", "addr", "add", ip + "/24", "dev", dev))
        sh(*ns(n, "ip", "link", "set", dev, "up"))


def teardown():
    for n in HOLD_NS + [A, B]:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)


class Sink:
    """A UDP socket on loopback that counts the IPFIX messages it gets."""

    def __init__(self):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.s.bind(("127.0.0.1", 0))
        self.port = self.s.getsockname()[1]
        self.messages = self.bytes = 0
        self.stop = False
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        self.s.settimeout(0.2)
        while not self.stop:
            try:
                data = self.s.recv(65535)
            except socket.timeout:
                continue
            self.messages += 1
            self.bytes += len(data)

    def counts(self):
        return self.messages, self.bytes


def scrape(port):
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
    return time.monotonic() - t, len(data.split(b"\r\n\r\n", 1)[1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp, metrics, ipfix):
    args = [PROCFLOW, "-v", "run", "--no-config", "--no-api", "--db", os.path.join(tmp, f"db{time.time_ns()}")]
    if metrics:
        args += ["--metrics", f"127.0.0.1:{metrics}"]
    if ipfix:
        args += ["--ipfix", f"127.0.0.1:{ipfix}"]
    p = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if "watching" in line:
            break
    threading.Thread(target=lambda: p.stderr.read(), daemon=True).start()
    return p


def scraper(port, stop, times, sizes):
    while not stop.is_set():
        t, n = scrape(port)
        times.append(t)
        sizes.append(n)
        stop.wait(SCRAPE)


def measure(tmp, name, metrics, ipfix, sink):
    mport = free_port() if metrics else None
    p = start(tmp, mport, sink.port if ipfix else None)
    out = {"name": name}
    try:
        holders = []
        for n in HOLD_NS:
            h = subprocess.Popen(ns(n, TESTGEN, "hold", "--connections", str(CONNECTIONS // len(HOLD_NS))),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert h.stdout.readline().startswith("ready")
            holders.append(h)
        time.sleep(5)
        stop, times, sizes = threading.Event(), [], []
        if mport:
            threading.Thread(target=scraper, args=(mport, stop, times, sizes), daemon=True).start()
        m0, b0 = sink.counts()
        c0 = cpu_s(p.pid)
        time.sleep(WINDOW)
        out["hold_cpu"] = (cpu_s(p.pid) - c0) / WINDOW
        m1, b1 = sink.counts()
        out["hold_msgs"] = (m1 - m0) / WINDOW
        out["hold_bytes"] = (b1 - b0) / WINDOW
        stop.set()
        if times:
            out["scrape_ms"] = statistics.median(times) * 1e3
            out["scrape_max_ms"] = max(times) * 1e3
            out["scrape_kib"] = max(sizes) / 1024
        for h in holders:
            h.stdin.close()
            h.wait()
        time.sleep(3)
        # The storm.
        sink_p = subprocess.Popen(ns(B, TESTGEN, "sink", "--listen", B_IP + ":0"), stdout=subprocess.PIPE, text=True)
        port = int(sink_p.stdout.readline().split()[1])
        m0, b0 = sink.counts()
        c0, t0 = cpu_s(p.pid), time.monotonic()
        r = json.loads(sh(*ns(A, TESTGEN, "storm", "--connect", f"{B_IP}:{port}", "--secs", str(STORM))).splitlines()[-1])
        time.sleep(2)
        wall = time.monotonic() - t0
        out["storm_conns"] = r["connections"]
        out["storm_cpu"] = (cpu_s(p.pid) - c0) / wall
        m1, b1 = sink.counts()
        out["storm_msgs"] = (m1 - m0) / wall
        out["storm_bytes"] = (b1 - b0) / wall
        sink_p.kill()
        sink_p.wait()
        if mport:
            _, n = scrape(mport)
            out["scrape_kib_after"] = n / 1024
    finally:
        p.send_signal(2)
        p.wait()
    return out


def main():
    if os.geteuid() != 0:
        sys.exit("run as root")
    tmp = tempfile.TemporaryDirectory()
    sink = Sink()
    setup()
    try:
        wanted = os.environ.get("RUNS", "alone,--metrics,--ipfix,both").split(",")
        runs = [measure(tmp.name, name, m, i, sink) for name, m, i in (
            ("alone", False, False),
            ("--metrics", True, False),
            ("--ipfix", False, True),
            ("both", True, True),
        ) if name in wanted]
    finally:
        sink.stop = True
        teardown()
    flows = 2 * (CONNECTIONS // len(HOLD_NS)) * len(HOLD_NS)
    print(f"{flows} live TCP flows, {WINDOW:.0f} s window; storm {STORM:.0f} s over veth; scrape every {SCRAPE:g} s")
    print(f"{'':28}" + "".join(f"{r['name']:>14}" for r in runs))
    rows = [
        ("CPU, live flows (% core)", "hold_cpu", 100, "{:14.2f}"),
        ("IPFIX msgs/s, live flows", "hold_msgs", 1, "{:14.1f}"),
        ("IPFIX bytes/s, live flows", "hold_bytes", 1, "{:14.0f}"),
        ("scrape median (ms)", "scrape_ms", 1, "{:14.1f}"),
        ("scrape max (ms)", "scrape_max_ms", 1, "{:14.1f}"),
        ("scrape size (KiB)", "scrape_kib", 1, "{:14.1f}"),
        ("storm connections", "storm_conns", 1, "{:14.0f}"),
        ("CPU, storm (% core)", "storm_cpu", 100, "{:14.2f}"),
        ("IPFIX msgs/s, storm", "storm_msgs", 1, "{:14.1f}"),
        ("IPFIX bytes/s, storm", "storm_bytes", 1, "{:14.0f}"),
        ("scrape size after storm", "scrape_kib_after", 1, "{:14.1f}"),
    ]
    for label, key, scale, fmt in rows:
        cells = "".join(fmt.format(r[key] * scale) if key in r else f"{'-':>14}" for r in runs)
        print(f"{label:28}{cells}")


if __name__ == "__main__":
    main()
