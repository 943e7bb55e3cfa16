-- GET /users/<id> with ids spread uniformly over 1..N (the seeded users);
-- with "legacy", the original sample's GET /get_user?userid=<id> instead
-- (the call both this API and the Flask peer serve).
-- usage: wrk ... -s bench/get.lua URL -- [N [legacy]]
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
  local path = args[2] == "legacy" and "/get_user?userid=" or "/users/"
  math.randomseed(os.time() * 1000 + tid)
  for k = 1, 8192 do
    requests[k] = wrk.format("GET", path .. math.random(n))
  end
  next_index = math.random(#requests)
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end

done = common.done
