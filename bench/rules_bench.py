#!/usr/bin/env python3
"""Cost of rules enforcement: connect() latency and TCP bulk throughput over
loopback with 1,000 rules loaded, against procflow running without rules and
against no procflow at all. Configurations alternate within one invocation
(rounds), so that drift of the machine hits them alike. Not a test: prints a
table. Needs root and a release build (cargo build --release -p procflow).

    sudo bench/rules_bench.py [--rounds 5] [--connects 5000] [--bytes 1073741824]
    sudo bench/rules_bench.py --load [--rounds 7]

--load times starts instead: from exec to procflow's "watching" line,
without rules and with the rules file, alternating, each start with its own
--db in a temporary folder.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCFLOW = os.environ.get("PROCFLOW", os.path.join(ROOT, "target", "release", "procflow"))


def rules_text(n):
    """n rules that the benchmark's connections never match, so every
    connection is looked at by all dimensions and decided by the default.
    A mix of every condition kind, like a real file."""
    out = ['default = "allow"\n']
    for i in range(n):
        k = i % 5
        out.append(f'[[rule]]\nname = "r{i}"\naction = "block"\n')
        if k == 0:
            out.append(f'exe = "/opt/app{i}/*"\nremote = "10.{i % 250}.{i // 250}.0/24"\n')
        elif k == 1:
            out.append(f'exe = "*/tool{i}"\nremote_port = "{20000 + i}-{20000 + i + 5}"\n')
        elif k == 2:
            out.append(f'user = {10000 + i}\nproto = "tcp"\nremote_port = {1000 + i}\n')
        elif k == 3:
            out.append(f'comm = "c{i}"\nremote = "fd00:{i:x}::/32"\n')
        else:
            out.append(f'remote = "192.0.{i % 250}.{i // 250 + 1}"\nlocal_port = {30000 + i}\n')
    return "".join(out)


class Procflow:
    def __init__(self, rules_path):
        self.started = time.perf_counter()
        # Its own flow history, never the default database.
        self.dbdir = tempfile.TemporaryDirectory()
        args = [PROCFLOW, "-v", "run", "--db", os.path.join(self.dbdir.name, "procflow.db")]
        if rules_path:
            args += ["--rules", rules_path]
        self.p = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        for line in self.p.stderr:
            if "watching" in line:
                self.start_s = time.perf_counter() - self.started
                break
            if line.startswith("procflow:"):
                sys.exit(f"procflow failed: {line}")
        threading.Thread(target=lambda: [None for _ in self.p.stderr], daemon=True).start()

    def stop(self):
        self.p.send_signal(2)
        self.p.wait()


def server(kind):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(4096)

    def accept_loop():
        while True:
            c, _ = ls.accept()
            if kind == "sink":
                threading.Thread(target=drain, args=(c,), daemon=True).start()
            else:
                c.close()

    threading.Thread(target=accept_loop, daemon=True).start()
    return ls.getsockname()[1]


def drain(c):
    buf = bytearray(1 << 20)
    while c.recv_into(buf):
        pass
    c.close()


def connect_latency(port, n):
    """Median connect() time in microseconds."""
    times = []
    for _ in range(n):
        s = socket.socket()
        t0 = time.perf_counter_ns()
        s.connect(("127.0.0.1", port))
        times.append(time.perf_counter_ns() - t0)
        s.close()
    return statistics.median(times) / 1000.0


def throughput(port, total):
    """Bytes per second of one TCP upload of `total` bytes."""
    s = socket.socket()
    s.connect(("127.0.0.1", port))
    buf = b"\0" * (1 << 20)
    t0 = time.perf_counter()
    sent = 0
    while sent < total:
        sent += s.send(buf)
    s.shutdown(socket.SHUT_WR)
    s.close()
    return sent / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connects", type=int, default=5000)
    ap.add_argument("--bytes", type=int, default=1 << 30)
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--load", action="store_true", help="time starts, with and without rules")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    tmp = tempfile.mkdtemp(prefix="pf-rules-bench-")
    rules = os.path.join(tmp, "rules.toml")
    with open(rules, "w") as f:
        f.write(rules_text(a.rules))
    check = subprocess.run([PROCFLOW, "rules", "check", rules], capture_output=True, text=True)
    if check.returncode != 0:
        sys.exit(check.stderr)
    if a.load:
        return load_times(rules, a)
    accept_port = server("close")
    sink_port = server("sink")
    configs = ["no procflow", "procflow, no rules", f"procflow, {a.rules} rules"]
    lat = {c: [] for c in configs}
    tput = {c: [] for c in configs}
    for r in range(a.rounds):
        for c in configs:
            pf = None
            if c != "no procflow":
                pf = Procflow(rules if "rules" in c and "no rules" not in c else None)
            connect_latency(accept_port, 200)  # warm up
            lat[c].append(connect_latency(accept_port, a.connects))
            tput[c].append(throughput(sink_port, a.bytes))
            if pf:
                pf.stop()
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(
            f"{c}: {lat[c][-1]:.2f} us, {tput[c][-1] / 1e9:.2f} GB/s" for c in configs),
            file=sys.stderr)
    base, norules, withrules = configs
    print(f"\nrules benchmark: {a.rounds} rounds, {a.connects} connects and "
          f"{a.bytes >> 20} MiB per configuration and round, loopback TCP\n")
    print(f"{'configuration':<24} {'connect() median us':>20} {'throughput GB/s':>16}")
    for c in configs:
        print(f"{c:<24} {statistics.median(lat[c]):>20.2f} "
              f"{statistics.median(tput[c]) / 1e9:>16.2f}")
    added = statistics.median([w - n for w, n in zip(lat[withrules], lat[norules])])
    added_base = statistics.median([w - b for w, b in zip(lat[withrules], lat[base])])
    ratio = statistics.median([w / n for w, n in zip(tput[withrules], tput[norules])])
    ratio_base = statistics.median([w / b for w, b in zip(tput[withrules], tput[base])])
    print(f"\nadded connect() latency, {a.rules} rules vs procflow without rules: "
          f"{added:+.2f} us (target < 5)")
    print(f"added connect() latency, {a.rules} rules vs no procflow: {added_base:+.2f} us")
    print(f"throughput ratio, {a.rules} rules / procflow without rules: {ratio:.3f} "
          f"(target >= 0.98)")
    print(f"throughput ratio, {a.rules} rules / no procflow: {ratio_base:.3f}")


def load_times(rules, a):
    """Seconds from exec to "watching", without rules and with them."""
    times = {"no rules": [], f"{a.rules} rules": []}
    for r in range(a.rounds):
        for c in times:
            pf = Procflow(None if c == "no rules" else rules)
            times[c].append(pf.start_s)
            pf.stop()
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(
            f"{c}: {times[c][-1]:.3f} s" for c in times), file=sys.stderr)
    print(f"\nstart to watching, {a.rounds} starts each, alternating\n")
    print(f"{'configuration':<16} {'median s':>9} {'min s':>7} {'max s':>7}")
    for c, t in times.items():
        print(f"{c:<16} {statistics.median(t):>9.3f} {min(t):>7.3f} {max(t):>7.3f}")


if __name__ == "__main__":
    main()
