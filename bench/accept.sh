#!/usr/bin/env bash
# The accept rate of a running shop at N connections: `POST /api/v1/orders` through the
# gateway, a fresh Idempotency-Key per request (bench/accept.lua), as the demo customer, for
# the cheapest product, whose stock is first set high enough that no order is refused for it.
# The saga runs behind it and is not waited for; run `mercato audit` afterwards.
#
#   bench/accept.sh [CONNECTIONS] [SECONDS] [URL]      (defaults 50, 10, http://127.0.0.1:8080)
set -euo pipefail
conns=${1:-50}; secs=${2:-10}; url=${3:-http://127.0.0.1:8080}
login() {
  curl -sf "$url/api/v1/auth/login" -H 'content-type: application/json' \
    -d "{\"email\":\"$1\",\"password\":\"$2\"}" | jq -r .access_token
}
admin=$(login "${MERCATO_ADMIN_EMAIL:-admin@mercato.local}" "${MERCATO_ADMIN_PASSWORD:-Admin-demo-2026}")
export TOKEN=$(login customer@mercato.local Customer-demo-2026)
export PRODUCT=$(curl -sf "$url/api/v1/products?limit=1&sort=price_asc" | jq -r '.items[0].id')
curl -sf -X PUT "$url/api/v1/inventory/$PRODUCT" -H "authorization: Bearer $admin" \
  -H 'content-type: application/json' -d '{"on_hand": 10000000, "note": "bench/accept.sh"}' >/dev/null
wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$(dirname "$0")/accept.lua" "$url"
