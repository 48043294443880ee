#!/usr/bin/env python3
"""Time of the admin listener's reset on a data directory holding many objects, alarms and
open WebSockets: fill (N objects, each with a SQLite file and a pending alarm, plus M
hibernatable sockets held open by this script), POST /api/reset, repeat.

    cargo build --release
    python3 benches/reset.py                       # 1,000 objects, 200 sockets, 5 rounds
    python3 benches/reset.py --objects 5000 --rounds 3 --dorun target/release/dorun

Prints per round the wall time of the reset request (client side, loopback) and the time
dorun reports for it, then the median. Serves tests/fixtures/admin (a Store object with
storage, alarms and hibernatable sockets). Loopback only; stdlib only.
"""

import argparse
import base64
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(dorun, data, threads):
    config = os.path.join(ROOT, "tests", "fixtures", "admin", "wrangler.toml")
    proc = subprocess.Popen(
        [dorun, "serve", config, "--port", "0", "--admin-port", "0", "--data-dir", data,
         "--threads", str(threads), "--no-request-log", "--exit-after", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    urls = {}
    for line in proc.stdout:
        if line.startswith("dorun: listening on "):
            urls["base"] = line.split()[-1]
        if line.startswith("dorun: admin on "):
            urls["admin"] = line.split()[-1]
        if len(urls) == 2:
            return proc, urls
    raise SystemExit("dorun did not start")


def hostport(url):
    return url.split("//", 1)[1]


def fill_objects(base, count, workers=4):
    def work(indexes):
        conn = http.client.HTTPConnection(hostport(base), timeout=30)
        for i in indexes:
            conn.request("GET", f"/o/bench{i}/alarm?in=3600000")
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
        conn.close()
    threads = [threading.Thread(target=work, args=(range(w, count, workers),)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def open_socket(base, path):
    """A WebSocket upgrade by hand; the socket stays open until closed by the server."""
    host, port = hostport(base).split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("closed during the upgrade")
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head[:80]
    return sock


def admin_call(admin, method, path):
    conn = http.client.HTTPConnection(hostport(admin), timeout=60)
    started = time.perf_counter()
    conn.request(method, path)
    response = conn.getresponse()
    body = response.read()
    elapsed = (time.perf_counter() - started) * 1000
    conn.close()
    assert response.status == 200, body
    return json.loads(body), elapsed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dorun", default=os.path.join(ROOT, "target", "release", "dorun"))
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--sockets", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    data = tempfile.mkdtemp(prefix="dorun-reset-bench-")
    proc, urls = start(args.dorun, data, args.threads)
    walls, reported = [], []
    try:
        for round_ in range(args.rounds):
            fill_objects(urls["base"], args.objects)
            sockets = [open_socket(urls["base"], f"/o/sock{i % 50}/ws") for i in range(args.sockets)]
            namespaces, _ = admin_call(urls["admin"], "GET", "/api/namespaces")
            stored = namespaces[0]["objects"]
            result, wall = admin_call(urls["admin"], "POST", "/api/reset")
            assert result["alarms"] == args.objects, result
            assert result["sockets"] == args.sockets, result
            assert result["objects"] == stored, (result, stored)
            walls.append(wall)
            reported.append(result["ms"])
            print(f"round {round_ + 1}: {stored} objects ({result['resident']} resident), "
                  f"{result['alarms']} alarms, {result['sockets']} sockets: "
                  f"reset {wall:.1f} ms wall, {result['ms']:.1f} ms in dorun "
                  f"(threads held after {result['heldMs']} ms)")
            for sock in sockets:
                sock.close()
            time.sleep(0.2)
        print(f"median: {statistics.median(walls):.1f} ms wall, "
              f"{statistics.median(reported):.1f} ms in dorun "
              f"(min {min(walls):.1f}, max {max(walls):.1f} ms wall)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
