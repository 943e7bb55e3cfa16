-- GET /users/<id> with ids spread uniformly over 1..N (the seeded users).
-- usage: wrk ... -s bench/get.lua URL -- [N]
-- Requests are formatted once in init(): a request() that builds a string per
-- call costs wrk CPU, and wrk shares the cores with what it measures.
local common = require("common")

local requests = {}
local next_index = 1

function setup(thread)
  common.setup(thread)
end

function init(args)
  local n = tonumber(args[1]) or 10000
  math.randomseed(os.time() * 1000 + tid)
  for k = 1, 8192 do
    requests[k] = wrk.format("GET", "/users/" .. math.random(n))
  end
  next_index = math.random(#requests)
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end

done = common.done
