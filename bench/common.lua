-- Shared by the bench scripts: thread numbering and a one-line JSON summary
-- (prefixed "BENCH_JSON ") that bench.py parses.
local M = {}

local threads = {}

-- Gives each thread a number `tid` (0, 1, ...), visible in its init().
function M.setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local function json_counts(t)
  local parts = {}
  for k, v in pairs(t) do
    table.insert(parts, string.format('"%s":%d', tostring(k), v))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function M.done(summary, latency, requests)
  -- Status counts kept by scripts that have a response() callback.
  local statuses = {}
  local have_statuses = false
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    if counts then
      have_statuses = true
      for k, v in pairs(counts) do
        statuses[k] = (statuses[k] or 0) + v
      end
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d},' ..
    '"statuses":%s}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9),
    have_statuses and json_counts(statuses) or "null"))
end

return M
