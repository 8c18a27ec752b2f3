#!/usr/bin/env python3
"""procflow's live view and API with many live flows (not a test).

Starts `procflow run` (its own temporary --db and --api, never the default
database or socket), opens CONNECTIONS loopback TCP connections (two
flows each) in namespaces it creates (testgen hold), and measures, side by
side in one invocation:
  - the daemon's CPU over WINDOW seconds with no viewer, then over WINDOW
    seconds with `procflow top` attached (in a tmux pane, redrawing once a
    second), and top's own CPU then (targets: daemon < 2 % of a core, top
    < 5 %)
  - `GET /v1/snapshot`: latency (a first call, which waits for a fresh
    reading of the kernel, and the median of later ones) and size
  - the daemon's resident memory (peak and now)
Run as root after building: cargo build --release; sudo bench/live_api_bench.py
Traffic stays on the loopback devices of the namespaces it creates.
"""
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCFLOW = os.path.join(ROOT, "target/release/procflow")
TESTGEN = os.path.join(ROOT, "target/release/procflow-testgen")
CONNECTIONS = int(os.environ.get("CONNECTIONS", "5000"))
WINDOW = float(os.environ.get("WINDOW", "20"))
NS = [f"pfapi{i}" for i in range(int(os.environ.get("NS", "2")))]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    """User and system CPU seconds of a process and its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def mem_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":"))


def get(sock, target):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: procflow\r\n\r\n".encode())
    data = bytearray()
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        data += b
    s.close()
    head, body = bytes(data).split(b"\r\n\r\n", 1)
    assert b" 200 " in head.split(b"\r\n")[0], head
    return body


def main():
    if os.geteuid() != 0:
        sys.exit("run as root")
    if not shutil.which("tmux"):
        sys.exit("needs tmux (scripts/install-deps.sh installs it)")
    holders = []
    tmp = tempfile.TemporaryDirectory()
    sock = os.path.join(tmp.name, "api.sock")
    session = "pf-api-bench"
    p = None
    try:
        for n in NS:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
            subprocess.run(["ip", "netns", "add", n], check=True)
            subprocess.run(["ip", "netns", "exec", n, "ip", "link", "set", "lo", "up"], check=True)
        p = subprocess.Popen([PROCFLOW, "-v", "run", "--db", os.path.join(tmp.name, "procflow.db"),
                              "--api", sock], stderr=subprocess.PIPE, text=True)
        for line in p.stderr:
            if "watching" in line:
                break
        subprocess.Popen(["cat"], stdin=p.stderr, stdout=subprocess.DEVNULL)
        for n in NS:
            h = subprocess.Popen(["ip", "netns", "exec", n, TESTGEN, "hold", "--connections",
                                  str(CONNECTIONS // len(NS))],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert h.stdout.readline().startswith("ready")
            holders.append(h)
        flows = 2 * (CONNECTIONS // len(NS)) * len(NS)
        # Let the records of the new flows be read, and any viewer's
        # interest lapse (30 s), before the quiet window.
        time.sleep(35)
        c0 = cpu_s(p.pid)
        time.sleep(WINDOW)
        quiet = (cpu_s(p.pid) - c0) / WINDOW

        t = time.monotonic()
        body = get(sock, "/v1/snapshot")
        first_ms = (time.monotonic() - t) * 1e3
        snap = json.loads(body)
        lat = []
        for _ in range(10):
            t = time.monotonic()
            get(sock, "/v1/snapshot")
            lat.append((time.monotonic() - t) * 1e3)
            time.sleep(0.2)

        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "50",
                        f"{PROCFLOW} top --api {sock}"], check=True)
        time.sleep(3)
        top_pid = int(subprocess.run(["tmux", "list-panes", "-t", session, "-F", "#{pane_pid}"],
                                     capture_output=True, text=True, check=True).stdout.split()[0])
        c0, t0 = cpu_s(p.pid), cpu_s(top_pid)
        time.sleep(WINDOW)
        watched = (cpu_s(p.pid) - c0) / WINDOW
        top_cpu = (cpu_s(top_pid) - t0) / WINDOW
        screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                capture_output=True, text=True).stdout
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        hwm, rss = mem_kib(p.pid, "VmHWM"), mem_kib(p.pid, "VmRSS")

        print(f"procflow with {flows} live TCP flows ({CONNECTIONS} loopback connections in "
              f"{len(NS)} namespaces); windows of {WINDOW:.0f} s")
        print(f"  daemon CPU, no viewer:            {quiet * 100:5.2f} % of a core")
        print(f"  daemon CPU, procflow top attached: {watched * 100:5.2f} % of a core (target < 2 %)")
        print(f"  procflow top's own CPU:            {top_cpu * 100:5.2f} % of a core (target < 5 %)")
        print(f"  GET /v1/snapshot: {len(body) / 1e6:.2f} MB, {len(snap['flows'])} flows, "
              f"{len(snap['processes'])} processes; first call {first_ms:.0f} ms (waits for a "
              f"fresh reading), then median {statistics.median(lat):.0f} ms, max {max(lat):.0f} ms")
        print(f"  daemon resident memory: peak {hwm / 1024:.1f} MiB, now {rss / 1024:.1f} MiB")
        print("  top's screen showed:", screen.splitlines()[1].strip() if len(screen.splitlines()) > 1 else "")
    finally:
        for h in holders:
            h.stdin.close()
            h.wait(timeout=60)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGINT)
            p.wait(timeout=120)
        for n in NS:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


if __name__ == "__main__":
    main()
