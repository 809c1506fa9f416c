#!/usr/bin/env bash
# Starts Mercato distributed on this machine for a benchmark: N replicas of every service (each
# its own `mercato serve` process) on PostgreSQL + NATS JetStream + Redis, one gateway in front,
# one psp-mock. Prints the gateway's URL and writes DIR/endpoints.json for `mercato load` and
# `mercato audit`; Ctrl-C (or `kill` of this script) stops every process.
#
#   bench/cluster.sh N DIR   (MERCATO_BIN, PG, NATS, REDIS override the defaults)
set -euo pipefail
n=${1:?replicas per service}
dir=${2:?data directory}
bin=${MERCATO_BIN:-target/release/mercato}
pg=${PG:-postgres://postgres@127.0.0.1:5432}
nats=${NATS:-nats://127.0.0.1:4222}
redis=${REDIS:-redis://127.0.0.1:6379}
id=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
db=mercato_bench_$id
mkdir -p "$dir"
psql "$pg/postgres" -qc "CREATE DATABASE $db"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
services=(auth catalog inventory order cart payment)
declare -A urls
for s in "${services[@]}"; do
  list=()
  for r in $(seq 1 "$n"); do list+=("http://127.0.0.1:$(port)"); done
  urls[$s]=$(IFS=,; echo "${list[*]}")
done
gw="http://127.0.0.1:$(port)"
psp="http://127.0.0.1:$(port)"

common=(
  MERCATO_DATABASE_URL="$pg/$db" MERCATO_NATS_URL="$nats" MERCATO_NATS_PREFIX="b$id"
  MERCATO_REDIS_URL="$redis" MERCATO_REDIS_PREFIX="b$id:"
  MERCATO_SERVICE_SECRET="bench-$id" MERCATO_PSP_WEBHOOK_SECRET="bench-webhook-$id"
  MERCATO_AUTH_KEY_FILE="$dir/auth-key.pem" MERCATO_SEED_DEMO=true
  MERCATO_RATE_LIMIT_IP_PER_SEC=0 MERCATO_RATE_LIMIT_USER_PER_SEC=0 MERCATO_GATEWAY_OPS_PORT=0
  MERCATO_AUTH_URL="$gw" MERCATO_INVENTORY_URL="$gw" MERCATO_CATALOG_URL="$gw" MERCATO_ORDER_URL="$gw"
  MERCATO_PSP_URL="$psp" MERCATO_PSP_WEBHOOK_URL="$gw/api/v1/payments/webhook" MERCATO_LOG=warn
)
for s in "${services[@]}"; do common+=("MERCATO_${s^^}_URLS=${urls[$s]}"); done

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true
  psql "$pg/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  "$(dirname "$0")/../.ci/nats-drop-streams" "b$id" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "b$id:*" | xargs -r redis-cli del >/dev/null || true; }
trap stop EXIT INT TERM

start() { # service, replica, url
  local s=$1 r=$2 p=${3##*:} v
  v="MERCATO_$(echo "$s" | tr a-z- A-Z_)_PORT"
  mkdir -p "$dir/$s-$r"
  env "${common[@]}" MERCATO_DATA_DIR="$dir/$s-$r" "$v=$p" "$bin" serve "$s" >"$dir/$s-$r.log" 2>&1 &
  pids+=($!)
}
ready() { for _ in $(seq 1 240); do curl -fs "$1/health/ready" >/dev/null && return 0; sleep 0.25; done; echo "not ready: $1" >&2; return 1; }

start psp-mock 1 "$psp"
IFS=, read -ra a <<<"${urls[auth]}"; start auth 1 "${a[0]}"; ready "${a[0]}"
for s in "${services[@]}"; do
  IFS=, read -ra list <<<"${urls[$s]}"
  for i in "${!list[@]}"; do [ "$s" = auth ] && [ "$i" = 0 ] && continue; start "$s" $((i + 1)) "${list[$i]}"; done
done
start gateway 1 "$gw"
for s in "${services[@]}"; do IFS=, read -ra list <<<"${urls[$s]}"; for u in "${list[@]}"; do ready "$u"; done; done
ready "$psp"; ready "$gw"
{
  printf '{\n  "gateway": "%s"' "$gw"
  for s in "${services[@]}"; do IFS=, read -ra list <<<"${urls[$s]}"; printf ',\n  "%s": "%s"' "$s" "${list[0]}"; done
  printf '\n}\n'
} >"$dir/endpoints.json"
echo "Mercato is up: $n replica(s) of every service, gateway $gw (pids ${pids[*]})"
wait
