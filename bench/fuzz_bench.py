#!/usr/bin/env python3
"""How far the fuzz targets get: runs each target of fuzz/ (libFuzzer,
built by scripts/fuzz.sh) for a set time from its seed corpus and prints,
per target, executions, executions per second, the coverage libFuzzer
reports (cov: edges reached, ft: features), the corpus it ended with and
the crashes found. Not a test: prints a table. Each target starts from the
committed seeds only (a fresh work directory), so runs are comparable.

    bench/fuzz_bench.py [--seconds 60] [TARGET...]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "fuzz")
FUZZ_SH = os.path.join(ROOT, "scripts", "fuzz.sh")


def targets():
    out = subprocess.run(["bash", FUZZ_SH, "list"], check=True, capture_output=True, text=True)
    return out.stdout.split()


def binary(target):
    host = subprocess.run(["rustc", "-vV"], check=True, capture_output=True, text=True).stdout
    triple = re.search(r"^host: (\S+)", host, re.M).group(1)
    return os.path.join(FUZZ, "target", triple, "release", target)


def last_status(text):
    """The last libFuzzer status line's cov, ft and corpus size."""
    cov = ft = corp = None
    for m in re.finditer(r"^#\d+\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", text, re.M):
        cov, ft, corp = int(m.group(1)), int(m.group(2)), int(m.group(3))
    return cov, ft, corp


def run(target, seconds):
    work = tempfile.mkdtemp(prefix=f"procflow-fuzz-{target}-")
    artifacts = tempfile.mkdtemp(prefix=f"procflow-fuzz-{target}-crash-")
    seeds = os.path.join(FUZZ, "corpus", target)
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") + ":detect_odr_violation=0").lstrip(":")
    # A crash ends the run (libFuzzer stops at the first); it is counted
    # and its input kept in fuzz/artifacts/TARGET/.
    t0 = time.monotonic()
    p = subprocess.run(
        [binary(target), work, seeds, f"-max_total_time={seconds}", "-timeout=10",
         "-rss_limit_mb=2048", "-max_len=8192", "-print_final_stats=1",
         f"-artifact_prefix={artifacts}/"],
        env=env, capture_output=True, text=True, errors="replace")
    elapsed = time.monotonic() - t0
    text = p.stderr
    m = re.search(r"^stat::number_of_executed_units: (\d+)", text, re.M)
    execs = int(m.group(1)) if m else 0
    cov, ft, corp = last_status(text)
    crashes = [f for f in os.listdir(artifacts)
               if f.startswith(("crash-", "leak-", "timeout-", "oom-"))]
    kept = os.path.join(FUZZ, "artifacts", target)
    if crashes:
        os.makedirs(kept, exist_ok=True)
        for f in crashes:
            shutil.copy(os.path.join(artifacts, f), kept)
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(artifacts, ignore_errors=True)
    return dict(target=target, execs=execs, rate=execs / elapsed, cov=cov, ft=ft,
                corp=corp, seeds=len(os.listdir(seeds)), crashes=len(crashes))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=60, help="time per target (default 60)")
    ap.add_argument("targets", nargs="*", help="targets (default: all)")
    a = ap.parse_args()
    names = a.targets or targets()
    subprocess.run(["bash", FUZZ_SH, "build"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"{a.seconds} s per target, one process, seeds from fuzz/corpus/")
    print(f"{'target':<15} {'execs':>11} {'exec/s':>9} {'cov':>6} {'ft':>7} "
          f"{'seeds':>6} {'corpus':>7} {'crashes':>8}")
    total_crashes = 0
    for t in names:
        r = run(t, a.seconds)
        total_crashes += r["crashes"]
        print(f"{r['target']:<15} {r['execs']:>11,} {r['rate']:>9,.0f} {r['cov'] or 0:>6} "
              f"{r['ft'] or 0:>7} {r['seeds']:>6} {r['corp'] or 0:>7} {r['crashes']:>8}",
              flush=True)
    print(f"crashes: {total_crashes}" + (" (inputs in fuzz/artifacts/)" if total_crashes else ""))
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
