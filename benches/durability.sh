#!/usr/bin/env bash
# Durable-commit latency next to another writer: the bench app's spread-write load
# (POST /kv/o{N}/incr over 1,000 warm objects, wrk -t1 -c16) for each --durability mode,
# alternately quiet and while another process writes several GB to the same filesystem
# (dd, no sync of its own). Prints req/s and p99 per mode and condition, the best and worst
# of ROUNDS rounds, and full's figures as a share of normal's under the same condition.
#
#   benches/durability.sh                    # 3 rounds, wrk -d5s, 6,000 MB written by dd
#   ROUNDS=2 DURATION=10s WRITE_MB=8000 benches/durability.sh
#   MODES="full normal" benches/durability.sh
#   MODES="full replicated async" CONDITIONS=quiet benches/durability.sh   # replication (issue 26)
#   REPLICATE_TO=s3://bucket/prefix MODES=replicated benches/durability.sh  # AWS_* env for S3
#   DORUN_BIN=/path/to/dorun BENCH_CLIENT=/path/to/dorun-bench benches/durability.sh
#
# The data directory and dd's file are on the filesystem of $DATA_ROOT (default: this
# checkout's target/). Needs wrk, curl, python3.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$ROOT/../shared/bench}
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
WRITE_MB=${WRITE_MB:-6000}
MODES=${MODES:-full normal off}
CONDITIONS=${CONDITIONS:-quiet dd}
[ -f "$BENCH_DIR/app/wrangler.toml" ] || { echo "no bench app at $BENCH_DIR" >&2; exit 2; }

if [[ -z "${DORUN_BIN:-}" || -z "${BENCH_CLIENT:-}" ]]; then
  cargo build --release -p dorun -p dorun-bench --manifest-path "$ROOT/Cargo.toml" >&2 || exit 1
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
DORUN=${DORUN_BIN:-$TARGET/release/dorun}
CLIENT=${BENCH_CLIENT:-$TARGET/release/dorun-bench}
DATA_ROOT=${DATA_ROOT:-$TARGET}
mkdir -p "$DATA_ROOT"

TMP=$(mktemp -d "$DATA_ROOT/dorun-durability.XXXXXX")
RESULTS="$TMP/results.tsv"
PID="" DD=""
stop() {
  [[ -n "$DD" ]] && { kill "$DD" 2>/dev/null; wait "$DD" 2>/dev/null; DD=""; }
  if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
    kill "$PID" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$PID" 2>/dev/null
    wait "$PID" 2>/dev/null
  fi
  PID=""
}
trap 'stop; rm -rf "$TMP"' EXIT

# start <mode>: a server on a fresh data directory with the 1,000 objects created.
start() {
  rm -rf "$TMP/data" "$TMP/store"
  local replicate=()
  if [[ "$1" == replicated || "$1" == async ]]; then
    # Replication modes: to REPLICATE_TO, else a directory store on the same filesystem.
    replicate=(--replicate-to "${REPLICATE_TO:-file://$TMP/store}")
  fi
  "$DORUN" serve "$BENCH_DIR/app/wrangler.toml" --port 0 --ip 127.0.0.1 --data-dir "$TMP/data" \
    --durability "$1" "${replicate[@]}" --exit-after 1800 >"$TMP/server.out" 2>>"$TMP/server.log" &
  PID=$!
  BASE=""
  for _ in $(seq 1 3000); do
    [[ -z "$BASE" ]] && BASE=$(sed -n 's/^dorun: listening on //p' "$TMP/server.out")
    if [[ -n "$BASE" ]] && [[ "$(curl -s --max-time 2 "$BASE/hello")" == ok ]]; then
      "$CLIENT" touch "$BASE" '/kv/o{}/incr' 1001 16 >/dev/null || exit 1
      return 0
    fi
    sleep 0.01
  done
  echo "dorun did not start:" >&2; cat "$TMP/server.log" >&2; exit 1
}

field() { sed -nE "s/.*[ ]$1=([0-9.]+).*/\\1/p" | head -1; }

# measure <mode> <condition>
measure() {
  local out
  out=$(WRK_METHOD=POST WRK_TEMPLATE='/kv/o{}/incr' WRK_OBJECTS=1000 wrk -t1 -c16 -d"$DURATION" \
    -s "$ROOT/benches/scale.lua" "$BASE" 2>&1 | grep '^RESULT')
  local errors; errors=$(echo " $out" | field errors)
  [[ "${errors:-0}" == 0 ]] || echo "  $1 $2: $errors errors" >&2
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$(echo " $out" | field rps)" "$(echo " $out" | field p99_ms)" >>"$RESULTS"
  echo "  $1 $2: $(echo " $out" | field rps) req/s, p99 $(echo " $out" | field p99_ms) ms" >&2
}

# writer: dd writes WRITE_MB to the same filesystem; waits until it has dirtied some.
writer() {
  dd if=/dev/zero of="$TMP/other-writer" bs=1M count="$WRITE_MB" status=none &
  DD=$!
  sleep 1
}

echo "dorun $("$DORUN" --version), wrk -t1 -c16 -d$DURATION, $ROUNDS rounds, other writer: dd of $WRITE_MB MB"
echo "filesystem: $(df -hT "$TMP" | awk 'NR == 2 {print $1, $2, $3 " total"}'), $(nproc) cpus"
for round in $(seq 1 "$ROUNDS"); do
  for mode in $MODES; do
    start "$mode"
    [[ " $CONDITIONS " == *" quiet "* ]] && measure "$mode" quiet
    if [[ " $CONDITIONS " == *" dd "* ]]; then
      writer
      measure "$mode" "while dd writes"
      kill "$DD" 2>/dev/null; wait "$DD" 2>/dev/null; DD=""
      rm -f "$TMP/other-writer"
      sync
    fi
    stop
  done
done

python3 - "$RESULTS" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter="\t"))
by = {}
for mode, cond, rps, p99 in rows:
    try:
        by.setdefault((mode, cond), []).append((float(rps), float(p99)))
    except ValueError:
        pass
conds = ["quiet", "while dd writes"]
print()
print(f"{'mode':8} {'condition':16} {'req/s (min-max)':>20} {'p99 ms (min-max)':>20}")
for (mode, cond), vals in sorted(by.items(), key=lambda kv: (kv[0][0], conds.index(kv[0][1]))):
    r = [v[0] for v in vals]; p = [v[1] for v in vals]
    print(f"{mode:8} {cond:16} {min(r):>9,.0f}-{max(r):<9,.0f} {min(p):>9.2f}-{max(p):<9.2f}")
for cond in conds:
    for a, b in [("full", "normal"), ("replicated", "full"), ("async", "full")]:
        f, n = by.get((a, cond)), by.get((b, cond))
        if f and n:
            fr = sum(v[0] for v in f) / len(f); nr = sum(v[0] for v in n) / len(n)
            fp = sorted(v[1] for v in f)[len(f) // 2]; np_ = sorted(v[1] for v in n)[len(n) // 2]
            print(f"{a} / {b}, {cond}: throughput {fr / nr:.0%}, p99 {fp / np_:.2f}x (mean req/s, median p99)")
PY
