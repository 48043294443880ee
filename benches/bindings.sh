#!/usr/bin/env bash
# dorun vs `wrangler dev` (workerd + Miniflare) on the KV, D1 and R2 bindings, same Worker
# (benches/bindings/, served unmodified by both), same machine, same run: wrk on one route per
# binding operation, each server in turn, then the ratios. Then, dorun only, the RSS of a
# 1 GiB R2 object streamed through the Worker (PUT from a file, GET to /dev/null) against the
# RSS when idle.
#
#   benches/bindings.sh                         # wrk -t1 -c16 -d5s per route
#   DURATION=10s CONNECTIONS=32 benches/bindings.sh
#   SKIP_WRANGLER=1 benches/bindings.sh         # dorun only
#   SKIP_BIG=1 benches/bindings.sh              # no 1 GiB R2 object
#   BIG_MIB=256 BIG_ROUNDS=1 benches/bindings.sh
#   DORUN_BIN=/path/to/dorun WRANGLER=/path/to/wrangler benches/bindings.sh
#
# Needs wrk, curl, python3; wrangler 4.86.0 (`npm i --prefix /tmp/wr wrangler@4.86.0`, the
# default WRANGLER) unless SKIP_WRANGLER=1. Both servers listen on 127.0.0.1 only, are bounded
# in time (dorun --exit-after, wrangler under `timeout`) and are stopped on exit. wrangler
# runs on a copy of the app in a temporary directory (its .wrangler/ scratch files stay out of
# the repository), with metrics off and no network needed (it falls back to a placeholder
# request.cf). dorun runs with its defaults (--durability full); neither logs each request.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
APP="$ROOT/benches/bindings"
DURATION=${DURATION:-5s}
THREADS=${THREADS:-1}
CONNECTIONS=${CONNECTIONS:-16}
WRANGLER=${WRANGLER:-/tmp/wr/node_modules/.bin/wrangler}
BIG_MIB=${BIG_MIB:-1024}
BIG_ROUNDS=${BIG_ROUNDS:-2}
command -v wrk >/dev/null || { echo "wrk not found (Debian: apt-get install wrk)" >&2; exit 2; }
if [[ "${SKIP_WRANGLER:-0}" != 1 && ! -x "$WRANGLER" ]]; then
  echo "no wrangler at $WRANGLER (npm i --prefix /tmp/wr wrangler@4.86.0, or SKIP_WRANGLER=1)" >&2
  exit 2
fi

if [[ -n "${DORUN_BIN:-}" ]]; then
  DORUN="$DORUN_BIN"
else
  cargo build --release --bin dorun --manifest-path "$ROOT/Cargo.toml" >&2 || exit 1
  DORUN="${CARGO_TARGET_DIR:-$ROOT/target}/release/dorun"
fi

TMP=$(mktemp -d /tmp/dorun-bindings.XXXXXX)
RESULTS="$TMP/results.tsv"
PID=""
GROUP=0   # 1: PID leads a process group (wrangler: node + workerd), stopped as a group
stop() {
  if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
    if [[ $GROUP == 1 ]]; then kill -- "-$PID" 2>/dev/null; else kill "$PID" 2>/dev/null; fi
    for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    if [[ $GROUP == 1 ]]; then kill -9 -- "-$PID" 2>/dev/null; else kill -9 "$PID" 2>/dev/null; fi
    wait "$PID" 2>/dev/null
  fi
  PID=""
}
trap 'stop; rm -rf "$TMP"' EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start <label>: a server on a fresh state directory; sets PID, GROUP and BASE.
start() {
  local state="$TMP/state-$1" port
  rm -rf "$state"
  port=$(free_port)
  BASE="http://127.0.0.1:$port"
  if [[ $1 == dorun ]]; then
    GROUP=0
    "$DORUN" serve "$APP/wrangler.toml" --port "$port" --ip 127.0.0.1 --data-dir "$state" \
      --no-request-log --exit-after 900 >"$TMP/$1.out" 2>>"$TMP/$1.log" &
    PID=$!
  else
    GROUP=1
    rm -rf "$TMP/wrangler-app"
    mkdir -p "$TMP/wrangler-app"
    cp "$APP/wrangler.toml" "$APP/worker.js" "$TMP/wrangler-app/"
    local inspector; inspector=$(free_port)
    ( cd "$TMP/wrangler-app" && WRANGLER_SEND_METRICS=false CI=1 exec setsid timeout 900 \
        "$WRANGLER" dev --config wrangler.toml --ip 127.0.0.1 --port "$port" \
        --inspector-ip 127.0.0.1 --inspector-port "$inspector" --persist-to "$state" \
        --show-interactive-dev-session=false --log-level warn \
        >"$TMP/$1.out" 2>>"$TMP/$1.log" ) &
    PID=$!
  fi
  for _ in $(seq 1 1200); do
    [[ "$(curl -s --max-time 2 "$BASE/")" == ok ]] && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "$1 did not start:" >&2; cat "$TMP/$1.out" "$TMP/$1.log" >&2; exit 1
}

