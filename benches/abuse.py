#!/usr/bin/env python3
"""Crash and abuse campaign against a release (or debug) dorun: not run in CI.

    cargo build --release && python3 benches/abuse.py [--bin target/release/dorun] [--cycles 20]

Serves tests/fixtures/hostile (one Worker, one SQLite Durable Object class, a route per way
code or clients can misbehave) on 127.0.0.1 and prints one line per probe:

- kill -9 under write load: N cycles of 16 writers; every acknowledged write must be there
  after the restart, and every SQLite file must pass `PRAGMA integrity_check`;
- never-ending SQL: how long a thread stays busy, and whether /hello answers meanwhile;
- slowloris, silent connections and descriptor exhaustion: whether a real client is served;
- memory outside the heap: ArrayBuffers and Wasm memories against --memory-limit-mb (peak RSS).

Figures go in the README's reliability section.
"""

import argparse
import concurrent.futures
import glob
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "fixtures", "hostile", "wrangler.toml")


class Dorun:
    def __init__(self, binary, data_dir, *args):
        self.process = subprocess.Popen(
            [binary, "serve", CONFIG, "--port", "0", "--ip", "127.0.0.1",
             "--data-dir", data_dir, "--exit-after", "900", *args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.process.stdout:
            if line.startswith("dorun: listening on "):
                self.base = line.split("listening on ", 1)[1].strip()
                break
        else:
            raise SystemExit("dorun did not start")
        threading.Thread(target=self.process.stdout.read, daemon=True).start()
        self.port = int(self.base.rsplit(":", 1)[1])

    def get(self, path, timeout=30):
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def peak_rss_mb(self):
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
        return 0

    def kill9(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()


def kill9_campaign(binary, cycles, writers):
    data = tempfile.mkdtemp(prefix="dorun-abuse-")
    acked = {}  # object name -> set of acknowledged values
    lock = threading.Lock()
    counter = iter(range(10**9))
    for cycle in range(cycles):
        server = Dorun(binary, data, "--threads", "2")
        stop = time.time() + 1.5

        def write(worker):
            name = f"w{worker}"
            while time.time() < stop:
                with lock:
                    value = next(counter)
                try:
                    status, text = server.get(f"/obj/{name}/write?v={value}", timeout=5)
                except Exception:
                    return
                if status == 200 and text == str(value):
                    with lock:
                        acked.setdefault(name, set()).add(value)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for thread in threads:
            thread.start()
        time.sleep(1.0 + (cycle % 5) * 0.1)
        server.kill9()
        for thread in threads:
            thread.join()
    server = Dorun(binary, data, "--threads", "2")
    lost = 0
    for name, values in acked.items():
        status, text = server.get(f"/obj/{name}/values")
        stored = set(eval(text)) if status == 200 else set()
        lost += len(values - stored)
    server.stop()
    corrupt = 0
    files = glob.glob(os.path.join(data, "**", "*.sqlite"), recursive=True)
    for path in files:
        connection = sqlite3.connect(path)
        if connection.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            corrupt += 1
        connection.close()
    shutil.rmtree(data, ignore_errors=True)
    total = sum(len(v) for v in acked.values())
    print(f"kill -9 x {cycles} under {writers} writers: {total} acknowledged writes, "
          f"{lost} lost; {len(files)} SQLite files, {corrupt} corrupt")


def never_ending_sql(binary):
    data = tempfile.mkdtemp(prefix="dorun-abuse-")
    server = Dorun(binary, data, "--threads", "2", "--cpu-limit-ms", "2000")
    started = time.time()
    results = {}

    def forever():
        results["sql"] = server.get("/obj/a/sql-forever", timeout=60)

    thread = threading.Thread(target=forever)
    thread.start()
    time.sleep(0.2)
    hello = [server.get("/hello", timeout=60)[0] for _ in range(200)]
    thread.join()
    busy = time.time() - started
    server.stop()
    shutil.rmtree(data, ignore_errors=True)
    print(f"never-ending SQL (limit 2 s): answered {results['sql'][0]} after {busy:.1f} s; "
          f"{hello.count(200)}/200 /hello answered meanwhile")


def connections(binary, count):
    data = tempfile.mkdtemp(prefix="dorun-abuse-")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = Dorun(binary, data, "--header-timeout", "5")
    held = []
    for index in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            if index % 2:
                s.send(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # slowloris
            held.append(s)
        except OSError:
            break
    ok = sum(server.get("/hello", timeout=10)[0] == 200 for _ in range(50))
    time.sleep(6)
    open_after = 0
    for s in held:
        s.setblocking(False)
        try:
            if s.recv(1) != b"":
                open_after += 1
        except BlockingIOError:
            open_after += 1
        except OSError:
            pass
        s.close()
    server.stop()
    shutil.rmtree(data, ignore_errors=True)
    print(f"{len(held)} idle/slowloris connections: {ok}/50 real requests served; "
          f"{open_after} still open after the 5 s header timeout")


def memory(binary):
    data = tempfile.mkdtemp(prefix="dorun-abuse-")
    limit = 512
    server = Dorun(binary, data, "--threads", "2", "--heap-limit-mb", "128",
                   "--memory-limit-mb", str(limit))
    probes = [
        ("8 x 256 MB ArrayBuffers", "/array-buffers?n=8&mb=256"),
        ("2 x 1 GB WebAssembly.Memory", "/wasm-memory?n=2&pages=16384"),
        ("40 SQL rows of 50 MB", "/obj/m/sql?q=" + urllib.request.quote(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 40) "
            "SELECT randomblob(50000000) FROM c")),
    ]
    for label, path in probes:
        status, text = server.get(path)
        print(f"memory: {label}: {status} {text[:70]!r}; peak RSS {server.peak_rss_mb()} MB "
              f"(--memory-limit-mb {limit})")
    server.stop()
    shutil.rmtree(data, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "dorun"))
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    if not os.path.exists(args.bin):
        sys.exit(f"no dorun binary at {args.bin}: cargo build --release, or pass --bin")
    never_ending_sql(args.bin)
    memory(args.bin)
    connections(args.bin, args.connections)
    kill9_campaign(args.bin, args.cycles, args.writers)


if __name__ == "__main__":
    main()
