#!/usr/bin/env bash
# dorun vs workerd across many objects, same app, same machine, same run: single-object
# routes, the same routes spread over 1,000 objects, cold and warm reads over 2,000 objects,
# RSS after touching 10,000 objects, boot with those objects on disk, WebSocket echo (4 and
# 64 sockets, ping-pong and pipelined). Prints each figure and the dorun/workerd ratio.
#
#   benches/scale.sh                  # wrk -t1 -c16 -d5s per load
#   DURATION=10s benches/scale.sh
#   SKIP_WORKERD=1 benches/scale.sh
#   DORUN_BIN=/path/to/dorun BENCH_CLIENT=/path/to/dorun-bench benches/scale.sh
#
# Needs wrk, curl, python3, workerd from npm in ~/bench-tools (../shared/bench/README.md).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$ROOT/../shared/bench}
WORKERD=${WORKERD:-${HOME}/bench-tools/node_modules/.bin/workerd}
DURATION=${DURATION:-5s}
[ -f "$BENCH_DIR/app/wrangler.toml" ] || { echo "no bench app at $BENCH_DIR" >&2; exit 2; }

if [[ -z "${DORUN_BIN:-}" || -z "${BENCH_CLIENT:-}" ]]; then
  cargo build --release -p dorun -p dorun-bench --manifest-path "$ROOT/Cargo.toml" >&2 || exit 1
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
DORUN=${DORUN_BIN:-$TARGET/release/dorun}
CLIENT=${BENCH_CLIENT:-$TARGET/release/dorun-bench}

TMP=$(mktemp -d /tmp/dorun-scale.XXXXXX)
RESULTS="$TMP/results.tsv"
PID=""
stop() {
  if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
    kill "$PID" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$PID" 2>/dev/null
    wait "$PID" 2>/dev/null
  fi
  PID=""
}
trap 'stop; rm -rf "$TMP"' EXIT

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# start <label> <state-dir>: starts the server, sets PID, BASE and BOOT_MS (spawn to /hello).
start() {
  local t0; t0=$(now_ms)
  BASE=""
  if [[ $1 == dorun ]]; then
    "$DORUN" serve "$BENCH_DIR/app/wrangler.toml" --port 0 --ip 127.0.0.1 --data-dir "$2" \
      --exit-after 900 >"$TMP/server.out" 2>>"$TMP/server.log" &
    PID=$!
  else
    mkdir -p "$2"
    (cd "$BENCH_DIR/workerd" && exec "$WORKERD" serve config.capnp --socket-addr http=127.0.0.1:0 \
      --directory-path "do-storage=$2" --control-fd 3 3>"$TMP/control.jsonl" \
      >"$TMP/server.out" 2>>"$TMP/server.log") &
    PID=$!
  fi
  for _ in $(seq 1 3000); do
    if [[ -z "$BASE" ]]; then
      if [[ $1 == dorun ]]; then
        BASE=$(sed -n 's/^dorun: listening on //p' "$TMP/server.out")
      else
        local port
        port=$(sed -nE 's/.*"event":"listen","socket":"http","port":([0-9]+).*/\1/p' "$TMP/control.jsonl" 2>/dev/null | head -1)
        [[ -n "$port" ]] && BASE="http://127.0.0.1:$port"
      fi
    fi
    if [[ -n "$BASE" ]] && [[ "$(curl -s --max-time 2 "$BASE/hello")" == ok ]]; then
      BOOT_MS=$(( $(now_ms) - t0 ))
      return 0
    fi
    sleep 0.01
  done
  echo "$1 did not start:" >&2; cat "$TMP/server.log" >&2; exit 1
}

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }
field() { sed -nE "s/.*[ ]$1=([0-9.]+).*/\\1/p" | head -1; }

# load <label> <name> <method> <template> <objects>
load() {
  local out
  out=$(WRK_METHOD=$3 WRK_TEMPLATE=$4 WRK_OBJECTS=$5 wrk -t1 -c16 -d"$DURATION" \
    -s "$ROOT/benches/scale.lua" "$BASE" 2>&1 | grep '^RESULT')
  record "$1" "$2 req/s" "$(echo " $out" | field rps)"
  record "$1" "$2 p99 ms" "$(echo " $out" | field p99_ms)"
  local errors; errors=$(echo " $out" | field errors)
  [[ "${errors:-0}" == 0 ]] || echo "  $1 $2: $errors errors" >&2
}

