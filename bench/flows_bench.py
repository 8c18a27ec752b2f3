#!/usr/bin/env python3
"""procflow's flow-tracking benchmark (not a test).

Measures, alternating runs without and with `procflow run` in one
invocation, across a veth pair between two network namespaces it creates:
  - TCP bulk throughput (iperf3), ratio with/without (target >= 0.99)
  - 64- and 256-byte UDP datagrams (iperf3 -u -b 0), ratio (target >= 0.95), two
    figures of the same runs: the goodput the receiver gets (most datagrams
    are lost, so it swings with scheduling) and the rate the sender sends
    at (the sender's CPU also carries the veth receive path in softirq, so
    it is the per-datagram cost of both directions)
  - procflow's CPU (% of one core) and peak RSS during those transfers
  - the kernel time of procflow's programs per datagram
    (kernel.bpf_stats_enabled, one more 64- and 256-byte run each)
  (iperf3 client and server are pinned to CPUs 0 and 1)
  - a connection storm for 10 s: flows recorded vs connections made, and
    procflow's CPU
Run as root after building: cargo build --release; sudo bench/flows_bench.py
Traffic stays inside the namespaces it creates (10.198.0.0/24).
ONLY=cost runs only the kernel time per datagram, ONLY=storm only the
connection storm. PROCFLOW_ARGS adds options to `procflow run` (e.g.
"--ring-buffer 2M").
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
PROCFLOW = os.environ.get("PROCFLOW", os.path.join(ROOT, "target/release/procflow"))
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
                                   "--db", os.path.join(self.dbdir.name, "procflow.db")]
                                  + os.environ.get("PROCFLOW_ARGS", "").split(),
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
    """One iperf3 run, client and server pinned to different CPUs; `udp` is
    the datagram size (0: TCP bulk)."""
    srv = subprocess.Popen(ns(B, "iperf3", "-s", "-1", "-J", "-A", "1"), stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    args = ["iperf3", "-c", B_IP, "-t", str(SECS), "-J", "-A", "0"]
    if udp:
        args += ["-u", "-l", str(udp), "-b", "0"]
    out = json.loads(sh(*ns(A, *args)))
    srv.wait(timeout=30)
    end = out["end"]
    if udp:
        s = end["sum"]
        sent = s["packets"] / s["seconds"]
        return s["bytes"] * (1 - s["lost_percent"] / 100) * 8 / s["seconds"], sent
    return end["sum_received"]["bits_per_second"]


def bpf_prog_stats():
    """(run_time_ns, run_cnt) of every loaded procflow program, by name."""
    out = {}
    for p in json.loads(sh("bpftool", "prog", "show", "-j")):
        name = p.get("name", "")
        if name.startswith("pf_"):
            t, c = out.get(name, (0, 0))
            out[name] = (t + p.get("run_time_ns", 0), c + p.get("run_cnt", 0))
    return out


def kernel_cost(size):
    """Kernel time of procflow's programs per datagram, from
    kernel.bpf_stats_enabled, during one UDP run with procflow."""
    pf = Procflow()
    sh("sysctl", "-q", "kernel.bpf_stats_enabled=1")
    try:
        before = bpf_prog_stats()
        _, sent = iperf(size)
        after = bpf_prog_stats()
    finally:
        sh("sysctl", "-q", "kernel.bpf_stats_enabled=0")
        pf.stop()
    per_run = {}
    for name, (t, c) in after.items():
        t0, c0 = before.get(name, (0, 0))
        if c - c0 > 1000:
            per_run[name] = ((t - t0) / (c - c0), c - c0)
    datagrams = sent * SECS
    total = sum((t - before.get(n, (0, 0))[0]) for n, (t, _) in after.items())
    return per_run, total / datagrams, datagrams


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
        if os.environ.get("ONLY") == "cost":
            # Only the kernel time per datagram (quicker; not the ratios).
            for size in (64, 256):
                per_run, per_dgram, n = kernel_cost(size)
                print(f"kernel time per {size}-byte datagram: {per_dgram:.0f} ns ({n / 1e6:.2f} M sent)")
                for name, (ns_run, runs) in sorted(per_run.items()):
                    print(f"    {name:24} {ns_run:8.1f} ns per run, {runs} runs")
            return
        if os.environ.get("ONLY") == "storm":
            # Only the connection storm (quicker; not the ratios).
            made_base, _ = storm()
            pf = Procflow()
            t0 = time.time()
            made, _ = storm()
            wall = time.time() - t0
            time.sleep(1)
            cpu, peak, recs = pf.stop()
            st = [r for r in recs if r.get("type") == "stats"][-1]
            print(f"connection storm, 10 s: {made_base} connections without procflow, {made} with")
            print(f"  procflow CPU {100 * cpu / wall:.1f} % of a core, peak RSS {peak:.1f} MiB, "
                  f"events lost {st['events_lost']}, ring buffer peak {st['ring_buffer_peak']} B "
                  f"of {st['ring_buffer_size']}")
            return
        kinds = {"tcp": 0, "udp64": 64, "udp256": 256}
        results = {k: ([], []) for k in ("tcp", "udp64", "udp64-sent", "udp256", "udp256-sent")}
        cpu_pct, rss = [], []
        for r in range(ROUNDS):
            for kind, size in kinds.items():
                for i in (0, 1):
                    pf = Procflow() if i else None
                    t0 = time.time()
                    got = iperf(size)
                    wall = time.time() - t0
                    if size:
                        results[kind][i].append(got[0])
                        results[kind + "-sent"][i].append(got[1])
                    else:
                        results["tcp"][i].append(got)
                    if pf:
                        cpu, peak, _ = pf.stop()
                        cpu_pct.append(100 * cpu / wall)
                        rss.append(peak)
        costs = {size: kernel_cost(size) for size in (64, 256)}
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
                ("tcp", "TCP bulk over veth (Gbit/s)", 0.99, 1e9),
                ("udp64", "UDP 64 B, goodput received (Mbit/s)", 0.95, 1e6),
                ("udp64-sent", "UDP 64 B, datagrams sent (k/s)", 0.95, 1e3),
                ("udp256", "UDP 256 B, goodput received (Mbit/s)", 0.95, 1e6),
                ("udp256-sent", "UDP 256 B, datagrams sent (k/s)", 0.95, 1e3)):
            wo, w = med(results[kind][0]), med(results[kind][1])
            print(f"{label:44} {wo / scale:12.2f} {w / scale:12.2f} {w / wo:7.3f}  (target >= {target})")
        print(f"{'procflow CPU during transfers (% of a core)':44} {'':12} {med(cpu_pct):12.1f}")
        for size, (per_run, per_dgram, n) in costs.items():
            print(f"kernel time per {size}-byte datagram (bpf_stats, {n / 1e6:.2f} M datagrams sent): "
                  f"{per_dgram:.0f} ns in all")
            for name, (ns_run, runs) in sorted(per_run.items()):
                print(f"    {name:24} {ns_run:8.1f} ns per run, {runs} runs")
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
