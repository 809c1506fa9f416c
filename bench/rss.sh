#!/usr/bin/env bash
# Memory and CPU of an embedded `mercato up` under load: a fresh data dir, rate limits off,
# `mercato load` open loop, then the process's RSS (VmRSS, RssAnon, RssFile) and CPU per order
# from /proc. Extra arguments are environment settings for `mercato up` (for instance
# MALLOC_ARENA_MAX=1), to compare one against another.
#
#   bench/rss.sh DIR RATE SECONDS [NAME=VALUE...]   (MERCATO_BIN overrides the binary)
set -euo pipefail
dir=${1:?data directory}; rate=${2:?orders per second}; secs=${3:?seconds}; shift 3
bin=${MERCATO_BIN:-target/release/mercato}
rm -rf "$dir"
env "$@" MERCATO_RATE_LIMIT_IP_PER_SEC=0 MERCATO_RATE_LIMIT_USER_PER_SEC=0 \
  "$bin" up --data-dir "$dir" >"$dir.up.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -sf http://127.0.0.1:8080/health/ready >/dev/null && break
  kill -0 $pid || { cat "$dir.up.log"; exit 1; }
  sleep 0.5
done
"$bin" load --data-dir "$dir" --rate "$rate" --duration "${secs}s" --connections 64 \
  --json "$dir.load.json" | grep -E "orders (accepted|paid|final)|backlog"
grep -E "VmRSS|RssAnon|RssFile" /proc/$pid/status | tr -s ' \t\n' ' '; echo
ticks=$(awk '{print $14+$15}' /proc/$pid/stat)
orders=$(( rate * secs ))
echo "CPU: $(( ticks * 10 )) ms for $orders orders, $(awk "BEGIN {printf \"%.2f\", $ticks*10/$orders}") ms per order"
