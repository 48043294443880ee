#!/usr/bin/env python3
"""Startup with a 1 GiB D1 database: spawn `dorun serve` on a Worker whose first request
reads one row of its D1 database, once with a database of one row and once with about
1 GiB (a million 1 KiB rows), and time spawn to first answer. Nothing at startup should
read the database, so both medians should be the same.

    cargo build --release
    python3 benches/d1_startup.py [--dorun target/release/dorun] [--runs 10] [--rows 1000000]

The 1 GiB file is built once (SQLite itself fills it, ~30 s) and kept in
$TMPDIR/dorun-d1-startup-<rows>.sqlite for later runs.
"""

import argparse
import http.client
import os
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """name = "d1-startup"
main = "worker.js"
compatibility_date = "2025-10-01"

[[d1_databases]]
binding = "DB"
database_name = "big"
database_id = "00000000-0000-0000-0000-0000000000b1"
"""

WORKER = """export default {
  async fetch(request, env) {
    const row = await env.DB.prepare("SELECT id, length(v) AS n FROM t WHERE id = ?").bind(1).first();
    return Response.json(row);
  },
};
"""


def database(rows):
    path = os.path.join(tempfile.gettempdir(), f"dorun-d1-startup-{rows}.sqlite")
    if os.path.exists(path):
        return path
    partial = path + ".partial"
    if os.path.exists(partial):
        os.remove(partial)
    conn = sqlite3.connect(partial)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    conn.execute(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
        "INSERT INTO t SELECT x, randomblob(1024) FROM c", (rows,))
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    os.rename(partial, path)
    return path


def one(dorun, app, data):
    started = time.perf_counter()
    proc = subprocess.Popen(
        [dorun, "serve", os.path.join(app, "wrangler.toml"), "--port", "0", "--data-dir", data,
         "--no-request-log", "--exit-after", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("dorun: listening on "):
                host = line.split("//", 1)[1].strip()
                break
        else:
            raise SystemExit("dorun did not start")
        conn = http.client.HTTPConnection(host, timeout=30)
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read()
        answered = time.perf_counter()
        if response.status != 200 or b'"n":1024' not in body:
            raise SystemExit(f"unexpected answer {response.status}: {body[:200]!r}")
        return (answered - started) * 1000
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dorun", default=os.path.join(ROOT, "target", "release", "dorun"))
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="dorun-d1-startup-")
    try:
        app = os.path.join(work, "app")
        os.makedirs(app)
        with open(os.path.join(app, "wrangler.toml"), "w") as f:
            f.write(CONFIG)
        with open(os.path.join(app, "worker.js"), "w") as f:
            f.write(WORKER)
        medians = {}
        for label, rows in (("1 row", 1), (f"{args.rows} rows", args.rows)):
            source = database(rows)
            size = os.path.getsize(source)
            data = os.path.join(work, f"data-{rows}")
            os.makedirs(os.path.join(data, "d1"))
            target = os.path.join(data, "d1", "big.sqlite")
            # A hard link where possible: the 1 GiB file is not copied for each run.
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
            times = [one(args.dorun, app, data) for _ in range(args.runs)]
            medians[label] = statistics.median(times)
            print(f"{label} ({size / 1048576:.0f} MiB): first response after "
                  f"median {medians[label]:.0f} ms (min {min(times):.0f}, max {max(times):.0f})")
        small, big = medians.values()
        print(f"ratio big/small: {big / small:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
