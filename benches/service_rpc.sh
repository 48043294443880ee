#!/usr/bin/env bash
# Service-binding JS RPC round trip vs a Durable Object RPC round trip, on one dorun
# (issue 23's target: within 1.5x). Sequential calls from one Worker request, median of
# 5 rounds of N calls each. Usage: benches/service_rpc.sh [N]   (DORUN=path to a binary;
# default target/release/dorun). Binds 127.0.0.1 only; the server stops after 120 s.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DORUN="${DORUN:-$HERE/../target/release/dorun}"
N="${1:-2000}"
PORT="$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')"
LOG="$(mktemp)"
"$DORUN" serve "$HERE/service_rpc/a/wrangler.toml" "$HERE/service_rpc/b/wrangler.toml" \
  --ip 127.0.0.1 --port "$PORT" --ephemeral --exit-after 120 >"$LOG" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/?n=1" && break; sleep 0.1; done
for run in 1 2 3; do
  echo "run $run: $(curl -s "http://127.0.0.1:$PORT/?n=$N")"
done
