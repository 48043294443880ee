#!/usr/bin/env bash
# dorun vs workerd on the same app, same machine, same run: ../shared/bench's suite against
# each server, then the ratios. The app is ../shared/bench/app (Cloudflare-style code, served
# unmodified by both); the suite is ../shared/bench/suite.sh (wrk + a WebSocket client).
#
#   benches/run.sh                      # wrk -t1 -c16 -d5s per route (suite defaults)
#   DURATION=10s benches/run.sh         # longer runs
#   SKIP_WORKERD=1 benches/run.sh       # dorun only
#   BENCH_DIR=/path/to/bench benches/run.sh
#   DORUN_BIN=/path/to/dorun benches/run.sh   # a prebuilt dorun (e.g. to compare two commits)
#
# Needs: wrk, curl, python3 (the suite's tools); workerd from npm in ~/bench-tools (see
# ../shared/bench/README.md) unless SKIP_WORKERD=1. dorun is built in release mode.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$ROOT/../shared/bench}
[ -f "$BENCH_DIR/suite.sh" ] || { echo "no bench suite at $BENCH_DIR" >&2; exit 2; }

if [[ -n "${DORUN_BIN:-}" ]]; then
  DORUN="$DORUN_BIN"
else
  cargo build --release --bin dorun --manifest-path "$ROOT/Cargo.toml" >&2 || exit 1
  DORUN="$ROOT/target/release/dorun"
fi

TMP=$(mktemp -d /tmp/dorun-bench.XXXXXX)
RESULTS="$TMP/results.tsv"
PID=""
cleanup() {
  if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
    kill "$PID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$PID" 2>/dev/null
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

# dorun on a free loopback port, fresh data directory, bounded lifetime.
"$DORUN" serve "$BENCH_DIR/app/wrangler.toml" --port 0 --ip 127.0.0.1 \
  --data-dir "$TMP/data" --exit-after 600 >"$TMP/dorun.out" 2>"$TMP/dorun.log" &
PID=$!
for _ in $(seq 1 300); do
  ADDRESS=$(sed -n 's/^dorun: listening on //p' "$TMP/dorun.out")
  [ -n "$ADDRESS" ] && break
  sleep 0.1
done
[ -n "${ADDRESS:-}" ] || { echo "dorun did not start:"; cat "$TMP/dorun.log"; exit 1; }

echo "== dorun ($("$DORUN" --version)) at $ADDRESS"
LABEL=dorun RESULTS_TSV="$RESULTS" bash "$BENCH_DIR/suite.sh" "$ADDRESS"
DORUN_STATUS=$?
echo "dorun peak RSS: $(awk '/VmHWM/ {print $2/1024 " MiB"}' /proc/$PID/status)"
kill "$PID"; wait "$PID" 2>/dev/null; PID=""

if [[ "${SKIP_WORKERD:-0}" != 1 ]]; then
  echo "== workerd"
  LABEL=workerd RESULTS_TSV="$RESULTS" bash "$BENCH_DIR/run-workerd.sh"
fi

echo
echo "== side by side"
column -t -s $'\t' "$RESULTS"
python3 - "$RESULTS" <<'PY'
import csv, sys
# suite.sh rows: label, route, requests, req/s, p50, p90, p99, max (ms), errors
data = [r for r in csv.reader(open(sys.argv[1]), delimiter="\t") if len(r) >= 8]
col = {"label": 0, "route": 1, "rps": 3, "p99_ms": 6}
def find(label_prefix, route):
    for r in data:
        if r[col["label"]].startswith(label_prefix) and r[col["route"]] == route:
            return r
    return None
print()
print("ratios (dorun / workerd):")
for route in sorted({r[col["route"]] for r in data}):
    d, w = find("dorun", route), find("workerd", route)
    if not d or not w:
        continue
    try:
        rps = float(d[col["rps"]]) / float(w[col["rps"]])
        p99 = float(d[col["p99_ms"]]) / float(w[col["p99_ms"]])
        print(f"  {route:<22} throughput x{rps:.2f}   p99 x{p99:.2f}")
    except (ValueError, ZeroDivisionError, KeyError):
        print(f"  {route:<22} n/a")
PY
exit $DORUN_STATUS
