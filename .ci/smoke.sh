# Sourced by .ci/run and .ci/kafka: a seconds-long smoke of `mercato up` with `mercato load` and
# `mercato audit`. The caller sets `trap stop_smoke EXIT`.
SMOKE_PID=
stop_smoke() {
  if [ -n "$SMOKE_PID" ]; then kill "$SMOKE_PID" 2>/dev/null || true; wait "$SMOKE_PID" 2>/dev/null || true; fi
  SMOKE_PID=
}

# Starts `mercato up` in the background with its data in DIR, every service on a free port the
# kernel picks (port 0; never 8080-8090, which a developer's own shop may hold), extra MERCATO_*
# settings as further arguments; returns once it serves, with SMOKE_PID and SMOKE_GATEWAY set.
start_up() {
  local dir=$1; shift
  env MERCATO_GATEWAY_PORT=0 MERCATO_AUTH_PORT=0 MERCATO_CATALOG_PORT=0 MERCATO_ORDER_PORT=0 \
    MERCATO_PAYMENT_PORT=0 MERCATO_CART_PORT=0 MERCATO_INVENTORY_PORT=0 MERCATO_PSP_MOCK_PORT=0 \
    MERCATO_LOG=warn "$@" \
    target/debug/mercato up --data-dir "$dir" >"$dir/up.log" 2>&1 &
  SMOKE_PID=$!
  for _ in $(seq 1 240); do
    [ -s "$dir/endpoints.json" ] && break
    kill -0 "$SMOKE_PID" 2>/dev/null || { cat "$dir/up.log"; echo "ERROR: mercato up died" >&2; return 1; }
    sleep 0.5
  done
  [ -s "$dir/endpoints.json" ] || { cat "$dir/up.log"; echo "ERROR: mercato up did not start" >&2; return 1; }
  SMOKE_GATEWAY=$(sed -n 's/.*"gateway": "\(http[^"]*\)".*/\1/p' "$dir/endpoints.json")
}

# A seconds-long smoke of the measuring tools against a real `mercato up`: `mercato load --rate`
# through the gateway, then `mercato audit`, which must exit 0. Extra MERCATO_* settings come as
# arguments.
smoke() {
  local dir; dir=$(mktemp -d)
  start_up "$dir" MERCATO_RATE_LIMIT_IP_PER_SEC=0 MERCATO_RATE_LIMIT_USER_PER_SEC=0 "$@"
  # A debug build on a shared machine: a gentle rate, time to drain, and a generous settle
  # window, so the audit judges a shop at rest.
  target/debug/mercato load --target "$SMOKE_GATEWAY" --data-dir "$dir" --rate 20 --duration 5s \
    --users 5 --products 3 --drain 120s --json "$dir/load.json"
  grep -q '"backlog_at_end": 0' "$dir/load.json" || { echo "ERROR: the smoke's orders did not all finish" >&2; return 1; }
  grep -q '"accepted": [1-9]' "$dir/load.json" || { echo "ERROR: the smoke load placed no order" >&2; return 1; }
  target/debug/mercato audit --data-dir "$dir" --settle 30
  stop_smoke
  rm -rf "$dir"
}