# The server's error and warning lines, less wrangler's offline request.cf fallback.
log_errors() {
  cat "$TMP/$1.out" "$TMP/$1.log" 2>/dev/null | grep -iE 'error|panic|warn' \
    | grep -vE 'Request\.cf|ENOTFOUND|getaddrinfo|GetAddrInfo|callbackTrampoline'
}

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }
field() { sed -nE "s/.*[ ]$1=([0-9.]+).*/\\1/p" | head -1; }

# RSS in MiB of the server: dorun's process, or the whole wrangler group (node + workerd).
rss_mib() {
  if [[ $GROUP == 1 ]]; then
    ps -o rss= -s "$PID" | awk '{s += $1} END {printf "%.0f", s / 1024}'
  else
    awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$PID/status"
  fi
}

# Data the loads read: 1,000 D1 rows and KV keys (/init in chunks of 100), 64 R2 objects of
# 4 KiB and 16 of 1 MiB.
preload() {
  local from
  for from in $(seq 0 100 900); do
    curl -sS --fail --max-time 60 -X POST "$BASE/init?from=$from&n=100" >/dev/null \
      || { echo "$1: POST /init failed" >&2; exit 1; }
  done
  local i
  for i in $(seq 0 63); do
    curl -sS --fail --max-time 60 -H 'Expect:' -T "$TMP/f4k" "$BASE/r2/put/g4k-$i" >/dev/null || exit 1
  done
  for i in $(seq 0 15); do
    curl -sS --fail --max-time 60 -H 'Expect:' -T "$TMP/f1m" "$BASE/r2/put/g1m-$i" >/dev/null || exit 1
  done
}

