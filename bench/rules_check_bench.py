#!/usr/bin/env python3
"""Cost of checking a rules file: `procflow rules check` wall time and peak
RSS for files of 1,000 to 200,000 rules (more than 1,024 are refused, after
the whole file is read), and for the largest rule sets the kernel's tables
take (15,360 remote prefixes; 4,096 port segments). With --reload (root): the
collector's lag while procflow reloads a 200,000-rule file on SIGHUP, as the
time from closing a loopback connection to its flow record in the log. Not a
test: prints a table. Needs a release build (cargo build --release -p procflow)
and GNU time (/usr/bin/time).

    bench/rules_check_bench.py [--repeat 3] [--sizes 1000,10000,100000,200000]
    sudo bench/rules_check_bench.py --reload
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rules_bench import PROCFLOW, rules_text  # noqa: E402


def remote_heavy():
    """1,024 rules of 15 IPv4 prefixes each: 15,360 distinct prefixes."""
    out = []
    for i in range(1024):
        prefixes = ", ".join(f'"10.{i // 16}.{(i % 16) * 16 + k}.0/24"' for k in range(15))
        out.append(f'[[rule]]\nname = "r{i}"\naction = "block"\nremote = [{prefixes}]\n')
    return "".join(out)


def port_heavy():
    """1,023 rules with two single ports each: 4,093 port segments."""
    out = []
    for i in range(1023):
        out.append(f'[[rule]]\nname = "r{i}"\naction = "block"\n'
                   f'remote_port = [{4 * i + 1}, {4 * i + 3}]\n')
    return "".join(out)


def time_check(path):
    """Wall seconds, peak RSS (MiB), exit status and first message of one
    `procflow rules check` (RSS by GNU time: a forked child's own rusage
    would count the Python process it was forked from)."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "PEAK %M", PROCFLOW, "rules", "check", path],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    lines = p.stderr.strip().splitlines()
    rss = int(lines[-1].split()[1]) / 1024
    msg = lines[0].split(": ", 1)[-1] if len(lines) > 1 else ""
    return wall, rss, p.returncode, msg


def check_table(tmp, sizes, repeat):
    files = [(f"{n} rules", rules_text(n)) for n in sizes]
    files += [("1,024 rules, 15,360 remote prefixes", remote_heavy()),
              ("1,023 rules, 4,093 port segments", port_heavy())]
    print(f"{'file':<38} {'bytes':>11} {'check s (median)':>17} {'peak RSS MiB':>13}  outcome")
    for name, text in files:
        path = os.path.join(tmp, "rules.toml")
        with open(path, "w") as f:
            f.write(text)
        runs = [time_check(path) for _ in range(repeat)]
        wall = statistics.median(r[0] for r in runs)
        rss = max(r[1] for r in runs)
        outcome = "accepted" if runs[0][2] == 0 else "refused: " + runs[0][3][:50]
        print(f"{name:<38} {len(text):>11} {wall:>17.3f} {rss:>13.0f}  {outcome}")


def reload_lag(tmp, n):
    """Lag of flow records while procflow reloads a file of `n` rules."""
    if os.geteuid() != 0:
        sys.exit("--reload needs root")
    rules = os.path.join(tmp, "rules.toml")
    with open(rules, "w") as f:
        f.write('default = "allow"\n')
    log = os.path.join(tmp, "log.jsonl")
    db = os.path.join(tmp, "procflow.db")
    p = subprocess.Popen([PROCFLOW, "-v", "run", "--log", log, "--db", db, "--rules", rules],
                         stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if "watching" in line:
            break
        if line.startswith("procflow:"):
            sys.exit(f"procflow failed: {line}")
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()

    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(128)
    port = ls.getsockname()[1]
    threading.Thread(target=lambda: [ls.accept()[0].close() for _ in iter(int, 1)],
                     daemon=True).start()

    def records():
        with open(log) as f:
            return [json.loads(x) for x in f if x.endswith("\n")]

    def one_lag():
        c = socket.socket()
        c.connect(("127.0.0.1", port))
        lport = c.getsockname()[1]
        c.close()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 30:
            for r in records():
                if (r.get("type") == "flow" and r.get("state") == "closed"
                        and r.get("local_port") == lport and r.get("remote_port") == port):
                    return time.perf_counter() - t0
            time.sleep(0.005)
        return float("inf")

    idle = [one_lag() for _ in range(10)]
    with open(rules + ".tmp", "w") as f:
        f.write(rules_text(n))
    os.rename(rules + ".tmp", rules)
    acks_before = sum(1 for r in records() if r.get("type") == "rules")
    t0 = time.perf_counter()
    p.send_signal(signal.SIGHUP)
    during = []
    while sum(1 for r in records() if r.get("type") == "rules") == acks_before:
        during.append(one_lag())
    reload_s = time.perf_counter() - t0
    p.send_signal(signal.SIGINT)
    p.wait()
    print(f"\nreload of {n} rules (refused: too many) took {reload_s:.2f} s to acknowledge")
    print(f"flow record lag, idle:          median {statistics.median(idle) * 1000:.0f} ms, "
          f"max {max(idle) * 1000:.0f} ms ({len(idle)} connections)")
    if during:
        print(f"flow record lag, during reload: median {statistics.median(during) * 1000:.0f} ms, "
              f"max {max(during) * 1000:.0f} ms ({len(during)} connections)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sizes", default="1000,10000,100000,200000")
    ap.add_argument("--reload", action="store_true")
    ap.add_argument("--reload-rules", type=int, default=200000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pf-check-bench-") as tmp:
        if a.reload:
            reload_lag(tmp, a.reload_rules)
        else:
            check_table(tmp, [int(x) for x in a.sizes.split(",")], a.repeat)


if __name__ == "__main__":
    main()
