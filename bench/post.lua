-- POST /users with ids that never collide: thread t sends base + t,
-- base + t + STRIDE, base + t + 2*STRIDE, ... (STRIDE = 16 >= wrk threads).
-- Every 201's userid (read from the response body, so it is exactly the
-- acknowledged one) is appended to <dir>/acked.<tid>; bench.py then checks
-- each of them in the database. With "legacy", the original sample's
-- POST /create_user?userid=&username= instead; its 201 body carries no id,
-- so bench.py checks that as many rows as 201s (the summary's status
-- counts) are stored in the run's id range, each with its name.
-- usage: wrk ... -s bench/post.lua URL -- BASE DIR [legacy]
local common = require("common")

local STRIDE = 16
local base, counter, acked, legacy
statuses = {}

function setup(thread)
  common.setup(thread)
end

function init(args)
  assert(tid < STRIDE, "at most 16 wrk threads")
  base = tonumber(args[1])
  counter = 0
  legacy = args[3] == "legacy"
  acked = assert(io.open(args[2] .. "/acked." .. tid, "w"))
  acked:setvbuf("full")
end

local headers = { ["Content-Type"] = "application/json" }

function request()
  local id = base + tid + STRIDE * counter
  counter = counter + 1
  if legacy then
    return wrk.format("POST", "/create_user?userid=" .. id .. "&username=u" .. id)
  end
  return wrk.format("POST", "/users", headers,
    '{"userid":' .. id .. ',"username":"u' .. id .. '"}')
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 201 and not legacy then
    acked:write(body:match('"userid":(%d+)'), "\n")
    -- wrk never closes thread states: flush often enough that nothing is
    -- left in the buffer (the process exit flushes the rest anyway).
    if statuses[201] % 256 == 0 then acked:flush() end
  end
end

done = common.done
