#!/usr/bin/env python3
"""Startup to first answered request: spawn `dorun serve` (a small Worker), wait for its
listening line, GET / until it answers; repeat. Prints each run and the median.

    cargo build --release
    python3 benches/startup.py [--dorun target/release/dorun] [--runs 10] [--config examples/hello/wrangler.toml]
"""

import argparse
import http.client
import os
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one(dorun, config, threads):
    data = tempfile.mkdtemp(prefix="dorun-startup-")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [dorun, "serve", config, "--port", "0", "--data-dir", data, "--threads", str(threads),
         "--no-request-log", "--exit-after", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("dorun: listening on "):
                host = line.split("//", 1)[1].strip()
                break
        else:
            raise SystemExit("dorun did not start")
        listening = time.perf_counter()
        conn = http.client.HTTPConnection(host, timeout=10)
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        answered = time.perf_counter()
        return (listening - started) * 1000, (answered - started) * 1000, response.status
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dorun", default=os.path.join(ROOT, "target", "release", "dorun"))
    parser.add_argument("--config", default=os.path.join(ROOT, "examples", "hello", "wrangler.toml"))
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    firsts = []
    for run in range(args.runs):
        listening, answered, status = one(args.dorun, args.config, args.threads)
        firsts.append(answered)
        print(f"run {run + 1}: listening after {listening:.0f} ms, first response ({status}) after {answered:.0f} ms")
    print(f"median: first response {statistics.median(firsts):.0f} ms after spawn "
          f"(min {min(firsts):.0f}, max {max(firsts):.0f})")


if __name__ == "__main__":
    main()
