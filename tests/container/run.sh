#!/usr/bin/env bash
# The container image, built and run for real with podman (.ci/run calls this after the tests).
#
#   bash tests/container/run.sh [path/to/dorun]
#
# Builds config/Dockerfile's final stage around an already built dorun binary
# (`--target prebuilt`; default: target/debug/dorun, which `cargo test` built;
# config/build-image.sh does the whole multi-stage build), then checks what the README
# promises of the image:
#   - it serves examples/counter/js, runs as uid/gid 10001, and its HEALTHCHECK reports healthy
#     (and unhealthy once the server inside is gone);
#   - `podman stop` (SIGTERM) ends it with exit status 0, and a fresh container on the same
#     volume sees the data;
#   - a backup taken through the admin listener restores into a fresh volume;
#   - a root-owned host directory on /data stops it with a message naming the directory and the
#     user, and `:U` makes it work;
#   - config/compose.yaml comes up (podman-compose) with Caddy in front, and a request through
#     the proxy reaches an object with the client's address, not one the client made up.
# Any failure, including podman missing or unable to run here, fails the script.
#
# Podman here: where no registry is reachable, the `debian:bookworm-slim` base is made with
# mmdebstrap from the machine's apt sources and Caddy's image from it plus Debian's caddy. The
# sandbox needs runc (crun refuses its cgroup layout) and lower default ulimits: both go in a
# containers.conf of our own (CONTAINERS_CONF); nothing under /etc is changed. Periodic health
# checks need systemd timers, which the sandbox lacks: the script runs the check itself
# (`podman healthcheck run`), which is what the timer would run.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

binary=${1:-target/debug/dorun}
image=localhost/dorun:ci
project=dorunci
work=$(mktemp -d /tmp/dorun-container.XXXXXX)
say() { printf '== container: %s\n' "$*"; }
fail() {
  printf 'CONTAINER TEST FAILED: %s\n' "$*" >&2
  exit 1
}

containers=()
volumes=()
cleanup() {
  set +e
  if [ -f "$work/compose/config/compose.yaml" ]; then
    (cd "$work/compose/config" && timeout 60 "$compose" -p "$project" down -v >/dev/null 2>&1)
  fi
  for c in "${containers[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1; done
  for v in "${volumes[@]}"; do podman volume rm -f "$v" >/dev/null 2>&1; done
  rm -rf "$work"
}
trap cleanup EXIT

# --- what podman needs -------------------------------------------------------------------
need_packages=()
for tool in podman:podman runc:runc mmdebstrap:mmdebstrap; do
  command -v "${tool%%:*}" >/dev/null || need_packages+=("${tool#*:}")