# The same requests to each server, answers written down (status, body or its md5, R2 etag)
# and compared at the end.
answers() {
  local out="$TMP/answers-$1"
  ask() { # <method> <path> [file to upload]
    local args=(-s -o "$TMP/body" -D "$TMP/head" -w '%{http_code}' -X "$1" -H 'Expect:')
    [[ -n "${3:-}" ]] && args+=(--data-binary "@$3")
    local code; code=$(curl "${args[@]}" "$BASE$2")
    local body
    if [[ $2 == /r2/get/* && $code == 200 ]] || [[ $(wc -c <"$TMP/body") -gt 300 ]]; then
      body="$(wc -c <"$TMP/body") bytes, md5 $(md5sum <"$TMP/body" | cut -d' ' -f1)"
    else
      body=$(cat "$TMP/body")
    fi
    local etag; etag=$(sed -n 's/^[Ee][Tt][Aa][Gg]: *//p' "$TMP/head" | tr -d '\r')
    echo "$1 $2 -> $code ${etag:+etag $etag }$body" >>"$out"
  }
  printf 'some value' >"$TMP/small"
  ask GET '/kv/get?k=k5'
  ask GET '/kv/get?k=absent'
  ask PUT '/kv/put?k=answer' "$TMP/small"
  ask GET '/kv/get?k=answer'
  ask GET '/d1/first?id=7'
  ask GET '/d1/first?id=100000'
  ask POST '/d1/insert'
  ask PUT '/r2/put/answer' "$TMP/f4k"
  ask GET '/r2/get/answer'
  ask GET '/r2/get/g1m-3'
  ask GET '/r2/get/absent'
  ask GET '/nowhere'
}

# load <label> <route> <method> <template> <keys> <body bytes>
load() {
  local out
  out=$(WRK_METHOD=$3 WRK_TEMPLATE=$4 WRK_KEYS=$5 WRK_BODY_BYTES=$6 wrk -t"$THREADS" \
    -c"$CONNECTIONS" -d"$DURATION" --timeout 10s -s "$ROOT/benches/bindings.lua" "$BASE" 2>&1)
  local result; result=$(echo "$out" | grep '^RESULT')
  [[ -n "$result" ]] || { echo "  $1 $2: wrk failed: $out" >&2; return; }
  record "$1" "$2 req/s" "$(echo " $result" | field rps)"
  record "$1" "$2 p99 ms" "$(echo " $result" | field p99_ms)"
  local bad errors
  bad=$(echo " $result" | field non2xx); errors=$(echo " $result" | field errors)
  if [[ "$bad" != 0 || "$errors" != 0 ]]; then
    echo "  $1 $2: $bad non-2xx answers, $errors socket errors (of $(echo " $result" | field requests))" >&2
  fi
}

suite() {
  local label=$1
  start "$label"
  preload "$label"
  answers "$label"
  echo "== $label at $BASE (load avg $(cut -d' ' -f1-3 /proc/loadavg))"
  load "$label" "KV get" GET '/kv/get?k=k{}' 1000 0
  load "$label" "KV put (100 B)" PUT '/kv/put?k=p{}' 1000 100
  load "$label" "D1 first()" GET '/d1/first?id={}' 1000 0
  load "$label" "D1 run() insert" POST /d1/insert 1 0
  load "$label" "R2 put 4 KiB" PUT '/r2/put/p4k-{}' 64 4096
  load "$label" "R2 get 4 KiB" GET '/r2/get/g4k-{}' 64 0
  load "$label" "R2 put 1 MiB" PUT '/r2/put/p1m-{}' 16 1048576
  load "$label" "R2 get 1 MiB" GET '/r2/get/g1m-{}' 16 0
  record "$label" "RSS after the loads MiB" "$(rss_mib)"
  echo "   done (load avg $(cut -d' ' -f1-3 /proc/loadavg)); error/warning lines logged: $(log_errors "$label" | wc -l)"
  log_errors "$label" | cut -c1-200 | sort | uniq -c | sort -rn | head -5 | sed 's/^/   /'
  stop
}

# Peak VmRSS of PID while a command runs, sampled every 5 ms: peak <out> <command...>
peak() {
  local out=$1; shift
  python3 - "$PID" "$TMP/sampling" "$out" <<'PY' &
import os, sys, time
pid, flag, out = sys.argv[1:]
peak = 0
open(flag, "w").close()
while os.path.exists(flag):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                peak = max(peak, int(line.split()[1]))
    except OSError:
        break
    time.sleep(0.005)
open(out, "w").write(f"{peak / 1024:.1f}")
PY
  local sampler=$!
  for _ in $(seq 1 100); do [[ -e "$TMP/sampling" ]] && break; sleep 0.01; done
  "$@"
  local status=$?
  rm -f "$TMP/sampling"
  wait "$sampler"
  return $status
}

vm() { awk -v k="^$1:" '$0 ~ k {printf "%.1f", $2 / 1024}' "/proc/$PID/status"; }

big_object() {
  echo
  echo "== dorun, one ${BIG_MIB} MiB R2 object through the Worker, $BIG_ROUNDS round(s)"
  truncate -s "${BIG_MIB}M" "$TMP/big"   # sparse: read from the page cache, no disk
  start dorun
  # Idle: after the Worker, KV, D1 and R2 have each served a request.
  for _ in $(seq 1 20); do curl -s "$BASE/" >/dev/null; done
  curl -s -X POST "$BASE/init?from=0&n=10" >/dev/null
  curl -s "$BASE/kv/get?k=k1" >/dev/null
  curl -s -H 'Expect:' -T "$TMP/f4k" "$BASE/r2/put/warm" >/dev/null
  curl -s "$BASE/r2/get/warm" >/dev/null
  sleep 2
  local idle; idle=$(vm VmRSS)
  echo "   idle RSS $idle MiB (load avg $(cut -d' ' -f1-3 /proc/loadavg))"
  local round t0 t1 res
  for round in $(seq 1 "$BIG_ROUNDS"); do
    t0=$(date +%s.%N)
    peak "$TMP/peak-put" curl -sS --max-time 600 -H 'Expect:' -T "$TMP/big" \
      "$BASE/r2/put/big" -o "$TMP/put.json" || echo "   PUT failed" >&2
    t1=$(date +%s.%N)
    local put_s; put_s=$(echo "$t1 - $t0" | bc)
    echo "   round $round PUT: $(cat "$TMP/put.json")"
    t0=$(date +%s.%N)
    peak "$TMP/peak-get" curl -sS --max-time 600 -o /dev/null -w '%{http_code} %{size_download}' \
      "$BASE/r2/get/big" >"$TMP/get.txt" || echo "   GET failed" >&2
    t1=$(date +%s.%N)
    local get_s; get_s=$(echo "$t1 - $t0" | bc)
    read -r code size <"$TMP/get.txt"
    local put_peak get_peak
    put_peak=$(cat "$TMP/peak-put"); get_peak=$(cat "$TMP/peak-get")
    printf '   round %s: PUT %.1f s (%.0f MiB/s), peak RSS %s MiB (+%.1f); GET %s, %s bytes, %.1f s (%.0f MiB/s), peak RSS %s MiB (+%.1f)\n' \
      "$round" "$put_s" "$(echo "$BIG_MIB / $put_s" | bc -l)" "$put_peak" "$(echo "$put_peak - $idle" | bc)" \
      "$code" "$size" "$get_s" "$(echo "$BIG_MIB / $get_s" | bc -l)" "$get_peak" "$(echo "$get_peak - $idle" | bc)"
    [[ "$size" == $((BIG_MIB * 1024 * 1024)) ]] || echo "   GET returned $size bytes, expected $((BIG_MIB * 1024 * 1024))" >&2
    record dorun "R2 ${BIG_MIB} MiB round $round: PUT peak RSS over idle MiB" "$(echo "$put_peak - $idle" | bc)"
    record dorun "R2 ${BIG_MIB} MiB round $round: GET peak RSS over idle MiB" "$(echo "$get_peak - $idle" | bc)"
  done
  sleep 2
  echo "   RSS 2 s after: $(vm VmRSS) MiB, VmHWM $(vm VmHWM) MiB, idle was $idle MiB"
  local worst; worst=$(awk -F'\t' '/peak RSS over idle/ {if ($3 > m) m = $3} END {print m + 0}' "$RESULTS")
  if awk -v w="$worst" 'BEGIN {exit !(w <= 64)}'; then
    echo "   target (peak within 64 MiB of idle): met, worst +$worst MiB"
  else
    echo "   target (peak within 64 MiB of idle): NOT met, worst +$worst MiB"
  fi
  stop
}

# Upload bodies, the same bytes for both servers.
python3 -c '
import random, sys
r = random.Random(22)
open(sys.argv[1], "wb").write(r.randbytes(4096))
open(sys.argv[2], "wb").write(r.randbytes(1 << 20))' "$TMP/f4k" "$TMP/f1m"

echo "dorun $("$DORUN" --version), wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $(nproc) cpus, load avg $(cut -d' ' -f1-3 /proc/loadavg)"
suite dorun
if [[ "${SKIP_WRANGLER:-0}" != 1 ]]; then
  echo "wrangler $(WRANGLER_SEND_METRICS=false "$WRANGLER" --version 2>/dev/null | tail -n1)"
  suite wrangler
fi

python3 - "$RESULTS" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter="\t"))
values = {(label, metric): value for label, metric, value in rows}
routes = []
for _, metric, _ in rows:
    if metric.endswith(" req/s") and metric[:-6] not in routes:
        routes.append(metric[:-6])
