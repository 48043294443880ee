#!/usr/bin/env bash
# dorun vs `wrangler dev` (workerd + Miniflare's queue broker) on Cloudflare Queues, same
# Worker (benches/queues/, served unmodified by both), same machine, same run: throughput of
# send + delivery to a consumer of the same worker, and the delivery latency of single
# messages, each server in turn, then the ratios.
#
#   benches/queues.sh                           # dorun --durability full and normal, then wrangler
#   DURABILITIES=full benches/queues.sh         # dorun at full only
#   SKIP_WRANGLER=1 benches/queues.sh           # dorun only (DURABILITIES= : wrangler only)
#   REPEATS=5 N_SINGLE=10000 SENDERS=8 LAT_N=500 LAT_PAUSE_MS=10 benches/queues.sh
#   DORUN_BIN=/path/to/dorun WRANGLER=/path/to/wrangler benches/queues.sh
#   BUILD=1 benches/queues.sh                   # cargo build --release --bin dorun first
#
# Throughput (messages/s = N / (Date.now() before the first send .. Date.now() in the Tally
# object when the last delivery was counted), both on the server's clock), on queue
# bench-tput (max_batch_size 100, max_batch_timeout 0.1 on both servers):
#   - sendBatch: N_BATCH messages by SENDERS concurrent requests, each awaiting one
#     sendBatch() of 100 after the other;
#   - send: N_SINGLE messages by SENDERS concurrent requests, each awaiting one send() after
#     the other;
# and on bench-small (the consumer defaults of both, batches of 5 or 1 s): N_SMALL messages
# by sendBatch(). The consumer counts each queue() call's messages in a Durable Object
# (one storage put per batch); the client polls it every 10 ms until all N are counted.
# Each is measured REPEATS times (medians and ranges printed). N_BATCH stays under 10,000:
# Miniflare's broker sets one timer per message it is handed, and workerd refuses more than
# 10,000 active timeouts (QuotaExceededError, sendBatch answers 500) when more are queued.
# Latency, on bench-lat (the defaults less the batch timeout: max_batch_timeout = 0): LAT_N
# messages sent one at a time, LAT_PAUSE_MS apart; per message the time from send()
# resolving (and from send() being called) to queue() starting for it, p50/p90/p99/max.
#
# Needs curl, python3; wrangler 4.86.0 (`npm i --prefix /tmp/wr wrangler@4.86.0`, the default
# WRANGLER) unless SKIP_WRANGLER=1. Both servers listen on 127.0.0.1 only, are bounded in time
# (dorun --exit-after, wrangler under `timeout`) and are stopped on exit; each starts on a
# fresh state directory. wrangler runs on a copy of the app in a temporary directory, with
# metrics off and no network needed. Neither logs each request.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
APP="$ROOT/benches/queues"
WRANGLER=${WRANGLER:-/tmp/wr/node_modules/.bin/wrangler}
DURABILITIES=${DURABILITIES-full normal}
N_BATCH=${N_BATCH:-9600}
N_SINGLE=${N_SINGLE:-5000}
N_SMALL=${N_SMALL:-2000}
SENDERS=${SENDERS:-4}
REPEATS=${REPEATS:-3}
LAT_N=${LAT_N:-200}
LAT_PAUSE_MS=${LAT_PAUSE_MS:-20}
if [[ "${SKIP_WRANGLER:-0}" != 1 && ! -x "$WRANGLER" ]]; then
  echo "no wrangler at $WRANGLER (npm i --prefix /tmp/wr wrangler@4.86.0, or SKIP_WRANGLER=1)" >&2
  exit 2
fi

if [[ "${BUILD:-0}" == 1 ]]; then
  cargo build --release --bin dorun --manifest-path "$ROOT/Cargo.toml" >&2 || exit 1
fi
DORUN=${DORUN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/dorun}
[[ -x "$DORUN" ]] || { echo "no dorun at $DORUN (BUILD=1, or DORUN_BIN=...)" >&2; exit 2; }

TMP=$(mktemp -d /tmp/dorun-queues.XXXXXX)
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

# start <label> [durability]: a server on a fresh state directory; sets PID, GROUP and BASE.
start() {
  local state="$TMP/state-$1" port
  rm -rf "$state"
  port=$(free_port)
  BASE="http://127.0.0.1:$port"
  if [[ $1 == dorun* ]]; then
    GROUP=0
    "$DORUN" serve "$APP/wrangler.toml" --port "$port" --ip 127.0.0.1 --data-dir "$state" \
      --durability "$2" --no-request-log --exit-after 900 >"$TMP/$1.out" 2>>"$TMP/$1.log" &
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
  cat "$TMP/$1.out" "$TMP/$1.log" 2>/dev/null | grep -iE 'error|panic|warn|fail' \
    | grep -vE 'Request\.cf|ENOTFOUND|getaddrinfo|GetAddrInfo|callbackTrampoline'
}