done
if [ ${#need_packages[@]} -gt 0 ]; then
  say "installing ${need_packages[*]} from Debian's packages"
  [ "$(id -u)" = 0 ] || fail "podman is missing and installing it needs root: apt-get install ${need_packages[*]}"
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "${need_packages[@]}" >"$work/apt.log" 2>&1 \
    || { tail -20 "$work/apt.log" >&2; fail "apt-get install ${need_packages[*]} failed"; }
fi
if [ ! -x "$repo/target/podman-compose/bin/podman-compose" ]; then
  # Debian 12's podman-compose (1.0.3) ignores a network's ipam subnet and a service's fixed
  # address, which compose.yaml's --trust-proxy depends on; PyPI's is current.
  say "installing podman-compose from PyPI into target/podman-compose"
  python3 -m venv "$repo/target/podman-compose"
  timeout 300 "$repo/target/podman-compose/bin/pip" install -q podman-compose \
    || fail "pip install podman-compose failed"
fi
compose="$repo/target/podman-compose/bin/podman-compose"

cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$work/containers.conf"
podman info >/dev/null 2>"$work/info.err" || { cat "$work/info.err" >&2; fail "podman cannot run on this machine"; }
say "$(podman --version), $("$compose" --version 2>/dev/null | head -1)"

# --- base images -------------------------------------------------------------------------
base=docker.io/library/debian:bookworm-slim
if ! podman image exists "$base"; then
  if timeout 120 podman pull -q "$base" >/dev/null 2>"$work/pull.err"; then
    say "pulled $base"
  else
    say "no registry ($(tail -1 "$work/pull.err" | cut -c1-100)); making $base with mmdebstrap"
    timeout 600 mmdebstrap --quiet --variant=minbase \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
      bookworm "$work/base.tar" || fail "mmdebstrap failed"
    podman import -q "$work/base.tar" "$base" >/dev/null || fail "podman import of the base failed"
    rm -f "$work/base.tar"
  fi
fi
caddy=docker.io/library/caddy:2
if ! podman image exists "$caddy" && ! timeout 120 podman pull -q "$caddy" >/dev/null 2>&1; then
  say "making $caddy from $base and Debian's caddy"
  mkdir -p "$work/caddy"
  cat >"$work/caddy/Containerfile" <<EOF
FROM $base
RUN apt-get update && apt-get install -y --no-install-recommends caddy ca-certificates \\
    && rm -rf /var/lib/apt/lists/*
ENV XDG_CONFIG_HOME=/config XDG_DATA_HOME=/data
CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
EOF
  timeout 600 podman build -q -t "$caddy" "$work/caddy" >/dev/null || fail "building the Caddy image failed"
fi
mkdir -p "$work/client"
cat >"$work/client/Containerfile" <<EOF
FROM $base
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates \\
    && rm -rf /var/lib/apt/lists/*
EOF
podman image exists localhost/dorun-ci-client || timeout 600 podman build -q -t localhost/dorun-ci-client "$work/client" >/dev/null \
  || fail "building the client image failed"

# --- the image ---------------------------------------------------------------------------
[ -x "$binary" ] || fail "no dorun binary at $binary (cargo build --bin dorun first)"
mkdir -p "$work/context"
strip -o "$work/context/dorun" "$binary"
timeout 600 podman build -q --format docker --target prebuilt \
  -f config/Dockerfile -t "$image" "$work/context" >/dev/null 2>"$work/build.err" \
  || { cat "$work/build.err" >&2; fail "podman build of config/Dockerfile failed"; }
size=$(podman image inspect --format '{{.Size}}' "$image")
say "image $image: $((size / 1000000)) MB; dorun binary $(($(stat -c %s "$binary") / 1000000)) MB as built, $(($(stat -c %s "$work/context/dorun") / 1000000)) MB stripped"
[ "$(podman image inspect --format '{{json .Config.Healthcheck.Test}}' "$image")" = '["CMD","dorun","healthcheck"]' ] \
  || fail "the image has no HEALTHCHECK (built without --format docker?)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Waits until `curl args...` succeeds (10 s at most).
wait_http() {
  for _ in $(seq 100); do
    if curl -fsS -o /dev/null "$@" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}
run_dorun() { # name volume-spec app-dir port [podman args...] [-- image args...]
  local name=$1 volume=$2 app=$3 port=$4
  shift 4
  containers+=("$name")
  local podman_args=() image_args=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do podman_args+=("$1"); shift; done
  [ $# -gt 0 ] && shift && image_args=("$@")
  podman run -d --name "$name" --health-interval disable -p "127.0.0.1:$port:8787" \
    -v "$volume" -v "$app:/app:ro" "${podman_args[@]}" "$image" "${image_args[@]}" >/dev/null 2>"$work/run.err" \
    || { cat "$work/run.err" >&2; fail "podman run $name failed"; }
}
logs() { podman logs "$1" 2>&1 | tail -20 >&2; }

# --- serve, user, health, stop, data across containers -----------------------------------
volume=dorun-ci-data
volumes+=("$volume" dorun-ci-restored)
podman volume rm -f "$volume" dorun-ci-restored >/dev/null 2>&1 || true
port=$(free_port)
base_url="http://127.0.0.1:$port"
run_dorun dorun-ci-1 "$volume:/data" "$repo/examples/counter/js" "$port"
wait_http "$base_url/demo/value" || { logs dorun-ci-1; fail "the container did not answer on $base_url"; }
for expected in 1 2 3; do
  got=$(curl -fsS -X POST "$base_url/demo/increment")
  [ "$got" = "{\"value\":$expected}" ] || fail "increment $expected answered $got"
done
say "serves examples/counter/js on $base_url"

ids=$(podman exec dorun-ci-1 sh -c 'grep -E "^(Uid|Gid):" /proc/1/status' | awk '{print $1, $2, $3}' | tr '\n' ' ')
[ "$ids" = "Uid: 10001 10001 Gid: 10001 10001 " ] || fail "dorun runs as '$ids', not uid/gid 10001"
owner=$(podman exec dorun-ci-1 stat -c '%u:%g' /data/dorun-migrations.json)
[ "$owner" = "10001:10001" ] || fail "files in /data belong to $owner"
say "runs as uid 10001, gid 10001; its files in /data are 10001:10001"

podman healthcheck run dorun-ci-1 >/dev/null || { logs dorun-ci-1; fail "HEALTHCHECK reports unhealthy"; }
health=$(podman inspect --format '{{.State.Health.Status}}' dorun-ci-1)
[ "$health" = healthy ] || fail "health status is '$health' after a passing check"
say "HEALTHCHECK (dorun healthcheck) reports $health"

started=$(date +%s%N)
podman stop -t 30 dorun-ci-1 >/dev/null
stopped_ms=$((($(date +%s%N) - started) / 1000000))
status=$(podman inspect --format '{{.State.ExitCode}}' dorun-ci-1)
[ "$status" = 0 ] || { logs dorun-ci-1; fail "podman stop: dorun exited with $status"; }
# The log file may lag the exit by a moment.
for _ in $(seq 30); do
  podman logs dorun-ci-1 2>&1 | grep -q "SIGTERM received" && break
  sleep 0.1
done
# Exit 0 well before podman's 30 s (after which it would SIGKILL: 137) is the proof; the
# log line is reported, not required (a CI run once read the log without it).
[ "$stopped_ms" -lt 25000 ] || fail "podman stop took $stopped_ms ms: SIGTERM was not acted on"
podman logs dorun-ci-1 2>&1 | grep -q "SIGTERM received" || {
  logs dorun-ci-1
  say "warning: the container's log does not show 'SIGTERM received' (exit status was 0)"
}
say "podman stop (SIGTERM): exit 0 after $stopped_ms ms"

run_dorun dorun-ci-2 "$volume:/data" "$repo/examples/counter/js" "$port"
wait_http "$base_url/demo/value" || { logs dorun-ci-2; fail "the second container did not answer"; }
got=$(curl -fsS "$base_url/demo/value")
[ "$got" = '{"value":3}' ] || fail "a fresh container on the same volume reads $got, not 3"
say "a fresh container on the same volume reads the data ($got)"

# The health check is not a no-op: with no admin listener inside (a CMD without
# --admin-port) the same image reports unhealthy.
port_noadmin=$(free_port)
run_dorun dorun-ci-6 dorun-ci-noadmin:/data "$repo/examples/counter/js" "$port_noadmin" -- \
  serve /app --ip 0.0.0.0 --port 8787 --data-dir /data --no-dev-endpoints
volumes+=(dorun-ci-noadmin)
wait_http "http://127.0.0.1:$port_noadmin/demo/value" || { logs dorun-ci-6; fail "the container without admin listener did not answer"; }
if timeout 30 podman healthcheck run dorun-ci-6 >/dev/null 2>&1; then
  fail "HEALTHCHECK passed with no admin listener to answer it"
fi
podman rm -f -t 0 dorun-ci-6 >/dev/null
say "HEALTHCHECK reports unhealthy when /healthz does not answer"

# Backup through the admin listener, restored into a fresh volume.
podman exec dorun-ci-2 dorun export --admin http://127.0.0.1:9000 --data-dir /data --out /data/backup-1 >"$work/export.log" 2>&1 \
  || { cat "$work/export.log" >&2; fail "dorun export through the admin listener failed"; }
grep -q "not exported" "$work/export.log" && { cat "$work/export.log" >&2; fail "the export left data out"; }
podman stop -t 30 dorun-ci-2 >/dev/null
port2=$(free_port)
run_dorun dorun-ci-3 dorun-ci-restored:/data "$repo/examples/counter/js" "$port2" -v "$volume:/old:ro"
wait_http "http://127.0.0.1:$port2/demo/value" || { logs dorun-ci-3; fail "the restore container did not answer"; }
[ "$(curl -fsS "http://127.0.0.1:$port2/demo/value")" = '{"value":0}' ] || fail "the fresh volume is not empty"
podman exec dorun-ci-3 dorun import --admin http://127.0.0.1:9000 /old/backup-1 >/dev/null \
  || { logs dorun-ci-3; fail "dorun import through the admin listener failed"; }
got=$(curl -fsS "http://127.0.0.1:$port2/demo/value")
[ "$got" = '{"value":3}' ] || fail "after import the fresh volume reads $got, not 3"
say "export through the admin listener, import into a fresh volume: $got"

# A root-owned host directory on /data: a clear error, then :U fixes it.
hostdir="$work/hostdata"
mkdir -p "$hostdir"
containers+=(dorun-ci-4)
if podman run --name dorun-ci-4 --health-interval disable -v "$hostdir:/data" \
  -v "$repo/examples/counter/js:/app:ro" "$image" >"$work/root-owned.log" 2>&1; then
  fail "dorun started on a root-owned /data"
fi
grep -q "data directory /data is not writable by dorun's user (uid 10001, gid 10001)" "$work/root-owned.log" \
  || { cat "$work/root-owned.log" >&2; fail "the root-owned /data error does not name the directory and user"; }
grep -q ":U" "$work/root-owned.log" || fail "the root-owned /data error does not say what to do"
port3=$(free_port)
run_dorun dorun-ci-5 "$hostdir:/data:U" "$repo/examples/counter/js" "$port3"
wait_http "http://127.0.0.1:$port3/demo/value" || { logs dorun-ci-5; fail "with :U the container did not answer"; }
[ "$(stat -c %u:%g "$hostdir")" = "10001:10001" ] || fail ":U did not give the directory to 10001:10001"
say "a root-owned /data: '$(grep -o "data directory /data is not writable[^:]*" "$work/root-owned.log")'; with :U it serves"

# --- compose: dorun behind Caddy ---------------------------------------------------------
mkdir -p "$work/compose/config"
cp config/compose.yaml config/Caddyfile "$work/compose/config/"
cp -r tests/container/whoami "$work/compose/app"
http_port=$(free_port)
https_port=$(free_port)
podman tag "$image" localhost/dorun:latest
(
  cd "$work/compose/config"
  DORUN_HTTP_PORT="127.0.0.1:$http_port" DORUN_HTTPS_PORT="127.0.0.1:$https_port" \
    timeout 300 "$compose" -p "$project" up -d >"$work/compose.log" 2>&1
) || { cat "$work/compose.log" >&2; fail "podman-compose up failed"; }
proxied=(--resolve "localhost:$https_port:127.0.0.1" -k "https://localhost:$https_port/alice")
wait_http "${proxied[@]}" || { cat "$work/compose.log" >&2; logs "${project}_proxy_1"; logs "${project}_dorun_1"; fail "no answer through the proxy"; }
network=$(podman network ls --format '{{.Name}}' | grep "^${project}_web$") || fail "compose made no ${project}_web network"
client_ip=172.28.0.77
proxy_ip=$(podman inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "${project}_proxy_1")
[ "$proxy_ip" = 172.28.0.10 ] || fail "the proxy is at $proxy_ip, not compose.yaml's 172.28.0.10"
containers+=(dorun-ci-client)
answer=$(podman run --rm --name dorun-ci-client --network "$network" --ip "$client_ip" localhost/dorun-ci-client \
  curl -fsS -k --resolve "localhost:443:$proxy_ip" -H "CF-Connecting-IP: 203.0.113.7" -H "X-Forwarded-For: 203.0.113.9" \
  https://localhost/alice) || fail "the client container's request through the proxy failed"
case "$answer" in
  *"\"client\":\"$client_ip\""*) ;;
  *) fail "through the proxy the object saw '$answer', expected client $client_ip" ;;
esac
# From the host (through the published port) the spoofed header is also replaced.
answer=$(curl -fsS -H "CF-Connecting-IP: 203.0.113.7" "${proxied[@]}")
case "$answer" in *203.0.113.7*) fail "a client chose its own address through the proxy: $answer" ;; esac
say "through Caddy (HTTPS): the object saw client $client_ip; a spoofed CF-Connecting-IP is replaced"
say "all checks passed"
