#!/usr/bin/env python3
"""Memory per hibernated WebSocket: open N sockets to one EchoRoom object of the bench app,
let the object hibernate (be evicted), and compare the server's resident memory with what
it was before. Then echo once on every socket to show they are all still served.

    python3 benches/ws_memory.py --pid PID --url ws://127.0.0.1:PORT/ws/mem --sockets 5000 --idle 12

PID is the server process (its /proc/PID/status is read). Loopback only; uses the bench
suite's own WebSocket helpers (../shared/bench/tools/wsecho.py).
"""

import argparse
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("BENCH_TOOLS", os.path.join(HERE, "..", "..", "shared", "bench", "tools")))
import wsecho  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--sockets", type=int, default=5000)
    parser.add_argument("--idle", type=float, default=12.0, help="seconds to wait for hibernation")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.sockets + 1024), hard))

    before = rss_kib(args.pid)
    sockets = [wsecho.connect(args.url, 10) for _ in range(args.sockets)]
    live = rss_kib(args.pid)
    time.sleep(args.idle)
    hibernated = rss_kib(args.pid)
    ok = 0
    for i, sock in enumerate(sockets):
        wsecho.send_frame(sock, 0x1, f"m{i}".encode())
    for i, sock in enumerate(sockets):
        opcode, payload = wsecho.recv_frame(sock)
        ok += opcode == 0x1 and payload == f"m{i}".encode()
    for sock in sockets:
        sock.close()
    per_live = (live - before) * 1024 / args.sockets
    per_hibernated = (hibernated - before) * 1024 / args.sockets
    print(
        f"RESULT sockets={args.sockets} rss_before_mib={before / 1024:.1f} "
        f"rss_live_mib={live / 1024:.1f} rss_hibernated_mib={hibernated / 1024:.1f} "
        f"bytes_per_socket_live={per_live:.0f} bytes_per_socket_hibernated={per_hibernated:.0f} "
        f"echoed_after_hibernation={ok}"
    )
    return 0 if ok == args.sockets else 1


if __name__ == "__main__":
    sys.exit(main())