def num(label, metric):
    try:
        return float(values[(label, metric)])
    except (KeyError, ValueError):
        return None
print()
print(f"{'route':18} {'dorun req/s':>12} {'wrangler req/s':>15} {'ratio':>7} {'dorun p99 ms':>13} {'wrangler p99 ms':>16} {'p99 ratio':>10}  target (>= 5x, p99 <=)")
for r in routes:
    dr, wr = num("dorun", r + " req/s"), num("wrangler", r + " req/s")
    dp, wp = num("dorun", r + " p99 ms"), num("wrangler", r + " p99 ms")
    f = lambda v, fmt: (fmt % v) if v is not None else "-"
    ratio = dr / wr if dr and wr else None
    pratio = dp / wp if dp is not None and wp else None
    verdict = ""
    if ratio is not None and pratio is not None:
        verdict = "met" if ratio >= 5 and dp <= wp else "NOT met (" + ", ".join(
            x for x in [f"{ratio:.2f}x" if ratio < 5 else "", "p99 above" if dp > wp else ""] if x) + ")"
    print(f"{r:18} {f(dr, '%.0f'):>12} {f(wr, '%.0f'):>15} {f(ratio, '%.2fx'):>7} {f(dp, '%.2f'):>13} "
          f"{f(wp, '%.2f'):>16} {f(pratio, '%.2fx'):>10}  {verdict}")
d, w = values.get(("dorun", "RSS after the loads MiB"), "-"), values.get(("wrangler", "RSS after the loads MiB"), "-")
print(f"{'RSS after the loads, MiB (wrangler: node + workerd)':52} dorun {d}, wrangler {w}")
PY

if [[ -f "$TMP/answers-wrangler" ]]; then
  echo
  if diff -u "$TMP/answers-wrangler" "$TMP/answers-dorun" >"$TMP/answers.diff"; then
    echo "answers: the same from both servers ($(wc -l <"$TMP/answers-dorun") requests)"
  else
    echo "answers differ (- wrangler, + dorun):"
    tail -n +3 "$TMP/answers.diff"
  fi
fi

[[ "${SKIP_BIG:-0}" == 1 ]] || big_object