# The load client (stdlib Python): tput <label> <metric> <queue> <mode> <n>, or
# latency <label> <metric> <n> <pause ms>. Prints a line, appends "label\tmetric\tvalue" rows.
client() {
  python3 - "$BASE" "$RESULTS" "$@" <<'PY'
import json, sys, threading, time, urllib.request

base, results, kind, label, metric = sys.argv[1:6]
args = sys.argv[6:]
senders = int(__import__("os").environ.get("SENDERS", "4"))
run = f"{label}-{metric}-{time.time_ns()}".replace(" ", "_")

def call(method, path, timeout=600):
    req = urllib.request.Request(base + path, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())

def record(name, value):
    with open(results, "a") as f:
        f.write(f"{label}\t{metric} {name}\t{value}\n")

def wait_for(n, deadline_s):
    """Polls the run's Tally every 10 ms until n messages are counted; its state then."""
    deadline = time.monotonic() + deadline_s
    while True:
        t = call("GET", f"/tally?run={run}")
        if t["count"] >= n or time.monotonic() > deadline:
            return t, time.monotonic()
        time.sleep(0.01)

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(-(-p * len(values) // 100)) - 1))]

if kind == "tput":
    queue, mode, n = args[0], args[1], int(args[2])
    per = n // senders
    answers, errors = [None] * senders, []
    def send(k):
        try:
            answers[k] = call("POST", f"/send?q={queue}&mode={mode}&run={run}&from={k * per}&n={per}")
        except Exception as e:  # noqa: BLE001
            errors.append(f"sender {k}: {e}")
    n = per * senders
    t0 = time.monotonic()
    threads = [threading.Thread(target=send, args=(k,)) for k in range(senders)]
    for t in threads: t.start()
    for t in threads: t.join()
    if errors:
        print(f"   {metric}: {len(errors)} of {senders} senders failed, e.g. {errors[0]}", file=sys.stderr)
        state, _ = wait_for(n, 5)
        print(f"   {metric}: {state['count']} of {n} messages counted", file=sys.stderr)
        record("msg/s", "failed")
        sys.exit(0)
    state, t1 = wait_for(n, 120)
    wall = t1 - t0
    if state["count"] != n:
        print(f"   {metric}: {state['count']} of {n} messages counted after the deadline", file=sys.stderr)
    first = min(a["start"] for a in answers if a)
    sent = max(a["end"] for a in answers if a)
    span = max(state["last"] - first, 1)
    rate = n / span * 1000
    record("msg/s", f"{rate:.0f}")
    record("send msg/s", f"{n / max(sent - first, 1) * 1000:.0f}")
    record("avg batch", f"{state['count'] / max(state['batches'], 1):.1f}")
    print(f"   {metric}: {n} messages, {rate:.0f} msg/s to the last delivery ({span} ms; wall {wall * 1000:.0f} ms); "
          f"sends done after {sent - first} ms ({n / max(sent - first, 1) * 1000:.0f} msg/s); "
          f"first delivery after {state['first'] - first} ms; {state['batches']} batches "
          f"(avg {state['count'] / max(state['batches'], 1):.1f}), {state['count']} counted")
elif kind == "latency":
    n, pause = int(args[0]), int(args[1])
    sent = call("POST", f"/latency?run={run}&n={n}&pause={pause}")
    state, _ = wait_for(n, 60)
    starts = dict(call("GET", f"/starts?run={run}"))
    after = [starts[i] - a for i, b, a in sent if i in starts]
    before = [starts[i] - b for i, b, a in sent if i in starts]
    send_ms = [a - b for i, b, a in sent]
    if len(after) != n:
        print(f"   {metric}: {len(after)} of {n} messages delivered", file=sys.stderr)
    for name, values in (("resolved->queue()", after), ("send()->queue()", before), ("send()", send_ms)):
        for p in (50, 90, 99):
            record(f"{name} p{p} ms", pct(values, p))
        record(f"{name} max ms", max(values))
    print(f"   {metric}: {len(after)} messages, {pause} ms apart, {state['batches']} batches; ms "
          f"from send() resolved to queue(): p50 {pct(after, 50)} p90 {pct(after, 90)} p99 {pct(after, 99)} "
          f"max {max(after)} min {min(after)}; from send() called: p50 {pct(before, 50)} p99 {pct(before, 99)} "
          f"max {max(before)}; send() itself: p50 {pct(send_ms, 50)} p99 {pct(send_ms, 99)} max {max(send_ms)}")
PY
}

suite() {
  local label=$1
  start "$label" "${2:-}"
  echo "== $label at $BASE (load avg $(cut -d' ' -f1-3 /proc/loadavg))"
  # Warm-up (not recorded): each queue, its consumer and a Tally object once.
  client tput "$label" warm-tput tput batch 400 >/dev/null
  client tput "$label" warm-single tput single 40 >/dev/null
  client tput "$label" warm-small small batch 40 >/dev/null
  client latency "$label" warm-lat 5 "$LAT_PAUSE_MS" >/dev/null
  sed -i "/\twarm-/d" "$RESULTS"
  local round
  for round in $(seq 1 "$REPEATS"); do
    client tput "$label" "sendBatch" tput batch "$N_BATCH"
    client tput "$label" "send" tput single "$N_SINGLE"
    client tput "$label" "sendBatch, default consumer" small batch "$N_SMALL"
  done
  client latency "$label" "latency" "$LAT_N" "$LAT_PAUSE_MS"
  echo "   done (load avg $(cut -d' ' -f1-3 /proc/loadavg)); error/warning lines logged: $(log_errors "$label" | wc -l)"
  log_errors "$label" | cut -c1-200 | sort | uniq -c | sort -rn | head -5 | sed 's/^/   /'
  stop
}

echo "dorun $("$DORUN" --version), $SENDERS senders, N: sendBatch $N_BATCH, send $N_SINGLE, default consumer $N_SMALL; latency $LAT_N messages ${LAT_PAUSE_MS} ms apart; $(nproc) cpus, load avg $(cut -d' ' -f1-3 /proc/loadavg)"
export SENDERS
for durability in $DURABILITIES; do
  suite "dorun-$durability" "$durability"
done
if [[ "${SKIP_WRANGLER:-0}" != 1 ]]; then
  echo "wrangler $(WRANGLER_SEND_METRICS=false "$WRANGLER" --version 2>/dev/null | tail -n1)"
  suite wrangler
fi

python3 - "$RESULTS" <<'PY'
import csv, sys
import statistics
rows = list(csv.reader(open(sys.argv[1]), delimiter="\t"))
runs = {}
for label, metric, value in rows:
    runs.setdefault((label, metric), []).append(value)
labels = []
for label, _, _ in rows:
    if label not in labels:
        labels.append(label)
dorun = [l for l in labels if l.startswith("dorun")]
def nums(label, metric):
    try:
        return [float(v) for v in runs[(label, metric)]]
    except (KeyError, ValueError):
        return []
def num(label, metric):  # the median of the rounds
    v = nums(label, metric)
    return statistics.median(v) if v else None
f = lambda v, fmt="%.0f": (fmt % v) if v is not None else "-"
def spread(label, metric):
    v = nums(label, metric)
    return f"{f(statistics.median(v))} ({f(min(v))}-{f(max(v))})" if len(v) > 1 else f(num(label, metric))
print()
print("throughput: msg/s, median of the rounds (lowest-highest); batch: messages per queue() call")
head = f"{'':34}" + "".join(f"{l:>24}" for l in labels)
if "wrangler" in labels:
    head += "".join(f"{l + '/wrangler':>24}" for l in dorun) + "  target (>= 5x)"
print(head)
for metric in ("sendBatch", "send", "sendBatch, default consumer"):
    line = f"{metric:34}"
    for l in labels:
        line += f"{spread(l, metric + ' msg/s'):>24}"
    verdicts = []
    if "wrangler" in labels:
        w = num("wrangler", metric + " msg/s")
        for l in dorun:
            d = num(l, metric + " msg/s")
            r = d / w if d and w else None
            line += f"{f(r, '%.2fx'):>24}"
            if r is not None:
                verdicts.append(f"{l}: " + ("met" if r >= 5 else "NOT met"))
    print(line + "  " + ", ".join(verdicts))
    print(f"{'  batch':34}" + "".join(f"{f(num(l, metric + ' avg batch'), '%.1f'):>24}" for l in labels))
print()
print(f"{'latency, ms':34}" + "".join(f"{l:>24}" for l in labels) + "  target (dorun p50 < 10 ms)")
for name in ("resolved->queue()", "send()->queue()", "send()"):
    for p in ("p50", "p90", "p99", "max"):
        metric = f"latency {name} {p} ms"
        line = f"{name + ' ' + p:34}" + "".join(f"{f(num(l, metric)):>24}" for l in labels)
        if name == "resolved->queue()" and p == "p50":
            line += "  " + ", ".join(f"{l}: " + ("met" if num(l, metric) is not None and num(l, metric) < 10 else "NOT met") for l in dorun)
        print(line)
PY