suite() {
  local label=$1 state="$TMP/state-$1"
  rm -rf "$state"
  start "$label" "$state"
  echo "== $label at $BASE (load avg $(cut -d' ' -f1-3 /proc/loadavg))"
  load "$label" "GET /hello" GET /hello 1
  load "$label" "POST /kv/x/incr, 1 object" POST /kv/x/incr 1
  load "$label" "POST /sql/x/insert, 1 object" POST /sql/x/insert 1
  # The 1,000 objects exist before they are measured (created by a first pass).
  "$CLIENT" touch "$BASE" '/kv/o{}/incr' 1001 16 >/dev/null || exit 1
  "$CLIENT" touch "$BASE" '/sql/o{}/insert' 1001 16 >/dev/null || exit 1
  load "$label" "POST /kv/o{N}/incr, 1,000 objects" POST '/kv/o{}/incr' 1000
  load "$label" "POST /sql/o{N}/insert, 1,000 objects" POST '/sql/o{}/insert' 1000
  # /hello on 4 connections, alone and while the 1,000-object write load runs on 16 others.
  local hello
  hello=$(WRK_TEMPLATE=/hello wrk -t1 -c4 -d2s -s "$ROOT/benches/scale.lua" "$BASE" | grep '^RESULT')
  record "$label" "GET /hello, 4 connections, alone p99 ms" "$(echo " $hello" | field p99_ms)"
  WRK_METHOD=POST WRK_TEMPLATE='/kv/o{}/incr' WRK_OBJECTS=1000 wrk -t1 -c16 -d3s \
    -s "$ROOT/benches/scale.lua" "$BASE" >/dev/null 2>&1 &
  local writes=$!
  sleep 0.5
  hello=$(WRK_TEMPLATE=/hello wrk -t1 -c4 -d2s -s "$ROOT/benches/scale.lua" "$BASE" | grep '^RESULT')
  wait "$writes"
  record "$label" "GET /hello, 4 connections, under write load p99 ms" "$(echo " $hello" | field p99_ms)"
  local ws=${BASE/http:/ws:}
  # Each load runs about a second or more (at 0.3 s, one hiccup of either server decided
  # the figure).
  for spec in "4 10000 pingpong" "64 1000 pingpong" "4 25000 pipelined" "64 2500 pipelined"; do
    set -- $spec
    local out; out=$("$CLIENT" ws "$ws/ws/echo-$1-$3" "$1" "$2" "$3")
    record "$label" "WS echo $1 x $2 $3 msg/s" "$(echo " $out" | field msgs_per_s)"
    record "$label" "WS echo $1 x $2 $3 p99 ms" "$(echo " $out" | field p99_ms)"
  done
  "$CLIENT" touch "$BASE" '/kv/a{}/incr' 2000 16 >/dev/null || exit 1
  "$CLIENT" touch "$BASE" '/kv/t{}/incr' 10000 16 >/dev/null || exit 1
  record "$label" "RSS after touching 10,000 objects MiB" \
    "$(awk '/VmRSS/ {printf "%.0f", $2/1024}' /proc/$PID/status)"
  stop
  # Restart on the same state: 12,000 objects on disk, none resident.
  start "$label" "$state"
  record "$label" "boot with 12,000 objects on disk ms" "$BOOT_MS"
  local out
  out=$("$CLIENT" reads "$BASE" '/kv/a{}/get' 2000)
  record "$label" "GET /kv/a{N}/get, 2,000 objects, cold p50 ms" "$(echo " $out" | field p50_ms)"
  record "$label" "GET /kv/a{N}/get, 2,000 objects, cold p99 ms" "$(echo " $out" | field p99_ms)"
  out=$("$CLIENT" reads "$BASE" '/kv/a{}/get' 2000)
  record "$label" "GET /kv/a{N}/get, 2,000 objects, warm p50 ms" "$(echo " $out" | field p50_ms)"
  record "$label" "GET /kv/a{N}/get, 2,000 objects, warm p99 ms" "$(echo " $out" | field p99_ms)"
  stop
}

echo "dorun $("$DORUN" --version), wrk -t1 -c16 -d$DURATION, $(nproc) cpus"
suite dorun
[[ "${SKIP_WORKERD:-0}" == 1 ]] || suite workerd

python3 - "$RESULTS" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter="\t"))
metrics, values = [], {}
for label, metric, value in rows:
    if metric not in metrics:
        metrics.append(metric)
    values[(label, metric)] = value
print()
print(f"{'':58} {'dorun':>10} {'workerd':>10} {'ratio':>8}")
for m in metrics:
    d, w = values.get(("dorun", m), ""), values.get(("workerd", m), "")
    ratio = ""
    try:
        ratio = f"{float(d) / float(w):.2f}x"
    except (ValueError, ZeroDivisionError):
        pass
    print(f"{m:58} {d:>10} {w:>10} {ratio:>8}")
print("(ratio = dorun / workerd: above 1 is better for req/s and msg/s, below 1 for ms and MiB)")
PY
