-- 90/10 mix: of every 10 requests a connection-thread sends, 9 are
-- GET /users/<random seeded id> and 1 is a POST /users with a never-colliding
-- id (same scheme as post.lua). 201s are recorded for the per-id check.
-- usage: wrk ... -s bench/mix.lua URL -- BASE DIR [N]
local common = require("common")

local STRIDE = 16
local base, counter, sent, acked, n
local gets = {}
local next_get = 1
statuses = {}

function setup(thread)
  common.setup(thread)
end

function init(args)
  assert(tid < STRIDE, "at most 16 wrk threads")
  base = tonumber(args[1])
  n = tonumber(args[3]) or 10000
  counter, sent = 0, 0
  acked = assert(io.open(args[2] .. "/acked." .. tid, "w"))
  acked:setvbuf("full")
  math.randomseed(os.time() * 1000 + tid)
  for k = 1, 8192 do
    gets[k] = wrk.format("GET", "/users/" .. math.random(n))
  end
  next_get = math.random(#gets)
end

local headers = { ["Content-Type"] = "application/json" }

function request()
  sent = sent + 1
  if sent % 10 == 0 then
    local id = base + tid + STRIDE * counter
    counter = counter + 1
    return wrk.format("POST", "/users", headers,
      '{"userid":' .. id .. ',"username":"u' .. id .. '"}')
  end
  next_get = next_get % #gets + 1
  return gets[next_get]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 201 then
    acked:write(body:match('"userid":(%d+)'), "\n")
    if statuses[201] % 256 == 0 then acked:flush() end
  end
end

done = common.done
