#!/usr/bin/env python3
"""procflow process-creation benchmark (not a test): what procflow's exec
and fork records cost a program that creates processes.

Two workloads, each timed ROUNDS times without and with `procflow run`
(its own --db in a temporary folder), alternating, in one invocation:
  fork: a parent forks N children that exit at once (no exec): one fork
        record per child;
  spawn: N fork+exec of /bin/true: one fork and one exec record each.
Prints the median per-process time of each and the ratio with/without, and
the records procflow lost (it must lose none). Run as root after
`cargo build --release`.
"""
import os
import signal
import statistics
import subprocess
import tempfile
import time
import json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCFLOW = os.path.join(ROOT, "target/release/procflow")
N = int(os.environ.get("N", "3000"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))


def fork_children(n):
    t0 = time.perf_counter()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return (time.perf_counter() - t0) / n


def spawn_true(n):
    t0 = time.perf_counter()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/true", ["/bin/true"])
        os.waitpid(pid, 0)
    return (time.perf_counter() - t0) / n


class Monitor:
    def __enter__(self):
        self.dir = tempfile.TemporaryDirectory()
        log = os.path.join(self.dir.name, "log.jsonl")
        self.log = log
        self.p = subprocess.Popen([PROCFLOW, "-v", "run", "--log", log, "--db",
                                   os.path.join(self.dir.name, "procflow.db")],
                                  stderr=subprocess.PIPE, text=True)
        for line in self.p.stderr:
            if "watching" in line:
                break
        return self

    def __exit__(self, *a):
        self.p.send_signal(signal.SIGINT)
        self.p.wait(timeout=60)
        recs = [json.loads(l) for l in open(self.log)]
        self.stats = [r for r in recs if r.get("type") == "stats"][-1]
        self.dir.cleanup()


def main():
    results = {"fork": ([], []), "spawn": ([], [])}
    lost = 0
    for _ in range(ROUNDS):
        for name, f in (("fork", fork_children), ("spawn", spawn_true)):
            results[name][0].append(f(N))
        with Monitor() as m:
            for name, f in (("fork", fork_children), ("spawn", spawn_true)):
                results[name][1].append(f(N))
        lost += m.stats["events_lost"]
    for name, (without, with_) in results.items():
        a, b = statistics.median(without), statistics.median(with_)
        print(f"{name}: without {a * 1e6:.1f} us, with {b * 1e6:.1f} us per process, "
              f"ratio {a / b:.3f} (runs without {[round(x * 1e6, 1) for x in without]}, "
              f"with {[round(x * 1e6, 1) for x in with_]})")
    print(f"records lost by procflow: {lost}")


if __name__ == "__main__":
    main()
