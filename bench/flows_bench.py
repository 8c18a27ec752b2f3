#!/usr/bin/env python3
"""procflow's flow-tracking benchmark (not a test).

Measures, alternating runs without and with `procflow run` in one
invocation, across a veth pair between two network namespaces it creates:
  - TCP bulk throughput (iperf3), ratio with/without (target >= 0.98)
  - 256-byte UDP datagrams (iperf3 -u -b 0), ratio (target >= 0.90), two
    figures of the same runs: the goodput the receiver gets (most datagrams
    are lost, so it swings with scheduling) and the rate the sender sends
    at (the sender's CPU also carries the veth receive path in softirq, so
    it is the per-datagram cost of both directions)
  - procflow's CPU (% of one core) and peak RSS during those transfers
  - a connection storm for 10 s: flows recorded vs connections made, and
    procflow's CPU
Run as root after building: cargo build --release; sudo bench/flows_bench.py
Traffic stays inside the namespaces it creates (10.198.0.0/24).
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCFLOW = os.path.join(ROOT, "target/release/procflow")
TESTGEN = os.path.join(ROOT, "target/release/procflow-testgen")
A, B = "pfbench-a", "pfbench-b"
A_IP, B_IP = "10.198.0.1", "10.198.0.2"
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SECS = int(os.environ.get("SECS", "5"))
CLK = os.sysconf("SC_CLK_TCK")


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def ns(name, *args):
    return ["ip", "netns", "exec", name, *args]


def setup():
    for n in (A, B):
        subprocess.run(["ip", "netns", "del", n], capture_output=True)
        sh("ip", "netns", "add", n)
        sh(*ns(n, "ip", "link", "set", "lo", "up"))
    sh("ip", "link", "add", "pfbench0", "netns", A, "type", "veth", "peer", "name", "pfbench1", "netns", B)
    for n, dev, ip in ((A, "pfbench0", A_IP), (B, "pfbench1", B_IP)):
        sh(*ns(n, "ip", "addr", "add", ip + "/24", "dev", dev))
        sh(*ns(n, "ip", "link", "set", dev, "up"))


def teardown():
    for n in (A, B):
        subprocess.run(["ip", "netns", "del", n], capture_output=True)


class Procflow:
    def __init__(self):
        self.log = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False).name
        # Its own flow history, never the default database.
        self.dbdir = tempfile.TemporaryDirectory()
        self.p = subprocess.Popen([PROCFLOW, "-v", "run", "--log", self.log,
                                   "--db", os.path.join(self.dbdir.name, "procflow.db")],
                                  stderr=subprocess.PIPE, text=True)
        for line in self.p.stderr:
            if "watching" in line:
                break
        self.cpu0 = self.cpu()

    def cpu(self):
        with open(f"/proc/{self.p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK

    def peak_rss_mib(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        cpu = self.cpu() - self.cpu0
        rss = self.peak_rss_mib()
        self.p.send_signal(signal.SIGINT)
        self.p.wait(timeout=60)
        with open(self.log) as f:
            recs = [json.loads(l) for l in f]
        os.unlink(self.log)
        return cpu, rss, recs


def iperf(udp):
    srv = subprocess.Popen(ns(B, "iperf3", "-s", "-1", "-J"), stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    args = ["iperf3", "-c", B_IP, "-t", str(SECS), "-J"]
    if udp:
        args += ["-u", "-l", "256", "-b", "0"]
    out = json.loads(sh(*ns(A, *args)))
    srv.wait(timeout=30)
    end = out["end"]
    if udp:
        s = end["sum"]
        sent = s["packets"] / s["seconds"]
        return s["bytes"] * (1 - s["lost_percent"] / 100) * 8 / s["seconds"], sent
    return end["sum_received"]["bits_per_second"]


def storm():
    sink = subprocess.Popen(ns(B, TESTGEN, "sink", "--listen", B_IP + ":0"), stdout=subprocess.PIPE, text=True)
    port = int(sink.stdout.readline().split()[1])
    out = json.loads(sh(*ns(A, TESTGEN, "storm", "--connect", f"{B_IP}:{port}", "--secs", "10")).splitlines()[-1])
    sink.kill()
    sink.wait()
    return out["connections"], port


def main():
    if os.geteuid() != 0:
        sys.exit("run as root")
    setup()
    try:
        results = {"tcp": ([], []), "udp": ([], []), "udp-sent": ([], [])}
        cpu_pct, rss = [], []
        for r in range(ROUNDS):
            for kind in ("tcp", "udp"):
                for i in (0, 1):
                    pf = Procflow() if i else None
                    t0 = time.time()
                    got = iperf(kind == "udp")
                    wall = time.time() - t0
                    if kind == "udp":
                        results["udp"][i].append(got[0])
                        results["udp-sent"][i].append(got[1])
                    else:
                        results["tcp"][i].append(got)
                    if pf:
                        cpu, peak, _ = pf.stop()
                        cpu_pct.append(100 * cpu / wall)
                        rss.append(peak)
        made_base, _ = storm()
        pf = Procflow()
        t0 = time.time()
        made, port = storm()
        wall = time.time() - t0
        time.sleep(1)
        cpu, peak, recs = pf.stop()
        a_ino = os.stat(f"/run/netns/{A}").st_ino
        last = {}
        for rec in recs:
            if rec.get("type") == "flow" and rec["netns"] == a_ino and rec["remote_port"] == port:
                last[rec["flow_id"]] = rec
        closed = sum(1 for f in last.values() if f["state"] == "closed")
        stats = [r for r in recs if r.get("type") == "stats"][-1]

        med = statistics.median
        print(f"procflow flow-tracking benchmark ({ROUNDS} alternating rounds of {SECS} s)")
        print(f"{'measure':44} {'without':>12} {'with':>12} {'ratio':>7}")
        for kind, label, target, scale in (
                ("tcp", "TCP bulk over veth (Gbit/s)", 0.98, 1e9),
                ("udp", "UDP 256 B, goodput received (Mbit/s)", 0.90, 1e6),
                ("udp-sent", "UDP 256 B, datagrams sent (k/s)", 0.90, 1e3)):
            wo, w = med(results[kind][0]), med(results[kind][1])
            print(f"{label:44} {wo / scale:12.2f} {w / scale:12.2f} {w / wo:7.3f}  (target >= {target})")
        print(f"{'procflow CPU during transfers (% of a core)':44} {'':12} {med(cpu_pct):12.1f}")
        print(f"{'procflow peak RSS (MiB)':44} {'':12} {max(rss):12.1f}")
        print(f"{'connection storm: connections made in 10 s':44} {made_base:12d} {made:12d} {made / made_base:7.3f}")
        print(f"{'connection storm: closed flows recorded':44} {'':12} {closed:12d}  ({made - closed} missing)")
        print(f"{'connection storm: events lost':44} {'':12} {stats['events_lost']:12d}")
        print(f"{'connection storm: procflow CPU (% of a core)':44} {'':12} {100 * cpu / wall:12.1f}")
        print(f"{'connection storm: procflow peak RSS (MiB)':44} {'':12} {peak:12.1f}")
    finally:
        teardown()


if __name__ == "__main__":
    main()
