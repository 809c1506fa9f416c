-- wrk: POST /api/v1/orders with a fresh Idempotency-Key per request, as one customer, for the
-- accept rate at N connections (the saga behind it is not waited for). Counts answers by status.
--   TOKEN=... PRODUCT=... wrk -t2 -c50 -d10s -s bench/accept.lua http://127.0.0.1:8080
local token = os.getenv("TOKEN")
local body = string.format('{"items":[{"product_id":"%s","quantity":1}],"payment_method":"pm_card_visa"}',
  os.getenv("PRODUCT"))
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function request()
  counter = counter + 1
  return wrk.format("POST", "/api/v1/orders", {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = string.format("wrk-%d-%d-%d", os.time(), id, counter),
  }, body)
end

function response(status)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    for s, n in pairs(t:get("statuses")) do all[s] = (all[s] or 0) + n end
  end
  local secs = summary.duration / 1e6
  for s, n in pairs(all) do
    io.write(string.format("status %d: %d (%.0f/s)\n", s, n, n / secs))
  end
end
